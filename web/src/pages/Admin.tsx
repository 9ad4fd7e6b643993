// /admin: moderation for administrators. Reported items with their reports (hide, show
// again, dismiss, delete) and accounts (find, suspend, lift a suspension).

import { useEffect, useState } from "react";
import type { Account, ReportedItem } from "../api/types";
import { api, session, toasts, use } from "../app";
import { AssetMedia } from "../components/AssetMedia";
import { Button, Confirm, ErrorNote, Input, Skeleton } from "../components/ui";
import { timeAgo } from "../lib/format";
import { useLoad } from "../lib/load";
import { Link } from "../lib/router";

function Reports() {
  const { data: items, error, reload: load, update } = useLoad(() => api.reports().then((r) => r.items));
  const [busy, setBusy] = useState<string | null>(null);
  const [deleting, setDeleting] = useState<ReportedItem | null>(null);

  /** Runs an action on item `id`; `after` says what becomes of its row (kept in view after
   * hiding, so it can be shown again). */
  async function act(id: string, what: string, run: () => Promise<unknown>, after: (r: ReportedItem) => ReportedItem | null) {
    setBusy(id);
    try {
      await run();
      toasts.getState().push("info", what);
      update((list) => list.flatMap((r) => (r.item.id === id ? (after(r) ?? []) : [r])));
    } catch (e) {
      toasts.getState().error(e, "Not done");
    } finally {
      setBusy(null);
    }
  }

  if (error) return <ErrorNote error={error} onRetry={load} />;
  if (!items) return <Skeleton className="h-40" />;
  if (items.length === 0) return <p className="text-sm text-muted" data-testid="no-reports">No open reports.</p>;
  return (
    <>
    <ul className="flex flex-col gap-3" data-testid="reports">
      {items.map(({ item, hidden, reports }) => (
        <li key={item.id} className="grid gap-4 rounded-xl border border-line p-3 sm:grid-cols-[8rem_1fr]" data-testid="reported-item">
          <div className="overflow-hidden rounded-lg bg-surface">{item.outputs[0] && <AssetMedia asset={item.outputs[0]} alt={item.prompt ?? item.kind} className="aspect-square w-full object-cover" />}</div>
          <div className="flex min-w-0 flex-col gap-2">
            <div className="text-sm">
              <Link to={`/feed/${item.id}`} className="font-medium hover:underline">
                {item.prompt ?? item.kind}
              </Link>
              <span className="text-muted">
                {" "}
                by <Link to={`/profile/${item.author.handle}`}>@{item.author.handle}</Link>
                {hidden && <span className="ml-2 rounded bg-red-500/20 px-1.5 py-0.5 text-xs text-red-300">hidden</span>}
              </span>
            </div>
            <ul className="flex flex-col gap-1 text-sm text-neutral-300" aria-label="Reports">
              {reports.map((r, i) => (
                <li key={i} data-testid="report-reason">
                  “{r.reason}” <span className="text-xs text-muted">— @{r.reporter}, {timeAgo(r.created_at)}</span>
                </li>
              ))}
            </ul>
            <div className="flex flex-wrap gap-2">
              {hidden ? (
                <Button size="sm" disabled={busy === item.id} onClick={() => act(item.id, "Shown again", () => api.moderate(item.id, false), (r) => ({ ...r, hidden: false }))}>
                  Show again
                </Button>
              ) : (
                <Button size="sm" disabled={busy === item.id} onClick={() => act(item.id, "Hidden from the feed", () => api.moderate(item.id, true), (r) => ({ ...r, hidden: true }))} data-testid="hide">
                  Hide
                </Button>
              )}
              {!hidden && (
              <Button size="sm" variant="ghost" disabled={busy === item.id} onClick={() => act(item.id, "Reports dismissed", () => api.dismissReports(item.id), () => null)} data-testid="dismiss">
                Dismiss reports
              </Button>
              )}
              <Button size="sm" variant="danger" disabled={busy === item.id} onClick={() => setDeleting({ item, hidden, reports })} data-testid="delete">
                Delete
              </Button>
            </div>
          </div>
        </li>
      ))}
    </ul>
      {deleting && (
        <Confirm
          title="Delete this item?"
          body={`“${deleting.item.prompt ?? deleting.item.kind}” by @${deleting.item.author.handle} and its files are deleted for good.`}
          confirm="Delete"
          onCancel={() => setDeleting(null)}
          onConfirm={() => {
            const id = deleting.item.id;
            setDeleting(null);
            act(id, "Deleted", () => api.removeAnyJob(id), () => null);
          }}
        />
      )}
    </>
  );
}

