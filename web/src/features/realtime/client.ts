// The live canvas connection (docs/realtime.md): MessagePack over a WebSocket. Input is
// sent at the pace the server renders: one input in flight; newer input waits in a single
// slot (replacing older waiting input) until the frame for the one in flight arrives. So
// a fast hand never builds a backlog, and identical input is not sent twice.

import { decode, encode } from "@msgpack/msgpack";

export interface RealtimeParams {
  prompt: string;
  strength: number;
  seed: number;
  model?: string;
  width?: number;
  height?: number;
  steps?: number;
  /** LoRAs, each with its weight (`<lora:ID:WEIGHT>` in the prompt adds more). */
  loras?: { id: string; weight: number }[];
}

export interface RealtimeInput {
  /** The canvas (PNG/JPEG/WebP bytes), or null for text only. */
  canvas: Uint8Array | null;
  params: RealtimeParams;
}

export interface Frame {
  image: Blob;
  /** The parameters of the input this frame renders, when known. */
  params: RealtimeParams | null;
  frameId: number;
  inputFrameId: number | null;
  /** Server-side: input arrival to frame sent. */
  latencyMs: number;
  /** Client-side: input sent to frame received. */
  roundTripMs: number | null;
}

export interface ServerStatus {
  status: "ready" | "generating" | "error";
  fps: number;
  latency_ms: number | null;
  saturated: boolean;
  detail?: string;
}

export type ConnectionState = "connecting" | "open" | "closed";

