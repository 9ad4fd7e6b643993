// /app: everything I made, of any kind, newest first; filter by kind, model or prompt,
// select and delete.

import { useEffect, useMemo, useState } from "react";
import { useStore } from "zustand";
import type { Job } from "../api/types";
import { api, generate, onChanged, toasts, use } from "../app";
import { AssetMedia } from "../components/AssetMedia";
import { GridSkeleton, MoreLoader, gridClass } from "../components/Gallery";
import { Button, Confirm, Input, Select } from "../components/ui";
import { timeAgo } from "../lib/format";
import { Link } from "../lib/router";
import { createPager } from "../stores/pager";

export default function Dashboard() {
  const [model, setModel] = useState("");
  const [kind, setKind] = useState("");
  const [kinds, setKinds] = useState<string[]>([]);
  const [q, setQ] = useState("");
  const [search, setSearch] = useState("");
  const models = use(generate, (s) => s.models);
  const pager = useMemo(() => createPager<Job>((cursor) => api.jobs({ cursor, limit: 30 })), []);
  const items = useStore(pager, (s) => s.items);
  const loaded = useStore(pager, (s) => s.loaded);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [confirming, setConfirming] = useState(false);
  const [deleting, setDeleting] = useState(false);

  useEffect(() => {
    if (!generate.getState().optionsLoaded) void generate.getState().loadOptions();
    api.jobKinds().then(
      (k) => setKinds(k.kinds),
      () => setKinds([]),
    );
  }, []);
  useEffect(() => {
    void pager.getState().reset((cursor) => api.jobs({ cursor, limit: 30, kind: kind || undefined, model: model || undefined, q: search || undefined }));
  }, [pager, kind, model, search]);
  // Another filter, another list: the selection starts empty.
  const filter = `${kind}\n${model}\n${search}`;
  const [selectedFor, setSelectedFor] = useState(filter);
  if (selectedFor !== filter) {
    setSelectedFor(filter);
    setSelected(new Set());
  }
  useEffect(
    () =>
      onChanged((id, change) => {
        // Events name an image job by its generation.
        const hit = pager
          .getState()
          .items.filter((j) => j.id === id || j.ref_id === id)
          .map((j) => j.id);
        if (change === "deleted") pager.getState().remove(hit);
        else void pager.getState().refresh();
      }),
    [pager],
  );

  const toggle = (id: string) =>
    setSelected((s) => {
      const n = new Set(s);
      if (n.has(id)) n.delete(id);
      else n.add(id);
      return n;
    });

  async function deleteSelected() {
    setConfirming(false);
    setDeleting(true);
    const ids = [...selected];
    const results = await Promise.allSettled(ids.map((id) => api.removeJob(id)));
    const gone = ids.filter((_, i) => results[i].status === "fulfilled");
    const records = pager
      .getState()
      .items.filter((j) => gone.includes(j.id) && j.ref_id)
      .map((j) => j.ref_id as string);
    pager.getState().remove(gone);
    generate.getState().forget(records);
    setSelected(new Set(ids.filter((id) => !gone.includes(id))));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) toasts.getState().error(failed.reason, `${ids.length - gone.length} of ${ids.length} could not be deleted`);
    else toasts.getState().push("info", `Deleted ${gone.length}`);
    setDeleting(false);
  }

  return (
    <div className="mx-auto max-w-[1600px] px-3 py-6 sm:px-5">
      <div className="mb-5 flex flex-wrap items-end gap-3">
        <div className="mr-auto">
          <h1 className="text-2xl font-semibold tracking-tight">My creations</h1>
          <p className="text-sm text-muted">Private unless you share them.</p>
        </div>
        <form
          role="search"
          className="w-48 sm:w-56"
          onSubmit={(e) => {
            e.preventDefault();
            setSearch(q.trim());
          }}
        >
          <Input type="search" aria-label="Search my prompts" placeholder="Search prompts…" value={q} onChange={(e) => setQ(e.target.value)} />
        </form>
        {kinds.length > 1 && (
          <div className="w-36">
            <Select aria-label="Filter by kind" value={kind} onChange={(e) => setKind(e.target.value)}>
              <option value="">All kinds</option>
              {kinds.map((k) => (
                <option key={k} value={k}>
                  {k}
                </option>
              ))}
            </Select>
          </div>
        )}
        <div className="w-44">
          <Select aria-label="Filter by model" value={model} onChange={(e) => setModel(e.target.value)}>
            <option value="">All models</option>
            {models.map((m) => (
              <option key={m.id} value={m.id}>
                {m.name}
              </option>
            ))}
          </Select>
        </div>
        {selected.size > 0 && (
          <>
            <Button variant="ghost" onClick={() => setSelected(new Set())}>
              Clear selection
            </Button>
            <Button variant="danger" disabled={deleting} onClick={() => setConfirming(true)} data-testid="bulk-delete">
              Delete {selected.size}
            </Button>
          </>
        )}
      </div>
      {!loaded ? (
        <GridSkeleton />
      ) : items.length === 0 ? (
        <div className="rounded-2xl border border-dashed border-line p-10 text-center text-muted">
          {search || model || kind ? "Nothing matches." : "Nothing here yet."}{" "}
          <Link to="/image" className="text-accent underline">
            Generate an image
          </Link>
        </div>
      ) : (
        <ul className={gridClass}>
          {items.map((j) => {
            const label = j.prompt ?? j.kind;
            const model = (j.params as { model?: string }).model;
            // An image opens in the image tool; other kinds on their own page.
            const to = j.kind === "image" && j.ref_id ? `/image?open=${j.ref_id}` : `/feed/${j.id}`;
            return (
              <li key={j.id} className={`group relative overflow-hidden rounded-xl border bg-surface ${selected.has(j.id) ? "border-accent" : "border-line"}`}>
                <Link to={to} className="block" aria-label={`Open: ${label}`}>
                  {j.outputs[0] ? <AssetMedia asset={j.outputs[0]} alt={label} thumbnail className="aspect-square w-full object-cover" /> : <div className="grid aspect-square place-items-center text-xs text-muted">{j.status}</div>}
                </Link>
                <label className="absolute left-2 top-2 flex h-7 w-7 cursor-pointer items-center justify-center rounded-md bg-black/60">
                  <input type="checkbox" aria-label={`Select: ${label}`} checked={selected.has(j.id)} onChange={() => toggle(j.id)} className="h-4 w-4 accent-[var(--color-accent)]" />
                </label>
                {j.is_public && <span className="absolute right-2 top-2 rounded bg-black/60 px-1.5 py-0.5 text-[10px] uppercase tracking-wide">Public</span>}
                <div className="px-2 py-1.5">
                  <p className="truncate text-xs text-neutral-300" title={label}>
                    {label}
                  </p>
                  <p className="text-[11px] text-muted">
                    {j.kind === "image" ? "" : `${j.kind} · `}
                    {model ? `${model} · ` : ""}
                    {timeAgo(j.created_at)}
                    {j.outputs.length > 1 ? ` · ${j.outputs.length} files` : ""}
                  </p>
                </div>
              </li>
            );
          })}
        </ul>
      )}
      {loaded && <MoreLoader pager={pager} />}
      {confirming && (
        <Confirm
          title={`Delete ${selected.size} item${selected.size > 1 ? "s" : ""}?`}
          body="Their files are removed for good, also from the gallery."
          confirm="Delete"
          onCancel={() => setConfirming(false)}
          onConfirm={() => void deleteSelected()}
        />
      )}
    </div>
  );
}
