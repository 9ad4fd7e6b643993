import { describe, expect, it, vi } from "vitest";
import { ApiClient } from "../src/api/client";
import { createEventsStore, type EventSourceLike } from "../src/stores/events";
import type { Model } from "../src/api/types";
import { buildRequest, createGenerateStore, emptyForm, loraFits, mergeJob, type Job } from "../src/stores/generate";
import { createPager } from "../src/stores/pager";
import { createSessionStore } from "../src/stores/session";
import { createToastStore } from "../src/stores/toasts";
import { apiError, fakeServer, generation, json, tinyModel, user } from "./fake";

describe("session store", () => {
  it("loads the signed-in user, or settles on signed-out for a guest, without a 401", async () => {
    const ok = createSessionStore(new ApiClient({ fetch: fakeServer({ "GET /api/auth/session": () => json(200, { user, refreshable: false }) }).fetch }));
    await ok.getState().load();
    expect(ok.getState().status).toBe("signed-in");
    expect(ok.getState().user?.handle).toBe("ada");

    const guest = fakeServer({ "GET /api/auth/session": () => json(200, { user: null, refreshable: false }) });
    const out = createSessionStore(new ApiClient({ fetch: guest.fetch }));
    await out.getState().load();
    expect(out.getState().status).toBe("signed-out");
    expect(guest.calls.map((c) => c.path)).toEqual(["/api/auth/session"]);
  });

  it("renews an expired access token from the refresh cookie while loading", async () => {
    let fresh = false;
    const srv = fakeServer({
      "GET /api/auth/session": () => json(200, { user: null, refreshable: true }),
      "GET /api/auth/me": () => (fresh ? user : apiError(401, "unauthorized", "expired")),
      "POST /api/auth/refresh": () => {
        fresh = true;
        return json(200, { user });
      },
    });
    const s = createSessionStore(new ApiClient({ fetch: srv.fetch }));
    await s.getState().load();
    expect(s.getState().status).toBe("signed-in");
  });

  it("reports a server that fails while checking (not a silent sign-out)", async () => {
    const s = createSessionStore(new ApiClient({ fetch: fakeServer({ "GET /api/auth/session": () => apiError(500, "internal", "boom") }).fetch }));
    await expect(s.getState().load()).rejects.toThrow("boom");
    expect(s.getState().status).toBe("signed-out");
  });

  it("logs in, registers, and logs out even when the server call fails", async () => {
    const srv = fakeServer({
      "POST /api/auth/login": (c) =>
        (c.body as { password: string }).password === "right password" ? json(200, { user }) : apiError(401, "unauthorized", "wrong email or password"),
      "POST /api/auth/register": () => apiError(422, "invalid-input", "password: must be at least 8 characters"),
      "POST /api/auth/logout": () => apiError(500, "internal", "db down"),
    });
    const s = createSessionStore(new ApiClient({ fetch: srv.fetch }));
    await expect(s.getState().login("a@example.com", "nope")).rejects.toThrow("wrong email or password");
    expect(s.getState().user).toBeNull();
    await s.getState().login("a@example.com", "right password");
    expect(s.getState().status).toBe("signed-in");
    const e = await s
      .getState()
      .register("b@example.com", "short", "B")
      .catch((x) => x);
    expect(e.field).toBe("password");
    await expect(s.getState().logout()).rejects.toThrow("db down");
    expect(s.getState().status).toBe("signed-out");
  });
});

describe("toast store", () => {
  it("shows each error once and keeps the last five", () => {
    const t = createToastStore();
    t.getState().error(new Error("a"));
    t.getState().error(new Error("a"));
    expect(t.getState().toasts).toHaveLength(1);
    for (let i = 0; i < 10; i++) t.getState().push("info", `n${i}`);
    expect(t.getState().toasts).toHaveLength(5);
    t.getState().dismiss(t.getState().toasts[0].id);
    expect(t.getState().toasts).toHaveLength(4);
  });
});

