// Messages for things that happen away from a form: a failed like, a delete, a lost
// connection. Errors stay until dismissed; notices fade.

import { createStore } from "zustand/vanilla";
import { asApiError } from "../api/client";

export interface Toast {
  id: number;
  kind: "error" | "info";
  message: string;
}

export interface ToastState {
  toasts: Toast[];
  push(kind: Toast["kind"], message: string): number;
  /** Shows what went wrong, whatever was thrown. */
  error(e: unknown, what?: string): void;
  dismiss(id: number): void;
}

export function createToastStore() {
  let next = 1;
  return createStore<ToastState>()((set, get) => ({
    toasts: [],
    push(kind, message) {
      const id = next++;
      // The same message twice in a row is shown once.
      const last = get().toasts.at(-1);
      if (last && last.message === message && last.kind === kind) return last.id;
      set((s) => ({ toasts: [...s.toasts.slice(-4), { id, kind, message }] }));
      return id;
    },
    error(e, what) {
      const err = asApiError(e);
      if (err.code === "aborted") return;
      get().push("error", what ? `${what}: ${err.message}` : err.message);
    },
    dismiss(id) {
      set((s) => ({ toasts: s.toasts.filter((t) => t.id !== id) }));
    },
  }));
}
