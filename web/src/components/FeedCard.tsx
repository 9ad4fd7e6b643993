import type { FeedItem } from "../api/types";
import { Link } from "../lib/router";

export function FeedCard({ item }: { item: FeedItem }) {
  const img = item.images[0];
  return (
    <li className="group relative overflow-hidden rounded-xl border border-line bg-surface" data-testid="feed-card">
      <Link to={`/feed/${item.id}`} className="block" aria-label={`Open: ${item.prompt}`}>
        {img ? (
          <img src={img.thumbnail_url} alt={item.prompt} className="pixelated aspect-square w-full object-cover transition group-hover:scale-[1.02]" loading="lazy" />
        ) : (
          <div className="aspect-square" />
        )}
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