describe("pager store", () => {
  it("pages until the cursor runs out, skipping repeats; errors are kept", async () => {
    const pages: Record<string, { items: { id: string }[]; next_cursor: string | null }> = {
      "": { items: [{ id: "a" }, { id: "b" }], next_cursor: "c1" },
      c1: { items: [{ id: "b" }, { id: "c" }], next_cursor: null },
    };
    let fail = false;
    const p = createPager(async (cursor) => {
      if (fail) throw new Error("offline");
      return pages[cursor ?? ""];
    });
    await p.getState().loadMore();
    expect(p.getState().items.map((i) => i.id)).toEqual(["a", "b"]);
    await p.getState().loadMore();
    expect(p.getState().items.map((i) => i.id)).toEqual(["a", "b", "c"]);
    expect(p.getState().done).toBe(true);
    await p.getState().loadMore(); // nothing more to ask for
    p.getState().remove(["b"]);
    expect(p.getState().items.map((i) => i.id)).toEqual(["a", "c"]);
    fail = true;
    await p.getState().reset();
    expect(p.getState().error?.message).toBe("offline");
    expect(p.getState().loaded).toBe(true);
  });

  it("drops an answer to a reset that was overtaken", async () => {
    let release: (v: unknown) => void = () => {};
    const slow = new Promise((r) => (release = r));
    const p = createPager(async (cursor) => {
      await slow;
      return { items: [{ id: `old-${cursor}` }], next_cursor: null };
    });
    const first = p.getState().loadMore();
    const second = p.getState().reset(async () => ({ items: [{ id: "new" }], next_cursor: null }));
    release(null);
    await Promise.all([first, second]);
    expect(p.getState().items.map((i) => i.id)).toEqual(["new"]);
  });
});

