// /feed/:id: one shared item of any kind (its outputs and request); like it, remix it, meet
// its author.

import { useState } from "react";
import { asApiError, type ApiError } from "../api/client";
import type { FeedItem } from "../api/types";
import { api, generate, session, toasts, use } from "../app";
import { AssetMedia } from "../components/AssetMedia";
import { ImageActions } from "../components/ImageActions";
import { Button, ErrorNote, Skeleton, Textarea } from "../components/ui";
import { timeAgo } from "../lib/format";
import { useLoad } from "../lib/load";
import { Link, navigate } from "../lib/router";

function Param({ name, value }: { name: string; value: unknown }) {
  if (value === null || value === undefined || value === "" || typeof value === "object") return null;
  return (
    <>
      <dt className="text-muted">{name}</dt>
      <dd className="break-words text-neutral-200">{String(value)}</dd>
    </>
  );
}

/** Reporting an item to the server's administrators: a reason, then a thank-you. */
function Report({ id, onSignIn }: { id: string; onSignIn: (() => void) | null }) {
  const [open, setOpen] = useState(false);
  const [reason, setReason] = useState("");
  const [sent, setSent] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  if (sent) return <p className="text-xs text-muted" data-testid="reported">Reported. The administrators will look at it; thank you.</p>;
  if (!open)
    return (
      <button type="button" className="self-start text-xs text-muted underline-offset-2 hover:underline" onClick={() => (onSignIn ? onSignIn() : setOpen(true))} data-testid="report">
        Report this
      </button>
    );
  async function send() {
    setError(null);
    try {
      await api.report(id, reason);
      setSent(true);
    } catch (e) {
      setError(asApiError(e));
    }
  }
  return (
    <form
      className="flex flex-col gap-2 rounded-xl border border-line p-3"
      onSubmit={(e) => {
        e.preventDefault();
        void send();
      }}
    >
      <label htmlFor="report-reason" className="text-xs font-medium uppercase tracking-wide text-muted">
        What is wrong with it?
      </label>
      <Textarea id="report-reason" value={reason} maxLength={500} rows={3} onChange={(e) => setReason(e.target.value)} required data-testid="report-reason-input" />
      {error && <p className="text-xs text-red-300">{error.detail}</p>}
      <div className="flex gap-2">
        <Button type="submit" size="sm" variant="danger" disabled={!reason.trim()} data-testid="report-send">
          Report
        </Button>
        <Button size="sm" variant="ghost" onClick={() => setOpen(false)}>
          Cancel
        </Button>
      </div>
    </form>
  );
}

