import { describe, expect, it, vi } from "vitest";
import { ApiClient, ApiError, asApiError } from "../src/api/client";
import { apiError, fakeServer, json, user } from "./fake";

describe("ApiClient errors", () => {
  it("turns the server's error body into an ApiError naming the field", async () => {
    const s = fakeServer({ "POST /api/generate/image": () => apiError(422, "invalid-input", "steps: must be from 1 to 150") });
    const api = new ApiClient({ fetch: s.fetch });
    const e = await api.generate({ prompt: "x", steps: 500 }).catch((x) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect(e.status).toBe(422);
    expect(e.code).toBe("invalid-input");
    expect(e.field).toBe("steps");
    expect(e.detail).toBe("must be from 1 to 150");
    expect(e.message).toBe("steps: must be from 1 to 150");
  });

  it("keeps messages that name no field whole", async () => {
    const s = fakeServer({ "POST /api/generate/image": () => apiError(402, "insufficient-credits", "this needs 4 credits and 0 are left; they are topped up daily") });
    const e = await new ApiClient({ fetch: s.fetch }).generate({ prompt: "x" }).catch((x) => x);
    expect(e.code).toBe("insufficient-credits");
    expect(e.field).toBeNull();
    expect(e.detail).toBe(e.message);
  });

  it("reads Retry-After on 429", async () => {
    const s = fakeServer({
      "POST /api/auth/login": () => new Response(JSON.stringify({ error: { code: "rate-limited", message: "too many failed sign-ins; try again in 60 s" } }), { status: 429, headers: { "retry-after": "60" } }),
    });
    const e = await new ApiClient({ fetch: s.fetch }).login("a@b.c", "x").catch((x) => x);
    expect(e.code).toBe("rate-limited");
    expect(e.retryAfter).toBe(60);
  });

  it("explains a body that is not the API's (a proxy page)", async () => {
    const s = fakeServer({ "GET /api/models": () => new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }) });
    const e = await new ApiClient({ fetch: s.fetch }).models().catch((x) => x);
    expect(e.status).toBe(502);
    expect(e.code).toBe("http-502");
    expect(e.message).toContain("502");
  });

  it("says when the server cannot be reached", async () => {
    const api = new ApiClient({
      fetch: async () => {
        throw new TypeError("Failed to fetch");
      },
    });
    const e = await api.models().catch((x) => x);
    expect(e.code).toBe("network");
    expect(e.status).toBe(0);
    expect(e.message).toMatch(/cannot reach/);
  });

  it("rejects a 200 that is not JSON", async () => {
    const s = fakeServer({ "GET /api/models": () => new Response("oops", { status: 200 }) });
    const e = await new ApiClient({ fetch: s.fetch }).models().catch((x) => x);
    expect(e.code).toBe("bad-response");
  });

  it("asApiError wraps anything thrown", () => {
    expect(asApiError(new Error("boom")).message).toBe("boom");
    expect(asApiError("text").code).toBe("client");
    const e = new ApiError(404, "not-found", "no such thing");
    expect(asApiError(e)).toBe(e);
  });
});

describe("ApiClient requests", () => {
  it("sends JSON, query strings without empty values, and the idempotency key", async () => {
    const s = fakeServer({
      "POST /api/generate/image": () => json(202, { id: "g1", status: "pending", estimated_time: 5, queue_position: 0 }),
      "GET /api/generate/images": () => ({ items: [], next_cursor: null }),
    });
    const api = new ApiClient({ fetch: s.fetch });
    await api.generate({ prompt: "a fox" }, "key-1");
    expect(s.calls[0].headers["content-type"]).toBe("application/json");
    expect(s.calls[0].headers["idempotency-key"]).toBe("key-1");
    expect(s.calls[0].body).toEqual({ prompt: "a fox" });
    await api.generations({ cursor: null, limit: 30, model: "", q: "red fox" });
    const q = s.calls[1].query;
    expect(q.get("limit")).toBe("30");
    expect(q.get("q")).toBe("red fox");
    expect(q.has("cursor")).toBe(false);
    expect(q.has("model")).toBe(false);
  });

  it("returns undefined for 204", async () => {
    const s = fakeServer({ "DELETE /api/generate/image/g1": () => new Response(null, { status: 204 }) });
    await expect(new ApiClient({ fetch: s.fetch }).remove("g1")).resolves.toBeUndefined();
  });

  it("uploads the file's bytes with its type", async () => {
    const s = fakeServer({ "POST /api/assets": () => json(201, { id: "a1", mime: "image/png", width: 1, height: 1, bytes: 3, url: "/api/assets/a1" }) });
    const blob = new Blob([new Uint8Array([1, 2, 3])], { type: "image/png" });
    const a = await new ApiClient({ fetch: s.fetch }).upload(blob);
    expect(a.id).toBe("a1");
    expect(s.calls[0].headers["content-type"]).toBe("image/png");
    expect(s.calls[0].body).toBe(blob);
  });
});

