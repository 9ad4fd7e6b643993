import { decode, encode } from "@msgpack/msgpack";
import { describe, expect, it, vi } from "vitest";
import { RealtimeClient, type RealtimeInput, type SocketLike } from "../src/features/realtime/client";
import { floodMask, hexToRgba, paintMask, rgbToHex } from "../src/features/realtime/floodfill";
import { createCanvasStore, hasContent, newId, placed, type Shape } from "../src/features/realtime/canvas";

describe("flood fill", () => {
  // 4x3: a vertical wall of black in column 2.
  const w = 4,
    h = 3;
  const data = new Uint8ClampedArray(w * h * 4).fill(255);
  for (let y = 0; y < h; y++) data.set([0, 0, 0, 255], (y * w + 2) * 4);
  const img = { width: w, height: h, data };

  it("fills the region up to different colours, 4-connected", () => {
    const m = floodMask(img, 0, 0);
    expect(Array.from(m)).toEqual([1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]);
    expect(Array.from(floodMask(img, 3, 1))).toEqual([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]);
    expect(Array.from(floodMask(img, 2, 2))).toEqual([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]);
    expect(floodMask(img, -1, 0).every((v) => v === 0)).toBe(true);
  });

  it("tolerance lets near colours join", () => {
    const d = new Uint8ClampedArray([255, 255, 255, 255, 240, 240, 240, 255]);
    expect(Array.from(floodMask({ width: 2, height: 1, data: d }, 0, 0, 10))).toEqual([1, 0]);
    expect(Array.from(floodMask({ width: 2, height: 1, data: d }, 0, 0, 20))).toEqual([1, 1]);
  });

  it("paints masks and converts colours", () => {
    const out = paintMask(new Uint8Array([1, 0]), 2, 1, [1, 2, 3, 4]);
    expect(Array.from(out)).toEqual([1, 2, 3, 4, 0, 0, 0, 0]);
    expect(hexToRgba("#ff8000", 0.5)).toEqual([255, 128, 0, 128]);
    expect(rgbToHex(255, 128, 0)).toBe("#ff8000");
  });
});

describe("canvas store", () => {
  const rect = (): Shape => ({ ...placed(), id: newId("s"), kind: "rect", width: 10, height: 10, color: "#000000" });

  it("adds shapes to the active layer, undoes and redoes them", () => {
    const c = createCanvasStore();
    const s = c.getState();
    expect(hasContent(s.layers)).toBe(false);
    const r0 = s.revision;
    s.addShape(rect());
    expect(c.getState().layers[0].shapes).toHaveLength(1);
    expect(hasContent(c.getState().layers)).toBe(true);
    expect(c.getState().revision).toBe(r0 + 1);
    c.getState().undo();
    expect(c.getState().layers[0].shapes).toHaveLength(0);
    c.getState().redo();
    expect(c.getState().layers[0].shapes).toHaveLength(1);
    // A new change drops what could be redone.
    c.getState().undo();
    c.getState().addShape(rect());
    c.getState().redo();
    expect(c.getState().layers[0].shapes).toHaveLength(1);
    expect(c.getState().future).toHaveLength(0);
  });

  it("layers: add, reorder, hide, blend, remove; the active layer follows", () => {
    const c = createCanvasStore();
    const base = c.getState().layers[0].id;
    const top = c.getState().addLayer("paint", "Top");
    expect(c.getState().activeId).toBe(top);
    c.getState().addShape(rect());
    expect(c.getState().layers[1].shapes).toHaveLength(1);
    c.getState().moveLayer(top, 0);
    expect(c.getState().layers.map((l) => l.name)).toEqual(["Top", "Layer 1"]);
    c.getState().updateLayer(top, { visible: false, blend: "multiply", opacity: 0.5 });
    expect(c.getState().layers[0]).toMatchObject({ visible: false, blend: "multiply", opacity: 0.5 });
    expect(hasContent(c.getState().layers)).toBe(false);
    c.getState().removeLayer(top);
    expect(c.getState().activeId).toBe(base);
    c.getState().removeLayer(base);
    expect(c.getState().layers).toHaveLength(1);
    c.getState().undo();
    expect(c.getState().layers.map((l) => l.id)).toEqual([base]);
  });

  it("moves and removes shapes, clears only the active layer, and keeps 100 steps", () => {
    const c = createCanvasStore();
    const r = rect();
    c.getState().addShape(r);
    c.getState().updateShape(r.id, { x: 5, rotation: 30 });
    expect(c.getState().layers[0].shapes[0]).toMatchObject({ x: 5, rotation: 30 });
    c.getState().select(r.id);
    c.getState().removeShape(r.id);
    expect(c.getState().selectedId).toBeNull();
    c.getState().addShape(rect());
    const other = c.getState().addLayer();
    c.getState().addShape(rect(), other);
    c.getState().setActive(c.getState().layers[0].id);
    c.getState().clear();
    expect(c.getState().layers.map((l) => l.shapes.length)).toEqual([0, 1]);
    for (let i = 0; i < 150; i++) c.getState().addShape(rect());
    expect(c.getState().past).toHaveLength(100);
  });

  it("live layers count as content and touch() resends without history", () => {
    const c = createCanvasStore();
    c.getState().addLayer("webcam", "Camera");
    expect(hasContent(c.getState().layers)).toBe(true);
    const { past, revision } = c.getState();
    c.getState().touch();
    expect(c.getState().past).toBe(past);
    expect(c.getState().revision).toBe(revision + 1);
  });
});

