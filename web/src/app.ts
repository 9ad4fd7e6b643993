// The studio's one API client and its stores, shared by every page.

import { useStore } from "zustand";
import type { StoreApi } from "zustand/vanilla";
import { ApiClient } from "./api/client";
import { createEventsStore } from "./stores/events";
import { createGenerateStore } from "./stores/generate";
import { createSessionStore } from "./stores/session";
import { createToastStore } from "./stores/toasts";

export const api = new ApiClient();
export const session = createSessionStore(api);
export const toasts = createToastStore();
export const generate = createGenerateStore(api, {
  // The balance in the header is a convenience; it is read again on the next change.
  onCreditsChanged: () => void session.getState().refreshUser().catch(() => {}),
  onChanged: (id) => changedListeners.forEach((l) => l(id)),
});
export const events = createEventsStore({
  onEvent: (kind, data) => generate.getState().applyEvent(kind, data),
  onReady: () => void generate.getState().resync(),
  refresh: () => api.refresh(),
});

/** Lists of generations refresh when one ends or is deleted. */
const changedListeners = new Set<(id: string) => void>();
export function onChanged(l: (id: string) => void): () => void {
  changedListeners.add(l);
  return () => changedListeners.delete(l);
}

api.onSignedOut = () => session.getState().signedOut();

export function use<S, T>(store: StoreApi<S>, select: (s: S) => T): T {
  return useStore(store, select);
}
