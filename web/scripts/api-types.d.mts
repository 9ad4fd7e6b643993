// Types of scripts/api-types.mjs, for the test that checks the generated file.
export const DOCUMENT: string;
export const OUTPUT: string;
export function generate(doc: unknown): string;
