import type { FeedItem } from "../api/types";
import { Link } from "../lib/router";
import { AssetMedia } from "./AssetMedia";

export function FeedCard({ item }: { item: FeedItem }) {
  const label = item.prompt ?? item.kind;
  return (
    <li className="group relative overflow-hidden rounded-xl border border-line bg-surface" data-testid="feed-card">
      <Link to={`/feed/${item.id}`} className="block" aria-label={`Open: ${label}`}>
        <AssetMedia asset={item.outputs[0]} alt={label} thumbnail className="aspect-square w-full object-cover transition group-hover:scale-[1.02]" />
      </Link>
      <div className="flex items-center justify-between gap-2 px-2 py-1.5 text-xs">
        <Link to={`/profile/${item.author.handle}`} className="truncate text-neutral-300 hover:text-white">
          @{item.author.handle}
        </Link>
        <span className={item.liked ? "text-pink-400" : "text-muted"} aria-label={`${item.likes_count} likes`}>
          ♥ {item.likes_count}
        </span>
      </div>
    </li>
  );
}
