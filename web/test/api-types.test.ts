import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { DOCUMENT, OUTPUT, generate } from "../scripts/api-types.mjs";

describe("the studio's API types", () => {
  it("are the ones generated from the server's OpenAPI document (npm run api-types)", () => {
    const doc = JSON.parse(readFileSync(DOCUMENT, "utf8"));
    expect(readFileSync(OUTPUT, "utf8")).toBe(generate(doc));
  });

  it("cover the shapes the studio reads", () => {
    const text = readFileSync(OUTPUT, "utf8");
    for (const name of ["GenerationView", "Model", "JobView", "AssetView", "FeedItem", "Usage", "Session"]) {
      expect(text).toMatch(new RegExp(`export (interface|type) ${name} `));
    }
  });
});