class FakeSocket implements SocketLike {
  binaryType = "blob";
  readyState = 0;
  onopen: ((e: unknown) => void) | null = null;
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onerror: ((e: unknown) => void) | null = null;
  sent: Record<string, unknown>[] = [];
  send(data: Uint8Array) {
    this.sent.push(decode(data) as Record<string, unknown>);
  }
  close() {
    this.readyState = 3;
  }
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(m: unknown) {
    const bytes = encode(m);
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }
  drop(code: number) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
}

const flush = () => new Promise((r) => setTimeout(r, 0));

function setup(timeout = 10_000) {
  const sockets: FakeSocket[] = [];
  const frames: number[] = [];
  const prompts: (string | null)[] = [];
  const states: [string, string | undefined][] = [];
  const errors: string[] = [];
  const client = new RealtimeClient({
    url: "ws://x/ws/realtime",
    open: () => {
      const s = new FakeSocket();
      sockets.push(s);
      return s;
    },
    onFrame: (f) => {
      frames.push(f.inputFrameId ?? -1);
      prompts.push(f.params?.prompt ?? null);
    },
    onState: (s, r) => states.push([s, r]),
    onError: (e) => errors.push(e.code),
    answerTimeoutMs: timeout,
    retryMs: () => 0,
  });
  return { client, sockets, frames, prompts, states, errors };
}

const input = (k: number, prompt = "a fox"): (() => Promise<RealtimeInput>) => async () => ({
  canvas: new Uint8Array([k, 1, 2]),
  params: { prompt, strength: 0.5, seed: 1 },
});

