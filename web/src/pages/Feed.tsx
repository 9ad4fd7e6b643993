// /feed: the public gallery, newest or most liked, searchable by prompt.

import { useEffect, useMemo, useState } from "react";
import { useStore } from "zustand";
import type { FeedItem } from "../api/types";
import { api } from "../app";
import { FeedCard } from "../components/FeedCard";
import { GridSkeleton, MoreLoader, gridClass } from "../components/Gallery";
import { Chip, Input } from "../components/ui";
import { navigate, useLocation } from "../lib/router";
import { createPager } from "../stores/pager";

export default function Feed() {
  const { query } = useLocation();
  const sort = query.get("sort") === "top" ? "top" : "new";
  const q = query.get("q") ?? "";
  const [text, setText] = useState(q);
  // The box follows the URL's q when it changes (the header's search, back and forward).
  const [shownQ, setShownQ] = useState(q);
  if (shownQ !== q) {
    setShownQ(q);
    setText(q);
  }
  const pager = useMemo(() => createPager<FeedItem>((cursor) => api.feed({ cursor, sort, q, limit: 30 })), [sort, q]);
  const items = useStore(pager, (s) => s.items);
  const loaded = useStore(pager, (s) => s.loaded);
  useEffect(() => {
    void pager.getState().loadMore();
  }, [pager]);
  const go = (o: { sort?: string; q?: string }) => {
    const p = new URLSearchParams();
    const s = o.sort ?? sort;
    const qq = o.q ?? q;
    if (s !== "new") p.set("sort", s);
    if (qq) p.set("q", qq);
    const str = p.toString();
    navigate(str ? `/feed?${str}` : "/feed", { replace: true });
  };
  return (
    <div className="mx-auto max-w-[1600px] px-3 py-6 sm:px-5">
      <div className="mb-5 flex flex-wrap items-end gap-3">
        <div className="mr-auto">
          <h1 className="text-2xl font-semibold tracking-tight">Gallery</h1>
          <p className="text-sm text-muted">What people on this server chose to share.</p>
        </div>
        <form
          role="search"
          className="w-52 sm:w-64"
          onSubmit={(e) => {
            e.preventDefault();
            go({ q: text.trim() });
          }}
        >
          <Input type="search" aria-label="Search prompts" placeholder="Search prompts…" value={text} onChange={(e) => setText(e.target.value)} />
        </form>
        <div className="flex gap-1.5" role="group" aria-label="Order">
          <Chip active={sort === "new"} onClick={() => go({ sort: "new" })}>
            Newest
          </Chip>
          <Chip active={sort === "top"} onClick={() => go({ sort: "top" })}>
            Most liked
          </Chip>
        </div>
      </div>
      {q && (
        <p className="mb-3 text-sm text-muted">
          Prompts containing “{q}”{" "}
          <button type="button" className="underline" onClick={() => go({ q: "" })}>
            clear
          </button>
        </p>
      )}
      {!loaded ? (
        <GridSkeleton />
      ) : items.length === 0 ? (
        <div className="rounded-2xl border border-dashed border-line p-10 text-center text-muted">{q ? "No shared image matches." : "Nothing has been shared yet."}</div>
      ) : (
        <ul className={gridClass} data-testid="feed-grid">
          {items.map((it) => (
            <FeedCard key={it.id} item={it} />
          ))}
        </ul>
      )}
      {loaded && <MoreLoader pager={pager} />}
    </div>
  );
}