describe("ApiClient sessions", () => {
  it("refreshes once on 401 and retries the request", async () => {
    let fresh = false;
    const s = fakeServer({
      "GET /api/user/usage": () => (fresh ? { credits_remaining: 3 } : apiError(401, "unauthorized", "the token is invalid or expired")),
      "GET /api/auth/me": () => (fresh ? user : apiError(401, "unauthorized", "expired")),
      "POST /api/auth/refresh": () => {
        fresh = true;
        return json(200, { user });
      },
    });
    const onSignedOut = vi.fn();
    const api = new ApiClient({ fetch: s.fetch, onSignedOut });
    const u = await api.usage();
    expect(u.credits_remaining).toBe(3);
    expect(s.count("POST", "/api/auth/refresh")).toBe(1);
    expect(s.count("GET", "/api/user/usage")).toBe(2);
    expect(onSignedOut).not.toHaveBeenCalled();
  });

  it("refreshes once for many requests that fail together", async () => {
    let fresh = false;
    const s = fakeServer({
      "GET /api/generate/image/:id": () => (fresh ? { id: "g" } : apiError(401, "unauthorized", "expired")),
      "GET /api/auth/me": () => (fresh ? user : apiError(401, "unauthorized", "expired")),
      "POST /api/auth/refresh": async () => {
        await new Promise((r) => setTimeout(r, 10));
        fresh = true;
        return json(200, { user });
      },
    });
    const api = new ApiClient({ fetch: s.fetch });
    await Promise.all(["a", "b", "c", "d"].map((id) => api.generation(id)));
    expect(s.count("POST", "/api/auth/refresh")).toBe(1);
  });

  it("does not spend the refresh token when another tab already renewed the session", async () => {
    // The other tab renewed while this one waited for the lock: /me answers.
    const s = fakeServer({
      "GET /api/user/usage": (() => {
        let n = 0;
        return () => (n++ === 0 ? apiError(401, "unauthorized", "expired") : { credits_remaining: 1 });
      })(),
      "GET /api/auth/me": () => user,
      "POST /api/auth/refresh": () => apiError(401, "unauthorized", "already used"),
    });
    const names: string[] = [];
    const api = new ApiClient({
      fetch: s.fetch,
      lock: async (name, fn) => {
        names.push(name);
        return fn();
      },
    });
    await api.usage();
    expect(names).toEqual(["krya-refresh"]);
    expect(s.count("POST", "/api/auth/refresh")).toBe(0);
  });

  it("reports sign-out when the refresh is refused, and still throws the 401", async () => {
    const s = fakeServer({
      "GET /api/user/usage": () => apiError(401, "unauthorized", "the token is invalid or expired"),
      "GET /api/auth/me": () => apiError(401, "unauthorized", "expired"),
      "POST /api/auth/refresh": () => apiError(401, "unauthorized", "the refresh token is invalid, expired or already used"),
    });
    const onSignedOut = vi.fn();
    const e = await new ApiClient({ fetch: s.fetch, onSignedOut }).usage().catch((x) => x);
    expect(e.status).toBe(401);
    expect(onSignedOut).toHaveBeenCalledTimes(1);
  });

  it("does not refresh for the auth endpoints themselves (a wrong password is not an expired session)", async () => {
    const s = fakeServer({ "POST /api/auth/login": () => apiError(401, "unauthorized", "wrong email or password") });
    const onSignedOut = vi.fn();
    const e = await new ApiClient({ fetch: s.fetch, onSignedOut }).login("a@b.c", "nope").catch((x) => x);
    expect(e.message).toBe("wrong email or password");
    expect(s.count("POST", "/api/auth/refresh")).toBe(0);
    expect(onSignedOut).not.toHaveBeenCalled();
  });
});

describe("ApiClient sessions after review", () => {
  it("an expired access token on /api/auth/me is refreshed (a reload after 15 minutes)", async () => {
    let fresh = false;
    const s = fakeServer({
      "GET /api/auth/me": () => (fresh ? user : apiError(401, "unauthorized", "expired")),
      "POST /api/auth/refresh": () => {
        fresh = true;
        return json(200, { user });
      },
    });
    const onSignedOut = vi.fn();
    const me = await new ApiClient({ fetch: s.fetch, onSignedOut }).me();
    expect(me.handle).toBe("ada");
    expect(onSignedOut).not.toHaveBeenCalled();
  });

  it("a server that cannot answer the refresh does not sign anyone out", async () => {
    const s = fakeServer({
      "GET /api/user/usage": () => apiError(401, "unauthorized", "expired"),
      "GET /api/auth/me": () => apiError(401, "unauthorized", "expired"),
      "POST /api/auth/refresh": () => apiError(503, "internal", "restarting"),
    });
    const onSignedOut = vi.fn();
    const api = new ApiClient({ fetch: s.fetch, onSignedOut });
    expect(await api.refresh()).toBe("unreachable");
    const e = await api.usage().catch((x) => x);
    expect(e.status).toBe(401);
    expect(onSignedOut).not.toHaveBeenCalled();
  });

  it("a refused refresh still retries once: another tab may have renewed the cookies", async () => {
    let renewedElsewhere = false;
    const s = fakeServer({
      "GET /api/user/usage": () => (renewedElsewhere ? { credits_remaining: 5 } : apiError(401, "unauthorized", "expired")),
      "GET /api/auth/me": () => apiError(401, "unauthorized", "expired"),
      "POST /api/auth/refresh": () => {
        renewedElsewhere = true;
        return apiError(401, "unauthorized", "already used");
      },
    });
    const onSignedOut = vi.fn();
    const u = await new ApiClient({ fetch: s.fetch, onSignedOut }).usage();
    expect(u.credits_remaining).toBe(5);
    expect(onSignedOut).not.toHaveBeenCalled();
  });
});