function Accounts() {
  const me = use(session, (s) => s.user);
  const [q, setQ] = useState("");
  // Typing settles for a moment before the list is asked for.
  const [search, setSearch] = useState("");
  useEffect(() => {
    const t = setTimeout(() => setSearch(q), 250);
    return () => clearTimeout(t);
  }, [q]);
  const { data: users, error, update } = useLoad(() => api.accounts(search || undefined).then((r) => r.users), search);

  async function toggle(u: Account) {
    try {
      const changed = await api.suspend(u.id, !u.suspended);
      update((list) => list.map((x) => (x.id === changed.id ? changed : x)));
      toasts.getState().push("info", changed.suspended ? `@${u.handle} is suspended` : `@${u.handle} may sign in again`);
    } catch (e) {
      toasts.getState().error(e, "Not done");
    }
  }

  return (
    <div className="flex flex-col gap-3">
      <label className="flex flex-col gap-1 text-sm">
        <span className="text-xs font-medium uppercase tracking-wide text-muted">Find an account</span>
        <Input type="search" value={q} onChange={(e) => setQ(e.target.value)} placeholder="Email, name or handle" data-testid="account-search" />
      </label>
      {error && <ErrorNote error={error} />}
      {!users ? (
        <Skeleton className="h-24" />
      ) : users.length === 0 ? (
        <p className="text-sm text-muted">No accounts match.</p>
      ) : (
        <ul className="divide-y divide-line rounded-xl border border-line" data-testid="accounts">
          {users.map((u) => (
            <li key={u.id} className="flex items-center gap-3 p-3 text-sm" data-testid="account">
              <span className="min-w-0 flex-1 truncate">
                <span className="font-medium">{u.name}</span> <span className="text-muted">@{u.handle} · {u.email}</span>
                {u.is_admin && <span className="ml-2 text-xs text-muted">administrator</span>}
                {u.suspended && <span className="ml-2 rounded bg-red-500/20 px-1.5 py-0.5 text-xs text-red-300">suspended</span>}
              </span>
              {u.id !== me?.id && (
                <Button size="sm" variant={u.suspended ? "secondary" : "danger"} onClick={() => toggle(u)} data-testid="suspend">
                  {u.suspended ? "Lift suspension" : "Suspend"}
                </Button>
              )}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

export default function Admin() {
  const user = use(session, (s) => s.user);
  return (
    <div className="mx-auto flex max-w-4xl flex-col gap-6 px-3 py-6 sm:px-5">
      <h1 className="text-2xl font-semibold tracking-tight">Moderation</h1>
      {!user?.is_admin ? (
        <ErrorNote error={{ message: "Only administrators moderate this server." }} />
      ) : (
        <>
          <section className="flex flex-col gap-3" aria-labelledby="reports-heading">
            <h2 id="reports-heading" className="text-lg font-medium">
              Reports
            </h2>
            <Reports />
          </section>
          <section className="flex flex-col gap-3" aria-labelledby="accounts-heading">
            <h2 id="accounts-heading" className="text-lg font-medium">
              Accounts
            </h2>
            <Accounts />
          </section>
        </>
      )}
    </div>
  );
}
