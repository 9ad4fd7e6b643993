// Grids of generations: skeletons while the first page loads, more pages as the end
// scrolls into view (and a button for those who prefer it), errors with a retry.

import { useEffect, useRef } from "react";
import { useStore } from "zustand";
import type { StoreApi } from "zustand/vanilla";
import type { PagerState } from "../stores/pager";
import { Button, ErrorNote, Skeleton, Spinner } from "./ui";

export const gridClass = "grid grid-cols-2 gap-2 sm:grid-cols-3 sm:gap-3 lg:grid-cols-4 xl:grid-cols-5";

export function GridSkeleton({ n = 10 }: { n?: number }) {
  return (
    <div className={gridClass} aria-busy="true" aria-label="Loading">
      {Array.from({ length: n }, (_, i) => (
        <Skeleton key={i} className="aspect-square" />
      ))}
    </div>
  );
}

export function MoreLoader<T extends { id: string }>({ pager }: { pager: StoreApi<PagerState<T>> }) {
  const done = useStore(pager, (s) => s.done);
  const loading = useStore(pager, (s) => s.loading);
  const error = useStore(pager, (s) => s.error);
  const loaded = useStore(pager, (s) => s.loaded);
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const el = ref.current;
    if (!el || done || error) return;
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) void pager.getState().loadMore();
    }, { rootMargin: "600px" });
    io.observe(el);
    return () => io.disconnect();
  }, [pager, done, error, loaded]);
  if (error) return <ErrorNote error={error} onRetry={() => void pager.getState().loadMore()} />;
  if (done) return null;
  return (
    <div ref={ref} className="flex justify-center py-6">
      {loading ? (
        <Spinner className="text-muted" />
      ) : (
        <Button size="sm" variant="ghost" onClick={() => void pager.getState().loadMore()}>
          Load more
        </Button>
      )}
    </div>
  );
}