describe("realtime client", () => {
  it("keeps one input in flight and sends only the newest waiting one", async () => {
    const { client, sockets, frames, prompts } = setup();
    client.connect();
    sockets[0].open();
    client.offer(input(1, "the first"));
    await flush();
    expect(sockets[0].sent).toHaveLength(1);
    const first = sockets[0].sent[0] as { type: string; data: { frame_id: number; canvas_data: Uint8Array; prompt: string } };
    expect(first.type).toBe("generate");
    expect(first.data.prompt).toBe("the first");
    expect(Array.from(first.data.canvas_data)).toEqual([1, 1, 2]);
    // Drawing on while the server renders: only the last of these goes next.
    for (let k = 2; k <= 9; k++) client.offer(input(k));
    await flush();
    expect(sockets[0].sent).toHaveLength(1);
    expect(client.stats.replaced).toBe(7);
    sockets[0].receive({ type: "frame", data: new Uint8Array([255, 216]), frame_id: 1, input_frame_id: first.data.frame_id, latency_ms: 20, mime: "image/jpeg" });
    await flush();
    expect(frames).toEqual([first.data.frame_id]);
    // A frame knows what made it (saving it keeps those parameters).
    expect(prompts).toEqual(["the first"]);
    expect(sockets[0].sent).toHaveLength(2);
    expect(Array.from((sockets[0].sent[1] as { data: { canvas_data: Uint8Array } }).data.canvas_data)).toEqual([9, 1, 2]);
  });

  it("does not send the same input twice; text only sends an empty canvas", async () => {
    const { client, sockets } = setup();
    client.connect();
    sockets[0].open();
    client.offer(input(1));
    await flush();
    sockets[0].receive({ type: "frame", data: new Uint8Array(), frame_id: 1, input_frame_id: 1, latency_ms: 1 });
    client.offer(input(1));
    await flush();
    expect(sockets[0].sent).toHaveLength(1);
    client.offer(async () => ({ canvas: null, params: { prompt: "text", strength: 0.5, seed: 1 } }));
    await flush();
    const d = (sockets[0].sent[1] as { data: { canvas_data: Uint8Array } }).data;
    expect(d.canvas_data.length).toBe(0);
    // Another LoRA weight is another input, sent with its LoRAs.
    sockets[0].receive({ type: "frame", data: new Uint8Array(), frame_id: 2, input_frame_id: 2, latency_ms: 1 });
    const withLora = (w: number) => async () => ({ canvas: null, params: { prompt: "text", strength: 0.5, seed: 1, loras: [{ id: "ink", weight: w }] } });
    client.offer(withLora(0.5));
    await flush();
    sockets[0].receive({ type: "frame", data: new Uint8Array(), frame_id: 3, input_frame_id: 3, latency_ms: 1 });
    client.offer(withLora(0.5));
    await flush();
    expect(sockets[0].sent).toHaveLength(3);
    expect((sockets[0].sent[2] as { data: { loras: unknown } }).data.loras).toEqual([{ id: "ink", weight: 0.5 }]);
    client.offer(withLora(0.7));
    await flush();
    expect(sockets[0].sent).toHaveLength(4);
  });

  it("an error or a timeout answers the input in flight", async () => {
    const { client, sockets, errors } = setup(30);
    client.connect();
    sockets[0].open();
    client.offer(input(1));
    await flush();
    client.offer(input(2));
    sockets[0].receive({ type: "error", data: { code: "invalid-input", message: "strength: ..." } });
    await flush();
    expect(errors).toEqual(["invalid-input"]);
    expect(sockets[0].sent).toHaveLength(2);
    client.offer(input(3));
    await new Promise((r) => setTimeout(r, 60));
    expect(sockets[0].sent).toHaveLength(3);
  });

  it("reconnects and resends after a drop, but not after 4401 or 4429", async () => {
    const { client, sockets, states } = setup();
    client.connect();
    sockets[0].open();
    client.offer(input(1));
    await flush();
    sockets[0].drop(1006);
    await new Promise((r) => setTimeout(r, 5));
    expect(sockets).toHaveLength(2);
    sockets[1].open();
    await flush();
    expect(sockets[1].sent).toHaveLength(1);
    sockets[1].drop(4401);
    await new Promise((r) => setTimeout(r, 5));
    expect(sockets).toHaveLength(2);
    expect(states.at(-1)).toEqual(["closed", "unauthorized"]);
    client.connect();
    sockets[2].open();
    sockets[2].drop(4429);
    expect(states.at(-1)).toEqual(["closed", "too-many-sessions"]);
  });

  it("reports a canvas that cannot be read", async () => {
    const { client, sockets, errors } = setup();
    client.connect();
    sockets[0].open();
    const spy = vi.fn(async () => {
      throw new Error("tainted canvas");
    });
    client.offer(spy);
    await flush();
    expect(errors).toEqual(["client"]);
    expect(sockets[0].sent).toHaveLength(0);
  });
});
