// The live connection to /api/events (Server-Sent Events). The browser's EventSource
// reconnects by itself after network errors; when the server refuses the stream (its
// session expired) the connection is renewed here: refresh the session, then reconnect
// with a growing delay.

import { createStore } from "zustand/vanilla";

export const EVENT_KINDS = ["queued", "started", "progress", "completed", "failed", "cancelled"] as const;

/** The part of EventSource this uses (tests pass a fake). */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((e: Event) => void) | null;
  onerror: ((e: Event) => void) | null;
  addEventListener(type: string, listener: (e: MessageEvent) => void): void;
  close(): void;
}

export interface EventsOptions {
  url?: string;
  open?: (url: string) => EventSourceLike;
  onEvent: (kind: string, data: Record<string, unknown>) => void;
  /** After (re)connecting: catch up on what was missed. */
  onReady?: () => void;
  /** Renews the session; false when signed out for good. */
  refresh: () => Promise<boolean>;
  /** Waits (tests shorten it). */
  sleep?: (ms: number) => Promise<void>;
}

export interface EventsState {
  status: "idle" | "connecting" | "open" | "closed";
  connect(): void;
  disconnect(): void;
}

const CLOSED = 2;

export function createEventsStore(o: EventsOptions) {
  const open = o.open ?? ((url: string) => new EventSource(url) as unknown as EventSourceLike);
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  let source: EventSourceLike | null = null;
  let wanted = false;
  let failures = 0;

  return createStore<EventsState>()((set, get) => {
    const start = () => {
      const es = open(o.url ?? "/api/events");
      source = es;
      set({ status: "connecting" });
      es.addEventListener("ready", () => {
        failures = 0;
        set({ status: "open" });
        o.onReady?.();
      });
      for (const kind of EVENT_KINDS) {
        es.addEventListener(kind, (e) => {
          try {
            o.onEvent(kind, JSON.parse(e.data));
          } catch {
            // A malformed event is skipped; the next poll or event corrects the view.
          }
        });
      }
      es.onerror = () => {
        if (source !== es || es.readyState !== CLOSED) {
          // The browser retries by itself.
          if (source === es) set({ status: "connecting" });
          return;
        }
        es.close();
        source = null;
        set({ status: "closed" });
        failures++;
        void (async () => {
          await sleep(Math.min(30_000, 500 * 2 ** Math.min(failures, 6)));
          if (!wanted || source) return;
          const again = await o.refresh();
          // Signed out, or another stream opened, while the refresh was on its way.
          if (!wanted || source) return;
          if (again) start();
          else set({ status: "closed" });
        })();
      };
    };

    return {
      status: "idle",
      connect() {
        wanted = true;
        if (!source) start();
      },
      disconnect() {
        wanted = false;
        source?.close();
        source = null;
        if (get().status !== "idle") set({ status: "idle" });
      },
    };
  });
}
