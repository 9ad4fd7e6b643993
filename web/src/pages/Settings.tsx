// /settings: profile, API keys (shown once at creation), usage and credits.

import { useState } from "react";
import { asApiError, type ApiError } from "../api/client";
import type { ApiKey, Profile } from "../api/types";
import { api, session, toasts } from "../app";
import { Button, Confirm, ErrorNote, Field, FieldError, Input, Skeleton, Spinner, Textarea } from "../components/ui";
import { day, timeAgo } from "../lib/format";
import { useLoad } from "../lib/load";

function Section({ title, children, id }: { title: string; children: React.ReactNode; id: string }) {
  return (
    <section aria-labelledby={id} className="rounded-2xl border border-line bg-surface p-5">
      <h2 id={id} className="mb-4 text-lg font-semibold">
        {title}
      </h2>
      {children}
    </section>
  );
}

function ProfileForm() {
  const loaded = useLoad(() => api.profile());
  if (loaded.error) return <ErrorNote error={loaded.error} onRetry={loaded.reload} />;
  if (!loaded.data) return <Skeleton className="h-48" />;
  return <ProfileFields initial={loaded.data} />;
}

function ProfileFields({ initial }: { initial: Profile }) {
  const [p, setP] = useState(initial);
  const [form, setForm] = useState({ name: initial.name, handle: initial.handle, bio: initial.bio });
  const [error, setError] = useState<ApiError | null>(null);
  const [saving, setSaving] = useState(false);
  const err = (f: string) => (error?.field === f ? error.detail : null);
  return (
    <form
      className="grid gap-4 sm:grid-cols-2"
      onSubmit={async (e) => {
        e.preventDefault();
        setSaving(true);
        setError(null);
        try {
          const x = await api.updateProfile(form);
          setP(x);
          toasts.getState().push("info", "Profile saved");
          // The header's name and handle follow; a failure here is not a failed save.
          session
            .getState()
            .refreshUser()
            .catch((e) => toasts.getState().error(e, "Saved, but the header could not be updated"));
        } catch (ex) {
          setError(asApiError(ex));
        } finally {
          setSaving(false);
        }
      }}
    >
      <Field label="Name" error={err("name")}>
        {(id, d) => <Input id={id} aria-describedby={d} aria-invalid={!!err("name")} value={form.name} onChange={(e) => setForm({ ...form, name: e.target.value })} />}
      </Field>
      <Field label="Handle" error={err("handle")} hint="Your public address: /profile/handle">
        {(id, d) => <Input id={id} aria-describedby={d} aria-invalid={!!err("handle")} value={form.handle} onChange={(e) => setForm({ ...form, handle: e.target.value })} />}
      </Field>
      <Field label="Bio" error={err("bio")} className="sm:col-span-2">
        {(id, d) => <Textarea id={id} aria-describedby={d} aria-invalid={!!err("bio")} rows={3} value={form.bio} onChange={(e) => setForm({ ...form, bio: e.target.value })} />}
      </Field>
      {error && !["name", "handle", "bio"].includes(error.field ?? "") && (
        <div className="sm:col-span-2">
          <ErrorNote error={error} />
        </div>
      )}
      <div className="flex items-center gap-3 sm:col-span-2">
        <Button type="submit" variant="primary" disabled={saving}>
          {saving && <Spinner />}
          Save profile
        </Button>
        <span className="text-xs text-muted">{p.email}</span>
      </div>
    </form>
  );
}

