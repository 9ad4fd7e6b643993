// A list that loads page by page (cursor pagination): my generations, the feed, a profile.

import { createStore } from "zustand/vanilla";
import { ApiError, asApiError } from "../api/client";
import type { Page } from "../api/types";

export interface PagerState<T extends { id: string }> {
  items: T[];
  cursor: string | null;
  /** No more pages. */
  done: boolean;
  loading: boolean;
  /** The first page has arrived (before that, show skeletons). */
  loaded: boolean;
  error: ApiError | null;
  loadMore(): Promise<void>;
  /** Starts over, optionally with another source (a new filter). */
  reset(fetchPage?: (cursor: string | null) => Promise<Page<T>>): Promise<void>;
  /** Re-reads the first page and merges it in place (new items on top, changed ones
   * updated), keeping what is already loaded and the scroll position. */
  refresh(): Promise<void>;
  update(id: string, patch: Partial<T>): void;
  remove(ids: string[]): void;
}

export function createPager<T extends { id: string }>(fetchPage: (cursor: string | null) => Promise<Page<T>>) {
  let source = fetchPage;
  // Answers to an older reset are dropped.
  let generation = 0;
  return createStore<PagerState<T>>()((set, get) => ({
    items: [],
    cursor: null,
    done: false,
    loading: false,
    loaded: false,
    error: null,
    async loadMore() {
      const s = get();
      if (s.loading || s.done) return;
      const mine = generation;
      set({ loading: true, error: null });
      try {
        const page = await source(s.cursor);
        if (mine !== generation) return;
        const seen = new Set(get().items.map((i) => i.id));
        set({
          items: [...get().items, ...page.items.filter((i) => !seen.has(i.id))],
          cursor: page.next_cursor,
          done: page.next_cursor === null,
          loading: false,
          loaded: true,
        });
      } catch (e) {
        if (mine !== generation) return;
        set({ loading: false, loaded: true, error: asApiError(e) });
      }
    },
    async reset(fetchPage) {
      if (fetchPage) source = fetchPage;
      generation++;
      set({ items: [], cursor: null, done: false, loading: false, loaded: false, error: null });
      await get().loadMore();
    },
    async refresh() {
      if (!get().loaded) return get().loadMore();
      const mine = generation;
      try {
        const page = await source(null);
        if (mine !== generation) return;
        const fresh = new Map(page.items.map((i) => [i.id, i]));
        const known = new Set(get().items.map((i) => i.id));
        const added = page.items.filter((i) => !known.has(i.id));
        set({ items: [...added, ...get().items.map((i) => fresh.get(i.id) ?? i)], error: null });
      } catch (e) {
        if (mine === generation) set({ error: asApiError(e) });
      }
    },
    update(id, patch) {
      set({ items: get().items.map((i) => (i.id === id ? { ...i, ...patch } : i)) });
    },
    remove(ids) {
      const gone = new Set(ids);
      set({ items: get().items.filter((i) => !gone.has(i.id)) });
    },
  }));
}