describe("generate store", () => {
  function setup(extra: Record<string, (c: never) => unknown> = {}) {
    const srv = fakeServer({
      "GET /api/models": () => ({ models: [{ ...tinyModel, id: "other", installed: false, aspect_ratios: [] }, tinyModel] }),
      "GET /api/styles": () => ({ styles: [{ id: "none", name: "No style", prompt: "{prompt}", negative: "" }] }),
      "POST /api/generate/image": () => json(202, { id: "g1", status: "pending", estimated_time: 5, queue_position: 2 }),
      "GET /api/generate/image/g1": () => generation("g1", { queue_position: 2 }),
      ...extra,
    });
    const credits = vi.fn();
    const changed = vi.fn();
    const store = createGenerateStore(new ApiClient({ fetch: srv.fetch }), { onCreditsChanged: credits, onChanged: changed });
    return { srv, store, credits, changed };
  }

  it("picks the first installed model and takes its defaults", async () => {
    const { store } = setup();
    await store.getState().loadOptions();
    const f = store.getState().form;
    expect(f.model).toBe("tiny");
    expect(f.steps).toBe("1");
    expect(f.cfg).toBe("0");
    expect(f.aspect).toBe("1:1");
  });

  it("builds the request the form describes", () => {
    expect(buildRequest({ ...emptyForm, prompt: "  a fox  ", model: "tiny", aspect: "16:9", steps: "8", cfg: "2.5", seed: "", batch: 2, style: "none" })).toEqual({
      prompt: "a fox",
      model: "tiny",
      aspect_ratio: "16:9",
      steps: 8,
      cfg_scale: 2.5,
      seed: -1,
      batch_size: 2,
    });
    const init = { id: "a1", kind: "image", mime: "image/png", width: 32, height: 32, bytes: 1, url: "/api/assets/a1", visibility: "private", created_at: 1 };
    const r = buildRequest({ ...emptyForm, prompt: "x", init, aspect: "image", strength: 0.4, seed: "42", style: "photo", negative: "blur", scheduler: "ddim" });
    expect(r).toMatchObject({ init_image: "a1", strength: 0.4, seed: 42, style: "photo", negative_prompt: "blur", scheduler: "ddim" });
    expect(r.aspect_ratio).toBeUndefined();
    expect(() => buildRequest({ ...emptyForm, prompt: " " })).toThrow(/prompt/);
    expect(() => buildRequest({ ...emptyForm, prompt: "x", steps: "2.5" })).toThrow(/steps: must be a whole number/);
    // LoRAs go in order with their weights; none: no field.
    expect(buildRequest({ ...emptyForm, prompt: "x", loras: [{ id: "ink", weight: 0.6 }, { id: "soft", weight: -0.2 }] }).loras).toEqual([
      { id: "ink", weight: 0.6 },
      { id: "soft", weight: -0.2 },
    ]);
    expect(buildRequest({ ...emptyForm, prompt: "x" }).loras).toBeUndefined();
  });

  it("adds a LoRA once, weighs and removes it; fits by family", () => {
    const { store } = setup();
    const g = store.getState();
    g.addLora("ink");
    g.addLora("ink");
    g.addLora("soft");
    g.setLoraWeight("soft", -0.5);
    expect(store.getState().form.loras).toEqual([
      { id: "ink", weight: 1 },
      { id: "soft", weight: -0.5 },
    ]);
    g.removeLora("ink");
    expect(store.getState().form.loras).toEqual([{ id: "soft", weight: -0.5 }]);
    const m = (family: string | null) => ({ family }) as Model;
    expect(loraFits(m("sdxl"), m("sdxl"))).toBe(true);
    expect(loraFits(m("sdxl"), m("sd1"))).toBe(false);
    expect(loraFits(m(null), m("sd1"))).toBe(true);
    expect(loraFits(m("sd1"), m(null))).toBe(true);
  });

  it("submits, follows events to completion, and reports credits and the finished job", async () => {
    const { store, srv, credits, changed } = setup();
    await store.getState().loadOptions();
    store.getState().set({ prompt: "a fox", steps: "4" });
    const id = await store.getState().submit();
    expect(id).toBe("g1");
    const sent = srv.calls.find((c) => c.method === "POST")!;
    expect(sent.body).toMatchObject({ prompt: "a fox", model: "tiny", steps: 4, seed: -1, aspect_ratio: "1:1" });
    expect(sent.headers["idempotency-key"]).toBeTruthy();
    expect(store.getState().selected).toBe("g1");
    expect(store.getState().jobs.g1.queue_position).toBe(2);
    expect(credits).toHaveBeenCalledTimes(1);

    const s = store.getState();
    s.applyEvent("started", { id: "g1", status: "processing" });
    s.applyEvent("progress", { id: "g1", status: "processing", progress: { step: 2, total: 4 }, preview: "data:image/jpeg;base64,AA" });
    // A late, older event does not move progress back.
    s.applyEvent("progress", { id: "g1", status: "processing", progress: { step: 1, total: 4 }, preview: "data:old" });
    let j = store.getState().jobs.g1;
    expect(j.status).toBe("processing");
    expect(j.progress.step).toBe(2);
    expect(j.queue_position).toBe(0);
    s.applyEvent("completed", { id: "g1", status: "completed", images: [{ id: "i1", url: "/api/images/i1", thumbnail_url: "/t", width: 16, height: 16, seed: 7 }] });
    j = store.getState().jobs.g1;
    expect(j.status).toBe("completed");
    expect(j.images[0].id).toBe("i1");
    expect(j.preview).toBeNull();
    expect(changed).toHaveBeenCalledWith("g1", "ended");
    // Someone else's events (or another page's jobs) are ignored.
    s.applyEvent("progress", { id: "zzz", progress: { step: 1, total: 2 } });
    expect(store.getState().jobs.zzz).toBeUndefined();
  });

  it("keeps a refused submission's error, by field or whole, and clears it when the field is edited", async () => {
    let answer = apiError(402, "insufficient-credits", "this needs 4 credits and 0 are left; they are topped up daily");
    const { store } = setup({ "POST /api/generate/image": () => answer });
    await store.getState().loadOptions();
    store.getState().set({ prompt: "a fox", batch: 4 });
    expect(await store.getState().submit()).toBeNull();
    expect(store.getState().error?.code).toBe("insufficient-credits");
    expect(store.getState().submitting).toBe(false);

    answer = apiError(422, "invalid-input", "steps: must be from 1 to 150");
    store.getState().set({ steps: "500" });
    await store.getState().submit();
    expect(store.getState().error?.field).toBe("steps");
    store.getState().set({ prompt: "a red fox" });
    expect(store.getState().error?.field).toBe("steps");
    store.getState().set({ steps: "20" });
    expect(store.getState().error).toBeNull();
  });

  it("a failed job asks for the refunded credits; resync catches up after a reconnect", async () => {
    let state = generation("g1", { status: "processing" });
    const { store, credits } = setup({ "GET /api/generate/image/g1": () => state });
    await store.getState().loadOptions();
    store.getState().set({ prompt: "a fox" });
    await store.getState().submit();
    credits.mockClear();
    state = generation("g1", { status: "failed", error: { code: "internal", message: "out of memory" } });
    await store.getState().resync();
    expect(store.getState().jobs.g1.status).toBe("failed");
    expect(store.getState().jobs.g1.error?.message).toBe("out of memory");
    store.getState().applyEvent("failed", { id: "g1", status: "failed" });
    expect(credits).toHaveBeenCalled();
  });

  it("remixes through the feed endpoint and reuses parameters", async () => {
    const { store, srv } = setup({
      "POST /api/feed/src1/remix": () => json(202, { id: "g1", status: "pending", estimated_time: 1, queue_position: 0 }),
    });
    await store.getState().loadOptions();
    // A feed item: the image job's request in its params.
    const source = { id: "src1", kind: "image", prompt: "a castle", params: { prompt: "a castle", model: "tiny", seed: 99, steps: 6, cfg_scale: 1.5, width: 24, height: 16 }, outputs: [] };
    store.getState().prefillRemix(source as never);
    const f = store.getState().form;
    expect(f).toMatchObject({ prompt: "a castle", seed: "99", steps: "6", cfg: "1.5", aspect: "16:9", remixOf: "src1" });
    await store.getState().submit();
    const call = srv.calls.find((c) => c.path === "/api/feed/src1/remix")!;
    expect(call.body).toMatchObject({ prompt: "a castle", seed: 99, steps: 6 });
    store.getState().reuse(generation("g9", { prompt: "again" }) as never);
    expect(store.getState().form.remixOf).toBeNull();
    expect(store.getState().form.prompt).toBe("again");
  });

  it("deleting a job forgets it and selects the next", async () => {
    const { store, changed } = setup({ "DELETE /api/generate/image/:id": () => new Response(null, { status: 204 }) });
    store.getState().open(generation("a", { status: "completed" }) as never);
    store.getState().open(generation("b", { status: "completed" }) as never);
    expect(store.getState().selected).toBe("b");
    await store.getState().remove("b");
    expect(store.getState().selected).toBe("a");
    expect(store.getState().jobs.b).toBeUndefined();
    expect(changed).toHaveBeenCalledWith("b", "deleted");
  });

  it("mergeJob never moves a finished job back", () => {
    const done = mergeJob(undefined, generation("x", { status: "completed" }) as Partial<Job>);
    expect(mergeJob(done, { status: "processing" }).status).toBe("completed");
    // A read issued before the end, answered after its event: the event's images stay.
    const ended = mergeJob(undefined, { ...generation("y", { status: "completed" }), images: [{ id: "i" }] } as unknown as Partial<Job>);
    const stale = mergeJob(ended, { status: "processing", images: [] });
    expect(stale.images.length).toBe(1);
    expect(stale.status).toBe("completed");
  });
});