export default function FeedDetail({ id }: { id: string }) {
  const { data: item, error, reload: load, update } = useLoad(() => api.feedItem(id), id);
  const setItem = (f: (it: FeedItem) => FeedItem) => update(f);
  const [liking, setLiking] = useState(false);
  const user = use(session, (s) => s.user);

  if (error) return <div className="mx-auto max-w-3xl p-6">{error.status === 404 ? <ErrorNote error={{ message: "This image is not shared (any more), or does not exist." }} /> : <ErrorNote error={error} onRetry={load} />}</div>;
  if (!item)
    return (
      <div className="mx-auto grid max-w-6xl gap-6 p-6 lg:grid-cols-[1fr_22rem]" aria-busy="true">
        <Skeleton className="aspect-square" />
        <Skeleton className="h-80" />
      </div>
    );

  const mine = user?.handle === item.author.handle;
  const p = item.params as Record<string, unknown>;
  // The size of what it made (a request may leave it to the model).
  const size = item.outputs[0]?.width && item.outputs[0]?.height ? { width: item.outputs[0].width, height: item.outputs[0].height } : null;
  const signIn = () => navigate(`/login?next=${encodeURIComponent(`/feed/${id}`)}`);
  async function like() {
    if (!user) return signIn();
    setLiking(true);
    try {
      const r = await api.like(id);
      setItem((it) => ({ ...it, liked: r.liked, likes_count: r.likes_count }));
    } catch (e) {
      toasts.getState().error(e, "Cannot like");
    } finally {
      setLiking(false);
    }
  }
  return (
    <div className="mx-auto grid max-w-6xl gap-6 px-3 py-6 sm:px-5 lg:grid-cols-[minmax(0,1fr)_22rem]">
      <div className={`grid gap-3 ${item.outputs.length > 1 ? "grid-cols-2" : ""}`} data-testid="detail-outputs">
        {item.outputs.map((a) => (
          <AssetMedia key={a.id} asset={a} alt={item.prompt ?? item.kind} className="w-full rounded-2xl border border-line bg-surface object-contain" />
        ))}
      </div>
      <aside className="flex flex-col gap-4">
        <Link to={`/profile/${item.author.handle}`} className="flex items-center gap-3 rounded-xl border border-line p-3 hover:bg-surface" data-testid="author">
          <span className="brand-gradient grid h-10 w-10 place-items-center rounded-full font-bold text-neutral-950">{item.author.name.slice(0, 1).toUpperCase()}</span>
          <span className="flex flex-col">
            <span className="text-sm font-medium">{item.author.name}</span>
            <span className="text-xs text-muted">
              @{item.author.handle} · {timeAgo(item.created_at)}
            </span>
          </span>
        </Link>
        <h1 className="text-base font-normal leading-relaxed" data-testid="detail-prompt">
          {item.prompt ?? item.kind}
        </h1>
        <div className="flex gap-2">
          <Button onClick={like} disabled={liking} aria-pressed={item.liked} data-testid="like" className={item.liked ? "border-pink-500/60 text-pink-300" : ""}>
            ♥ <span data-testid="likes-count">{item.likes_count}</span>
            <span className="sr-only">{item.liked ? "Unlike" : "Like"}</span>
          </Button>
          {item.kind === "image" && (
            <Button variant="primary" onClick={() => (user ? navigate(`/image?remix=${item.id}`) : signIn())} data-testid="remix">
              Remix
            </Button>
          )}
        </div>
        <dl className="grid grid-cols-[auto_1fr] gap-x-4 gap-y-1.5 rounded-xl border border-line p-4 text-sm" data-testid="parameters">
          <Param name="Kind" value={item.kind} />
          <Param name="Model" value={p.model} />
          <Param name="Negative" value={p.negative_prompt} />
          <Param name="Size" value={size ? `${size.width} × ${size.height}` : null} />
          <Param name="Steps" value={p.steps} />
          <Param name="CFG" value={p.cfg_scale} />
          <Param name="Seed" value={p.seed} />
          <Param name="Scheduler" value={p.scheduler} />
          <Param name="Style" value={p.style !== "none" ? p.style : null} />
          <Param name="Scale" value={typeof p.scale === "number" ? `${p.scale}×` : null} />
        </dl>
        {item.outputs[0]?.parent_id && (
          <p className="text-sm text-muted">
            Made from{" "}
            <a href={`/api/assets/${encodeURIComponent(item.outputs[0].parent_id)}`} className="text-neutral-200 underline-offset-2 hover:underline" data-testid="source-link">
              the source image
            </a>
          </p>
        )}
        {!mine && item.is_public && <Report id={item.id} onSignIn={user ? null : signIn} />}
        {mine && item.outputs[0]?.kind === "image" && (
          <Link
            to={`/enhance?asset=${encodeURIComponent(item.outputs[0].id)}&url=${encodeURIComponent(item.outputs[0].url)}&w=${item.outputs[0].width ?? 0}&h=${item.outputs[0].height ?? 0}`}
            className="self-start rounded-lg border border-line px-3 py-1.5 text-sm hover:bg-surface"
            data-testid="enhance-link"
          >
            Enhance
          </Link>
        )}
        {mine && item.outputs[0]?.kind === "image" && (
          <Link
            to={`/edit?asset=${encodeURIComponent(item.outputs[0].id)}&url=${encodeURIComponent(item.outputs[0].url)}&w=${item.outputs[0].width ?? 0}&h=${item.outputs[0].height ?? 0}`}
            className="self-start rounded-lg border border-line px-3 py-1.5 text-sm hover:bg-surface"
            data-testid="edit-link"
          >
            Edit
          </Link>
        )}
        {mine && (
          <ImageActions
            generation={{ id: item.id, is_public: item.is_public, prompt: item.prompt ?? item.kind }}
            onReuse={item.kind === "image" && item.ref_id ? () => navigate(`/image?reuse=${item.ref_id}`) : undefined}
            onTogglePublic={async (v) => {
              await api.setJobPublic(item.id, v);
              setItem((it) => ({ ...it, is_public: v }));
            }}
            onDelete={async () => {
              await api.removeJob(item.id);
              if (item.ref_id) generate.getState().forget([item.ref_id]);
              navigate("/feed", { replace: true });
            }}
          />
        )}
      </aside>
    </div>
  );
}