/** The part of WebSocket this uses (tests pass a fake). */
export interface SocketLike {
  binaryType: string;
  readyState: number;
  onopen: ((e: unknown) => void) | null;
  onmessage: ((e: { data: unknown }) => void) | null;
  onclose: ((e: { code: number; reason: string }) => void) | null;
  onerror: ((e: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export interface ClientOptions {
  url: string;
  open?: (url: string) => SocketLike;
  onFrame(f: Frame): void;
  onStatus?(s: ServerStatus): void;
  onError?(e: { code: string; message: string }): void;
  /** `reason` is "unauthorized" (4401), "too-many-sessions" (4429) or the server's words. */
  onState?(state: ConnectionState, reason?: string): void;
  /** How long an input may go unanswered before the next one is sent anyway. */
  answerTimeoutMs?: number;
  /** Reconnect delays (tests shorten them). */
  retryMs?: (attempt: number) => number;
}

const OPEN = 1;

function sameBytes(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameParams(a: RealtimeParams, b: RealtimeParams): boolean {
  return (
    a.prompt === b.prompt &&
    a.strength === b.strength &&
    a.seed === b.seed &&
    a.model === b.model &&
    a.width === b.width &&
    a.height === b.height &&
    a.steps === b.steps &&
    JSON.stringify(a.loras ?? []) === JSON.stringify(b.loras ?? [])
  );
}

export class RealtimeClient {
  private ws: SocketLike | null = null;
  private readonly o: ClientOptions;
  private nextId = 1;
  private inFlight: { id: number; at: number } | null = null;
  /** Parameters of recently sent inputs, by frame id. */
  private sentParams = new Map<number, RealtimeParams>();
  private waiting: (() => Promise<RealtimeInput>) | null = null;
  private last: RealtimeInput | null = null;
  private lastProducer: (() => Promise<RealtimeInput>) | null = null;
  private sending = false;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private wanted = false;
  private attempts = 0;
  /** Inputs offered, sent, and replaced before they could be sent. */
  readonly stats = { offered: 0, sent: 0, replaced: 0, frames: 0 };

  constructor(o: ClientOptions) {
    this.o = o;
  }

  connect() {
    this.wanted = true;
    if (this.ws) return;
    const open = this.o.open ?? ((u: string) => new WebSocket(u) as unknown as SocketLike);
    const ws = open(this.o.url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.o.onState?.("connecting");
    ws.onopen = () => {
      this.attempts = 0;
      this.o.onState?.("open");
      // A new connection is a new session on the server: send everything again.
      this.last = null;
      this.inFlight = null;
      if (!this.waiting && this.lastProducer) this.waiting = this.lastProducer;
      void this.pump();
    };
    ws.onmessage = (e) => this.receive(e.data);
    ws.onerror = () => {};
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.inFlight = null;
      const reason = e.code === 4401 ? "unauthorized" : e.code === 4429 ? "too-many-sessions" : e.reason || `closed (${e.code})`;
      this.o.onState?.("closed", reason);
      // Refused for a reason a retry cannot fix: the page decides (sign in again, close a tab).
      if (this.wanted && e.code !== 4401 && e.code !== 4429) {
        const delay = (this.o.retryMs ?? ((n) => Math.min(8000, 500 * 2 ** n)))(this.attempts++);
        setTimeout(() => {
          if (this.wanted && !this.ws) this.connect();
        }, delay);
      }
    };
  }

  close() {
    this.wanted = false;
    this.clearTimer();
    this.ws?.close(1000, "bye");
    this.ws = null;
  }

  get isOpen(): boolean {
    return this.ws?.readyState === OPEN;
  }

  /** New input is available; `produce` makes it (it runs only when it is sent). */
  offer(produce: () => Promise<RealtimeInput>) {
    this.stats.offered++;
    if (this.waiting) this.stats.replaced++;
    this.waiting = produce;
    this.lastProducer = produce;
    void this.pump();
  }

  /** Sends what is waiting when nothing is in flight. */
  private async pump() {
    if (this.sending || this.inFlight || !this.waiting || !this.isOpen) return;
    const produce = this.waiting;
    this.waiting = null;
    this.sending = true;
    try {
      const input = await produce();
      const same = this.last && sameBytes(this.last.canvas, input.canvas) && sameParams(this.last.params, input.params);
      if (!same && !this.isOpen) this.waiting ??= produce;
      if (!same && this.isOpen) this.transmit(input);
    } catch (e) {
      this.o.onError?.({ code: "client", message: `cannot read the canvas: ${e instanceof Error ? e.message : String(e)}` });
    } finally {
      this.sending = false;
    }
    void this.pump();
  }

  private transmit(input: RealtimeInput) {
    const id = this.nextId++;
    this.ws!.send(
      encode({
        type: "generate",
        data: { ...input.params, canvas_data: input.canvas ?? new Uint8Array(0), frame_id: id },
      }),
    );
    this.stats.sent++;
    this.sentParams.set(id, input.params);
    for (const k of this.sentParams.keys()) if (k < id - 16) this.sentParams.delete(k);
    this.last = input;
    this.inFlight = { id, at: performance.now() };
    this.clearTimer();
    this.timer = setTimeout(() => this.answered(), this.o.answerTimeoutMs ?? 10_000);
  }

  private clearTimer() {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private answered() {
    this.clearTimer();
    this.inFlight = null;
    void this.pump();
  }

  private receive(data: unknown) {
    let m: Record<string, unknown>;
    try {
      m = decode(new Uint8Array(data as ArrayBuffer)) as Record<string, unknown>;
    } catch {
      return;
    }
    if (m.type === "frame") {
      const input = (m.input_frame_id as number | null) ?? null;
      const sentAt = this.inFlight && input !== null && input >= this.inFlight.id ? this.inFlight.at : null;
      this.stats.frames++;
      this.o.onFrame({
        image: new Blob([m.data as Uint8Array<ArrayBuffer>], { type: (m.mime as string) ?? "image/jpeg" }),
        params: input === null ? null : (this.sentParams.get(input) ?? null),
        frameId: m.frame_id as number,
        inputFrameId: input,
        latencyMs: m.latency_ms as number,
        roundTripMs: sentAt === null ? null : performance.now() - sentAt,
      });
      if (this.inFlight && (input === null || input >= this.inFlight.id)) this.answered();
    } else if (m.type === "status") {
      this.o.onStatus?.(m.data as ServerStatus);
    } else if (m.type === "error") {
      this.o.onError?.(m.data as { code: string; message: string });
      // A refused input is answered too: what waits can go.
      if (this.inFlight) this.answered();
    }
  }
}
