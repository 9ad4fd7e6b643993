// /profile/:handle: someone's public page and what they shared.

import { useEffect, useMemo, useState } from "react";
import { useStore } from "zustand";
import { asApiError, type ApiError } from "../api/client";
import type { FeedItem, PublicProfile } from "../api/types";
import { api } from "../app";
import { FeedCard } from "../components/FeedCard";
import { GridSkeleton, MoreLoader, gridClass } from "../components/Gallery";
import { ErrorNote, Skeleton } from "../components/ui";
import { createPager } from "../stores/pager";

export default function Profile({ handle }: { handle: string }) {
  const [profile, setProfile] = useState<PublicProfile | null>(null);
  const pager = useMemo(
    () =>
      createPager<FeedItem>(async (cursor) => {
        const p = await api.publicProfile(handle, cursor);
        if (!cursor) setProfile(p);
        return p;
      }),
    [handle],
  );
  const items = useStore(pager, (s) => s.items);
  const loaded = useStore(pager, (s) => s.loaded);
  const pageError = useStore(pager, (s) => s.error);
  useEffect(() => {
    void pager.getState().loadMore();
  }, [pager]);
  // The first page failing is the profile failing (a handle that does not exist: 404).
  const error: ApiError | null = pageError && !profile ? asApiError(pageError) : null;

  if (error) return <div className="mx-auto max-w-3xl p-6">{error.status === 404 ? <ErrorNote error={{ message: `There is no @${handle} here.` }} /> : <ErrorNote error={error} />}</div>;
  return (
    <div className="mx-auto max-w-[1600px] px-3 py-6 sm:px-5">
      {profile ? (
        <div className="mb-6 flex items-center gap-4">
          <span className="brand-gradient grid h-16 w-16 place-items-center rounded-full text-2xl font-bold text-neutral-950">{profile.name.slice(0, 1).toUpperCase()}</span>
          <div>
            <h1 className="text-2xl font-semibold tracking-tight">{profile.name}</h1>
            <p className="text-sm text-muted">
              @{profile.handle} · {profile.public_items} shared · {profile.likes_received} likes
            </p>
            {profile.bio && <p className="mt-1 max-w-xl text-sm text-neutral-300">{profile.bio}</p>}
          </div>
        </div>
      ) : (
        <Skeleton className="mb-6 h-16 w-80" />
      )}
      {!loaded ? (
        <GridSkeleton />
      ) : items.length === 0 ? (
        <p className="rounded-2xl border border-dashed border-line p-10 text-center text-muted">Nothing shared yet.</p>
      ) : (
        <ul className={gridClass}>
          {items.map((it) => (
            <FeedCard key={it.id} item={it} />
          ))}
        </ul>
      )}
      {loaded && <MoreLoader pager={pager} />}
    </div>
  );
}