describe("events store", () => {
  class FakeSource implements EventSourceLike {
    readyState = 0;
    onopen: ((e: Event) => void) | null = null;
    onerror: ((e: Event) => void) | null = null;
    listeners: Record<string, ((e: MessageEvent) => void)[]> = {};
    closed = false;
    addEventListener(type: string, l: (e: MessageEvent) => void) {
      (this.listeners[type] ??= []).push(l);
    }
    emit(type: string, data: unknown) {
      for (const l of this.listeners[type] ?? []) l({ data: typeof data === "string" ? data : JSON.stringify(data) } as MessageEvent);
    }
    fail(permanently: boolean) {
      this.readyState = permanently ? 2 : 0;
      this.onerror?.(new Event("error"));
    }
    close() {
      this.closed = true;
      this.readyState = 2;
    }
  }

  it("delivers events, survives bad data, and renews a refused stream", async () => {
    const sources: FakeSource[] = [];
    const got: [string, unknown][] = [];
    const ready = vi.fn();
    let signedIn = true;
    const s = createEventsStore({
      open: () => {
        const f = new FakeSource();
        sources.push(f);
        return f;
      },
      onEvent: (k, d) => got.push([k, d]),
      onReady: ready,
      refresh: async () => signedIn,
      sleep: async () => {},
    });
    s.getState().connect();
    s.getState().connect(); // one stream only
    expect(sources).toHaveLength(1);
    sources[0].emit("ready", {});
    expect(s.getState().status).toBe("open");
    expect(ready).toHaveBeenCalledTimes(1);
    sources[0].emit("progress", { id: "g1", progress: { step: 1, total: 2 } });
    sources[0].emit("progress", "{not json");
    expect(got).toEqual([["progress", { id: "g1", progress: { step: 1, total: 2 } }]]);

    // A network blip: the browser retries by itself.
    sources[0].fail(false);
    expect(sources).toHaveLength(1);
    expect(s.getState().status).toBe("connecting");

    // Refused (the session expired): refresh, then a new stream.
    sources[0].fail(true);
    await vi.waitFor(() => expect(sources).toHaveLength(2));
    sources[1].emit("ready", {});
    expect(ready).toHaveBeenCalledTimes(2);

    // Signed out for good: no new stream.
    signedIn = false;
    sources[1].fail(true);
    await new Promise((r) => setTimeout(r, 5));
    expect(sources).toHaveLength(2);
    expect(s.getState().status).toBe("closed");

    s.getState().disconnect();
    expect(s.getState().status).toBe("idle");
  });
});

