// A fake server for unit tests: routes "METHOD /path" to handlers and records calls.

import type { Fetch } from "../src/api/client";

export interface Call {
  method: string;
  path: string;
  query: URLSearchParams;
  headers: Record<string, string>;
  body: unknown;
}

type Handler = (c: Call) => Response | Promise<Response> | unknown;

export function json(status: number, body?: unknown, headers: Record<string, string> = {}): Response {
  return new Response(body === undefined ? null : JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

export function apiError(status: number, code: string, message: string): Response {
  return json(status, { error: { code, message } });
}

export function fakeServer(routes: Record<string, Handler>) {
  const calls: Call[] = [];
  const fetch: Fetch = async (input, init) => {
    const u = new URL(input, "http://studio.test");
    const headers = (init?.headers ?? {}) as Record<string, string>;
    let body: unknown = init?.body;
    if (typeof body === "string" && headers["content-type"] === "application/json") body = JSON.parse(body);
    const call: Call = { method: init?.method ?? "GET", path: u.pathname, query: u.searchParams, headers, body };
    calls.push(call);
    const exact = routes[`${call.method} ${call.path}`] as Handler | undefined;
    const pattern = exact
      ? undefined
      : Object.entries(routes).find(([k]) => {
          const [m, p] = k.split(" ");
          return m === call.method && new RegExp(`^${p.replace(/:[a-z]+/g, "[^/]+")}$`).test(call.path);
        })?.[1];
    const h = exact ?? pattern;
    if (!h) return apiError(404, "not-found", `no endpoint at ${call.path}`);
    const r = await h(call);
    return r instanceof Response ? r : json(200, r);
  };
  return { fetch, calls, count: (method: string, path: string) => calls.filter((c) => c.method === method && c.path === path).length };
}

export const user = {
  id: "u1",
  email: "a@example.com",
  name: "Ada",
  handle: "ada",
  is_admin: false,
  credits_remaining: 50,
  subscription_tier: "free",
  created_at: 1,
};

export const tinyModel = {
  id: "tiny",
  name: "tiny",
  source: "/m",
  family: null,
  resolution: 16,
  default_steps: 1,
  default_cfg: 0,
  fast: true,
  local: true,
  installed: true,
  aspect_ratios: [
    { ratio: "1:1", width: 16, height: 16 },
    { ratio: "16:9", width: 24, height: 16 },
  ],
};

export function generation(id: string, patch: Record<string, unknown> = {}) {
  return {
    id,
    status: "pending",
    prompt: "a fox",
    negative_prompt: null,
    model: "tiny",
    width: 16,
    height: 16,
    steps: 4,
    cfg_scale: 0,
    scheduler: null,
    style: null,
    aspect_ratio: "1:1",
    strength: null,
    init_image: null,
    clip_skip: 0,
    seed: 7,
    batch_size: 1,
    is_public: false,
    likes_count: 0,
    remix_of: null,
    progress: { step: 0, total: 4 },
    images: [],
    credits_used: 1,
    error: null,
    queue_position: 0,
    estimated_time: 5,
    created_at: 100,
    completed_at: null,
    ...patch,
  };
}