function ApiKeys() {
  const loaded = useLoad(() => api.apiKeys().then((r) => r.items));
  const [keys, loadError, load] = [loaded.data, loaded.error, loaded.reload];
  const [name, setName] = useState("");
  const [error, setError] = useState<ApiError | null>(null);
  const [created, setCreated] = useState<ApiKey | null>(null);
  const [copied, setCopied] = useState(false);
  const [revoking, setRevoking] = useState<ApiKey | null>(null);
  const [creating, setCreating] = useState(false);
  return (
    <div className="flex flex-col gap-4">
      <p className="text-sm text-muted">
        For scripts and other apps: send <code className="rounded bg-neutral-800 px-1">Authorization: Bearer &lt;key&gt;</code>. A key acts as you.
      </p>
      <form
        className="flex flex-wrap items-start gap-2"
        onSubmit={async (e) => {
          e.preventDefault();
          if (creating) return;
          setCreating(true);
          setError(null);
          try {
            const k = await api.createApiKey(name);
            setCreated(k);
            setCopied(false);
            setName("");
            load();
          } catch (ex) {
            setError(asApiError(ex));
          } finally {
            setCreating(false);
          }
        }}
      >
        <div className="min-w-56 flex-1">
          <Input aria-label="Key name" placeholder="Key name, e.g. my-script" value={name} onChange={(e) => setName(e.target.value)} aria-invalid={!!error} />
          <FieldError className="mt-1">{error?.detail}</FieldError>
        </div>
        <Button type="submit" disabled={creating}>
          Create key
        </Button>
      </form>
      {created?.key && (
        <div className="rounded-xl border border-emerald-800 bg-emerald-950/40 p-4" data-testid="new-key">
          <p className="mb-2 text-sm text-emerald-200">Copy this key now: it is not shown again.</p>
          <div className="flex gap-2">
            <code className="flex-1 overflow-x-auto rounded bg-neutral-900 px-3 py-2 text-sm" data-testid="new-key-value">
              {created.key}
            </code>
            <Button
              onClick={async () => {
                try {
                  await navigator.clipboard.writeText(created.key!);
                  setCopied(true);
                } catch (e) {
                  toasts.getState().error(e, "Cannot copy; select the key and copy it by hand");
                }
              }}
            >
              {copied ? "Copied" : "Copy"}
            </Button>
            <Button variant="ghost" onClick={() => setCreated(null)}>
              Done
            </Button>
          </div>
        </div>
      )}
      {loadError ? (
        <ErrorNote error={loadError} onRetry={load} />
      ) : !keys ? (
        <Skeleton className="h-16" />
      ) : keys.length === 0 ? (
        <p className="text-sm text-muted">No keys yet.</p>
      ) : (
        <ul className="divide-y divide-line rounded-xl border border-line" data-testid="api-keys">
          {keys.map((k) => (
            <li key={k.id} className="flex items-center gap-3 px-4 py-3 text-sm">
              <span className="flex-1">
                <span className="font-medium">{k.name}</span> <code className="text-muted">{k.prefix}…</code>
              </span>
              <span className="text-xs text-muted">{timeAgo(k.created_at)}</span>
              <Button size="sm" variant="ghost" onClick={() => setRevoking(k)}>
                Revoke
              </Button>
            </li>
          ))}
        </ul>
      )}
      {revoking && (
        <Confirm
          title={`Revoke “${revoking.name}”?`}
          body="Anything using this key stops working at once."
          confirm="Revoke"
          onCancel={() => setRevoking(null)}
          onConfirm={async () => {
            const k = revoking;
            setRevoking(null);
            try {
              await api.revokeApiKey(k.id);
              loaded.update((ks) => ks.filter((x) => x.id !== k.id));
            } catch (e) {
              toasts.getState().error(e, "Cannot revoke");
            }
          }}
        />
      )}
    </div>
  );
}

/** Seconds as "2 min 5 s" (or "0 s"). */
function minutes(seconds: number): string {
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function UsagePanel() {
  const { data: u, error, reload } = useLoad(() => api.usage());
  if (error) return <ErrorNote error={error} onRetry={reload} />;
  if (!u) return <Skeleton className="h-40" />;
  const max = Math.max(1, ...u.history.map((h) => h.credits_used));
  // Today began a day before the next top-up.
  const liveToday = u.history.find((h) => h.day === u.resets_at - 86_400)?.live_seconds ?? 0;
  return (
    <div className="flex flex-col gap-5">
      <div className="grid grid-cols-2 gap-3 sm:grid-cols-4">
        {[
          ["Credits left", u.credits_remaining],
          ["Daily allowance", u.daily_allowance],
          ["Used today", u.credits_used_today],
          ["Plan", u.tier],
        ].map(([k, v]) => (
          <div key={k} className="rounded-xl border border-line bg-neutral-950 p-3">
            <div className="text-xs text-muted">{k}</div>
            <div className="text-xl font-semibold" data-testid={`usage-${String(k).toLowerCase().replace(/ /g, "-")}`}>
              {v}
            </div>
          </div>
        ))}
      </div>
      <p className="text-xs text-muted">
        One credit per image per started megapixel
        {u.live_credits_per_minute > 0 ? `; the live canvas ${u.live_credits_per_minute} per minute of rendering` : "; the live canvas is free"}. Topped up to the allowance daily; next top-up{" "}
        {new Date(u.resets_at * 1000).toLocaleString()}.
      </p>
      <p className="text-sm text-neutral-300" data-testid="usage-live">
        Live canvas today: {minutes(liveToday)} of rendering.
      </p>
      <div>
        <h3 className="mb-2 text-sm text-neutral-300">Last 30 days</h3>
        {u.history.length === 0 ? (
          <p className="text-sm text-muted">No use yet.</p>
        ) : (
          <ol className="flex h-32 max-w-2xl gap-1" aria-label="Credits used per day">
            {u.history.map((h) => (
              <li key={h.day} className="flex min-w-0 flex-1 flex-col items-center gap-1" title={`${day(h.day)}: ${h.credits_used} credits, ${h.generations} generations, ${minutes(h.live_seconds)} on the live canvas`}>
                <span className="text-[10px] text-neutral-300">{h.credits_used}</span>
                <div className="flex w-full flex-1 items-end justify-center">
                  <div className="brand-gradient w-full max-w-8 rounded-t" style={{ height: `${Math.max(4, (100 * Math.max(0, h.credits_used)) / max)}%` }} />
                </div>
                <span className="truncate text-[10px] text-muted">{day(h.day)}</span>
              </li>
            ))}
          </ol>
        )}
      </div>
    </div>
  );
}

export default function Settings() {
  return (
    <div className="mx-auto flex max-w-4xl flex-col gap-5 px-3 py-6 sm:px-5">
      <h1 className="text-2xl font-semibold tracking-tight">Settings</h1>
      <Section title="Profile" id="profile">
        <ProfileForm />
      </Section>
      <Section title="Usage and credits" id="usage">
        <UsagePanel />
      </Section>
      <Section title="API keys" id="keys">
        <ApiKeys />
      </Section>
    </div>
  );
}