describe("review fixes", () => {
  it("pager.refresh merges the first page without losing what is loaded", async () => {
    let first = [{ id: "b", v: 1 }, { id: "a", v: 1 }];
    const p = createPager<{ id: string; v: number }>(async (cursor) =>
      cursor ? { items: [{ id: "z", v: 1 }], next_cursor: null } : { items: first, next_cursor: "c" },
    );
    await p.getState().loadMore();
    await p.getState().loadMore();
    expect(p.getState().items.map((i) => i.id)).toEqual(["b", "a", "z"]);
    first = [{ id: "c", v: 1 }, { id: "b", v: 2 }];
    await p.getState().refresh();
    expect(p.getState().items.map((i) => `${i.id}${i.v}`)).toEqual(["c1", "b2", "a1", "z1"]);
    expect(p.getState().loaded).toBe(true);
  });

  it("forget and reset clear what another page or user left", async () => {
    const srv = fakeServer({
      "GET /api/models": () => ({ models: [tinyModel] }),
      "GET /api/styles": () => ({ styles: [] }),
    });
    const g = createGenerateStore(new ApiClient({ fetch: srv.fetch }));
    await g.getState().loadOptions();
    g.getState().open(generation("a", { status: "completed" }) as never);
    g.getState().open(generation("b", { status: "completed" }) as never);
    g.getState().forget(["b"]);
    expect(Object.keys(g.getState().jobs)).toEqual(["a"]);
    expect(g.getState().selected).toBe("a");
    g.getState().set({ prompt: "private thoughts" });
    g.getState().reset();
    expect(g.getState().jobs).toEqual({});
    expect(g.getState().form.prompt).toBe("");
    expect(g.getState().form.model).toBe("tiny");
  });
});
