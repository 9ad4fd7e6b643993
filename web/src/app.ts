// The studio's one API client and its stores, shared by every page.

import { useStore } from "zustand";
import type { StoreApi } from "zustand/vanilla";
import { ApiClient } from "./api/client";
import { createEventsStore } from "./stores/events";
import { createGenerateStore } from "./stores/generate";
import { createJobsStore } from "./stores/jobs";
import { createSessionStore } from "./stores/session";
import { createToastStore } from "./stores/toasts";

export const api = new ApiClient();
export const session = createSessionStore(api);
export const toasts = createToastStore();
export const generate = createGenerateStore(api, {
  // The balance in the header is a convenience; it is read again on the next change.
  onCreditsChanged: () => void session.getState().refreshUser().catch(() => {}),
  onChanged: (id, change) => changedListeners.forEach((l) => l(id, change)),
});
/** Every job's latest state, whatever its kind; each tool listens to its own kind. */
export const jobs = createJobsStore();
jobs.getState().listen("image", (event, data) => generate.getState().applyEvent(event, data));
export const events = createEventsStore({
  onEvent: (event, data) => jobs.getState().applyEvent(event, data),
  onReady: () => void generate.getState().resync(),
  // Keep trying unless the server said the session is over.
  refresh: async () => (await api.refresh()) !== "refused",
});

/** Lists of generations follow when one ends or is deleted. */
type ChangeListener = (id: string, change: "ended" | "deleted") => void;
const changedListeners = new Set<ChangeListener>();
export function onChanged(l: ChangeListener): () => void {
  changedListeners.add(l);
  return () => changedListeners.delete(l);
}

api.onSignedOut = () => session.getState().signedOut();

export function use<S, T>(store: StoreApi<S>, select: (s: S) => T): T {
  return useStore(store, select);
}
