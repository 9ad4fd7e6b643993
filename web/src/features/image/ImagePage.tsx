// /image (seed §4.4): prompt on top, the result on the left, settings on the right, recent
// generations along the bottom.

import { useEffect, useMemo, useRef, useState } from "react";
import { useStore } from "zustand";
import type { Generation } from "../../api/types";
import { api, events, generate, onChanged, toasts, use } from "../../app";
import { ImageActions } from "../../components/ImageActions";
import { LoraPicker } from "../../components/LoraPicker";
import { Button, Chip, ErrorNote, Field, FieldError, Input, Select, Skeleton, Spinner } from "../../components/ui";
import { Link, navigate, useLocation } from "../../lib/router";
import { createPager } from "../../stores/pager";
import { SCHEDULERS, isActive, type Job } from "../../stores/generate";

/** Fields the form shows errors next to; others go in the banner by the Generate button. */
const FIELDS = ["prompt", "negative_prompt", "model", "aspect_ratio", "style", "steps", "cfg_scale", "seed", "scheduler", "batch_size", "init_image", "strength"];

function useFieldError(field: string): string | null {
  return use(generate, (s) => (s.error?.field === field ? s.error.detail : null));
}

function PromptBox() {
  const prompt = use(generate, (s) => s.form.prompt);
  const negative = use(generate, (s) => s.form.negative);
  const submitting = use(generate, (s) => s.submitting);
  const promptError = useFieldError("prompt");
  const negativeError = useFieldError("negative_prompt");
  const [showNegative, setShowNegative] = useState(negative !== "");
  // A negative prompt that arrives (reuse, remix) opens its field.
  const [seenNegative, setSeenNegative] = useState(negative);
  if (negative !== seenNegative) {
    setSeenNegative(negative);
    if (negative) setShowNegative(true);
  }
  const g = generate.getState();
  return (
    <div className="rounded-2xl border border-line bg-surface p-3 focus-within:border-neutral-600">
      <label htmlFor="prompt" className="sr-only">
        Prompt
      </label>
      <textarea
        id="prompt"
        rows={3}
        value={prompt}
        placeholder="Describe an image… (Ctrl+Enter to generate)"
        aria-invalid={!!promptError}
        aria-describedby={promptError ? "prompt-error" : undefined}
        onChange={(e) => g.set({ prompt: e.target.value })}
        onKeyDown={(e) => {
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
            e.preventDefault();
            void generate.getState().submit();
          }
        }}
        className="w-full resize-y bg-transparent px-1 text-base leading-relaxed text-neutral-100 placeholder:text-neutral-500 focus:outline-none"
      />
      <FieldError id="prompt-error" className="px-1">
        {promptError}
      </FieldError>
      {showNegative && (
        <div className="mt-2 border-t border-line pt-2">
          <label htmlFor="negative" className="px-1 text-xs uppercase tracking-wide text-muted">
            Negative prompt
          </label>
          <textarea
            id="negative"
            rows={2}
            value={negative}
            placeholder="What to keep out of the image"
            aria-invalid={!!negativeError}
            onChange={(e) => g.set({ negative: e.target.value })}
            className="w-full resize-y bg-transparent px-1 text-sm text-neutral-200 placeholder:text-neutral-600 focus:outline-none"
          />
          <FieldError className="px-1">{negativeError}</FieldError>
        </div>
      )}
      <div className="mt-2 flex flex-wrap items-center gap-2">
        <Button variant="ghost" size="sm" aria-expanded={showNegative} onClick={() => setShowNegative((v) => !v)}>
          {showNegative ? "− Negative prompt" : "+ Negative prompt"}
        </Button>
        <div className="flex-1" />
        <span className="hidden text-xs text-muted sm:inline">Ctrl/⌘ + Enter</span>
        <Button variant="primary" size="md" disabled={submitting} onClick={() => void generate.getState().submit()} data-testid="generate">
          {submitting ? <Spinner /> : <span aria-hidden>✦</span>}
          Generate
        </Button>
      </div>
    </div>
  );
}

function SubmitError() {
  const error = use(generate, (s) => s.error);
  if (!error || (error.field && FIELDS.includes(error.field))) return null;
  return (
    <div role="alert" data-testid="generate-error" className={`rounded-xl border px-4 py-3 text-sm ${error.code === "insufficient-credits" ? "border-amber-800 bg-amber-950/60 text-amber-100" : "border-red-900 bg-red-950/50 text-red-200"}`}>
      {error.code === "insufficient-credits" ? <strong className="mr-1">Not enough credits.</strong> : null}
      {error.message}
      {error.code === "insufficient-credits" && (
        <Link to="/settings" className="ml-2 underline">
          See usage
        </Link>
      )}
    </div>
  );
}

function ModelField() {
  const models = use(generate, (s) => s.models);
  const model = use(generate, (s) => s.form.model);
  const loaded = use(generate, (s) => s.optionsLoaded);
  const error = useFieldError("model");
  if (!loaded) return <Skeleton className="h-16" />;
  return (
    <Field label="Model" error={error}>
      {(id, d) => (
        <Select id={id} aria-describedby={d} aria-invalid={!!error} value={model} onChange={(e) => generate.getState().selectModel(e.target.value)}>
          {models.map((m) => (
            <option key={m.id} value={m.id}>
              {m.name}
              {m.installed ? "" : " (downloads on first use)"}
            </option>
          ))}
        </Select>
      )}
    </Field>
  );
}

function AspectField() {
  const models = use(generate, (s) => s.models);
  const model = use(generate, (s) => s.form.model);
  const aspect = use(generate, (s) => s.form.aspect);
  const hasInit = use(generate, (s) => s.form.init !== null);
  const error = useFieldError("aspect_ratio");
  const sizes = models.find((m) => m.id === model)?.aspect_ratios ?? [];
  return (
    <div className="flex flex-col gap-1.5">
      <span className="text-xs font-medium uppercase tracking-wide text-muted">Aspect ratio</span>
      <div className="flex flex-wrap gap-1.5" role="group" aria-label="Aspect ratio">
        {hasInit && (
          <Chip active={aspect === "image"} onClick={() => generate.getState().set({ aspect: "image" })} title="The reference image's size">
            Image
          </Chip>
        )}
        {sizes.map((a) => (
          <Chip key={a.ratio} active={aspect === a.ratio} title={`${a.width}×${a.height}`} onClick={() => generate.getState().set({ aspect: a.ratio })}>
            {a.ratio}
          </Chip>
        ))}
      </div>
      <span className="text-xs text-muted">{sizes.find((a) => a.ratio === aspect) ? `${sizes.find((a) => a.ratio === aspect)!.width} × ${sizes.find((a) => a.ratio === aspect)!.height} px` : aspect === "image" ? "The reference image's size" : ""}</span>
      <FieldError>{error}</FieldError>
    </div>
  );
}

function StyleField() {
  const styles = use(generate, (s) => s.styles);
  const style = use(generate, (s) => s.form.style);
  const error = useFieldError("style");
  const current = styles.find((s) => s.id === style);
  return (
    <Field label="Style" error={error} hint={current && current.id !== "none" ? current.prompt.replace("{prompt}", "…") : undefined}>
      {(id, d) => (
        <Select id={id} aria-describedby={d} value={style} onChange={(e) => generate.getState().set({ style: e.target.value })}>
          {styles.map((s) => (
            <option key={s.id} value={s.id}>
              {s.name}
            </option>
          ))}
        </Select>
      )}
    </Field>
  );
}

function LoraField() {
  const loras = use(generate, (s) => s.loras);
  const chosen = use(generate, (s) => s.form.loras);
  const models = use(generate, (s) => s.models);
  const modelId = use(generate, (s) => s.form.model);
  const error = useFieldError("loras");
  const g = generate.getState();
  return <LoraPicker loras={loras} chosen={chosen} model={models.find((m) => m.id === modelId)} error={error} onAdd={g.addLora} onWeight={g.setLoraWeight} onRemove={g.removeLora} />;
}

function BatchField() {
  const batch = use(generate, (s) => s.form.batch);
  const error = useFieldError("batch_size");
  return (
    <div className="flex flex-col gap-1.5">
      <span className="text-xs font-medium uppercase tracking-wide text-muted">Images</span>
      <div className="flex gap-1.5" role="group" aria-label="Number of images">
        {[1, 2, 4].map((n) => (
          <Chip key={n} active={batch === n} onClick={() => generate.getState().set({ batch: n })}>
            {n}
          </Chip>
        ))}
      </div>
      <FieldError>{error}</FieldError>
    </div>
  );
}

function ReferenceField() {
  const init = use(generate, (s) => s.form.init);
  const strength = use(generate, (s) => s.form.strength);
  const uploading = use(generate, (s) => s.uploading);
  const initError = useFieldError("init_image");
  const strengthError = useFieldError("strength");
  const [over, setOver] = useState(false);
  const input = useRef<HTMLInputElement>(null);
  const take = (f: File | undefined) => {
    // A refused upload is kept in the store's error and shown by the Generate button.
    if (f) void generate.getState().uploadInit(f).catch(() => {});
  };
  return (
    <div className="flex flex-col gap-1.5">
      <span className="text-xs font-medium uppercase tracking-wide text-muted">Reference image</span>
      {init ? (
        <div className="flex items-center gap-3 rounded-lg border border-line bg-surface p-2">
          <img src={init.url} alt="Reference" className="pixelated h-14 w-14 rounded object-cover" />
          <div className="flex-1 text-xs text-muted">
            {init.width} × {init.height}
          </div>
          <Button size="sm" variant="ghost" onClick={() => generate.getState().set({ init: null, aspect: generate.getState().form.aspect === "image" ? "1:1" : generate.getState().form.aspect })}>
            Remove
          </Button>
        </div>
      ) : (
        <div
          onDragOver={(e) => {
            e.preventDefault();
            setOver(true);
          }}
          onDragLeave={() => setOver(false)}
          onDrop={(e) => {
            e.preventDefault();
            setOver(false);
            take(e.dataTransfer.files[0]);
          }}
          className={`flex flex-col items-center gap-2 rounded-lg border border-dashed p-4 text-center text-sm ${over ? "border-accent bg-accent/10" : "border-line"}`}
        >
          <span className="text-muted">Drop an image here for image-to-image</span>
          <Button size="sm" onClick={() => input.current?.click()} disabled={uploading}>
            {uploading && <Spinner />}
            Upload…
          </Button>
          <input
            ref={input}
            type="file"
            accept="image/png,image/jpeg,image/webp"
            className="sr-only"
            aria-label="Upload a reference image"
            data-testid="reference-input"
            onChange={(e) => {
              take(e.target.files?.[0]);
              e.target.value = "";
            }}
          />
        </div>
      )}
      <FieldError>{initError}</FieldError>
      {init && (
        <Field label={`Strength ${Math.round(strength * 100)}%`} error={strengthError} hint="How far the result may move from the reference.">
          {(id) => (
            <input
              id={id}
              type="range"
              min={0}
              max={1}
              step={0.05}
              value={strength}
              onChange={(e) => generate.getState().set({ strength: Number(e.target.value) })}
              className="accent-[var(--color-accent)]"
            />
          )}
        </Field>
      )}
    </div>
  );
}

function AdvancedFields() {
  const f = use(generate, (s) => s.form);
  const errSteps = useFieldError("steps");
  const errCfg = useFieldError("cfg_scale");
  const errSeed = useFieldError("seed");
  const errScheduler = useFieldError("scheduler");
  const anyError = !!(errSteps || errCfg || errSeed || errScheduler);
  const [open, setOpen] = useState(false);
  const g = generate.getState();
  return (
    <details open={open || anyError} onToggle={(e) => setOpen((e.target as HTMLDetailsElement).open)} className="rounded-lg border border-line">
      <summary className="cursor-pointer select-none px-3 py-2 text-sm text-neutral-300">Advanced</summary>
      <div className="grid grid-cols-2 gap-3 p-3 pt-1">
        <Field label="Steps" error={errSteps}>
          {(id, d) => <Input id={id} aria-describedby={d} aria-invalid={!!errSteps} inputMode="numeric" value={f.steps} placeholder="default" onChange={(e) => g.set({ steps: e.target.value })} />}
        </Field>
        <Field label="CFG" error={errCfg}>
          {(id, d) => <Input id={id} aria-describedby={d} aria-invalid={!!errCfg} inputMode="decimal" value={f.cfg} placeholder="default" onChange={(e) => g.set({ cfg: e.target.value })} />}
        </Field>
        <Field label="Seed" error={errSeed} className="col-span-2">
          {(id, d) => (
            <div className="flex gap-2">
              <Input id={id} aria-describedby={d} aria-invalid={!!errSeed} inputMode="numeric" value={f.seed} placeholder="random" onChange={(e) => g.set({ seed: e.target.value })} />
              <Button aria-label="Random seed" title="Random seed" onClick={() => g.randomizeSeed()}>
                🎲
              </Button>
              {f.seed !== "" && (
                <Button variant="ghost" title="Random each time" onClick={() => g.set({ seed: "" })}>
                  Clear
                </Button>
              )}
            </div>
          )}
        </Field>
        <Field label="Scheduler" error={errScheduler} className="col-span-2">
          {(id, d) => (
            <Select id={id} aria-describedby={d} value={f.scheduler} onChange={(e) => g.set({ scheduler: e.target.value })}>
              <option value="">Model default</option>
              {SCHEDULERS.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </Select>
          )}
        </Field>
      </div>
    </details>
  );
}

function RemixBanner() {
  const remixOf = use(generate, (s) => s.form.remixOf);
  if (!remixOf) return null;
  return (
    <div className="flex items-center gap-3 rounded-xl border border-accent/40 bg-accent/10 px-4 py-2 text-sm" data-testid="remix-banner">
      <span className="flex-1">
        Remixing{" "}
        <Link to={`/feed/${remixOf}`} className="underline">
          a gallery image
        </Link>
        : its parameters are filled in; change what you like.
      </span>
      <Button size="sm" variant="ghost" onClick={() => generate.getState().set({ remixOf: null })}>
        Start fresh
      </Button>
    </div>
  );
}

function Progress({ job }: { job: Job }) {
  const { step, total } = job.progress;
  const pct = total > 0 ? Math.round((100 * step) / total) : 0;
  const queued = job.status === "pending";
  return (
    <div className="flex flex-col items-center gap-4" data-testid="job-progress">
      <div className="relative grid aspect-square w-full max-w-[32rem] place-items-center overflow-hidden rounded-2xl border border-line bg-surface">
        {job.preview ? (
          <img src={job.preview} alt="Preview of the image being made" data-testid="job-preview" className="pixelated h-full w-full object-contain" />
        ) : (
          <div className="h-full w-full animate-pulse bg-gradient-to-br from-neutral-900 to-neutral-800" />
        )}
      </div>
      <div className="w-full max-w-[32rem]">
        <div className="mb-1 flex justify-between text-sm">
          <span data-testid="job-status">
            {queued
              ? job.queue_position
                ? `Queued · ${job.queue_position} ahead`
                : "Queued"
              : total > 0
                ? `Step ${step} / ${total}`
                : "Starting…"}
          </span>
          <span className="text-muted">{job.estimated_time ? `~${Math.round(job.estimated_time)} s` : ""}</span>
        </div>
        <div className="h-1.5 overflow-hidden rounded-full bg-neutral-800" role="progressbar" aria-valuemin={0} aria-valuemax={total || 1} aria-valuenow={step} aria-label="Progress">
          <div className="brand-gradient h-full transition-all" style={{ width: `${pct}%` }} />
        </div>
        <div className="mt-3 flex justify-center">
          <Button size="sm" onClick={() => generate.getState().cancel(job.id).catch((e) => toasts.getState().error(e, "Cannot cancel"))}>
            Cancel
          </Button>
        </div>
      </div>
    </div>
  );
}

function JobView({ job }: { job: Job }) {
  if (isActive(job)) return <Progress job={job} />;
  if (job.status === "failed")
    return <ErrorNote error={{ message: `This generation failed: ${job.error?.message ?? "unknown error"} (${job.error?.code ?? "?"}). Its credits were refunded.` }} />;
  if (job.status === "cancelled") return <p className="rounded-xl border border-line p-4 text-sm text-muted">Cancelled; its credits were refunded.</p>;
  const cols = job.images.length > 1 ? "grid-cols-2" : "grid-cols-1";
  return (
    <div className="flex flex-col gap-3" data-testid="job-result">
      <div className={`grid ${cols} gap-3`}>
        {job.images.map((img) => (
          <figure key={img.id} className="group relative overflow-hidden rounded-2xl border border-line bg-surface">
            <img src={img.url} alt={job.prompt} width={img.width} height={img.height} className="pixelated aspect-square w-full object-contain" data-testid="result-image" />
            <figcaption className="flex items-center justify-between px-3 py-2 text-xs text-muted">
              <span>
                {img.width}×{img.height} · seed {img.seed}
              </span>
              <a href={`${img.url}?download=1`} download className="rounded px-2 py-1 text-neutral-200 hover:bg-neutral-800" data-testid="download">
                Download
              </a>
            </figcaption>
          </figure>
        ))}
      </div>
      <ImageActions
        generation={job}
        onReuse={() => generate.getState().reuse(job)}
        onTogglePublic={(v) => generate.getState().setPublic(job.id, v)}
        onDelete={() => generate.getState().remove(job.id)}
      />
    </div>
  );
}

function Current() {
  const selected = use(generate, (s) => (s.selected ? s.jobs[s.selected] : null));
  if (!selected)
    return (
      <div className="grid aspect-square w-full max-w-[32rem] place-items-center self-center rounded-2xl border border-dashed border-line text-center text-sm text-muted">
        <p className="px-8">Your images appear here. Write a prompt and press Generate.</p>
      </div>
    );
  return <JobView job={selected} />;
}

function Recent() {
  const pager = useMemo(() => createPager<Generation>((cursor) => api.generations({ cursor, limit: 16 })), []);
  const items = useStore(pager, (s) => s.items);
  const loaded = useStore(pager, (s) => s.loaded);
  const error = useStore(pager, (s) => s.error);
  const selected = use(generate, (s) => s.selected);
  const jobs = use(generate, (s) => s.jobs);
  useEffect(() => {
    void pager.getState().reset();
    return onChanged((id, change) => {
        if (change === "deleted") pager.getState().remove([id]);
        else void pager.getState().refresh();
      });
  }, [pager]);
  // Coming back to the page shows the latest generation rather than an empty frame.
  useEffect(() => {
    if (loaded && items[0] && generate.getState().selected === null) generate.getState().open(items[0]);
  }, [loaded, items]);
  return (
    <section aria-label="Recent generations" className="border-t border-line pt-4">
      <div className="mb-2 flex items-center justify-between">
        <h2 className="text-sm font-medium text-neutral-300">Recent generations</h2>
        <Link to="/app" className="text-xs text-muted hover:text-white">
          See all →
        </Link>
      </div>
      {error && <ErrorNote error={error} onRetry={() => void pager.getState().reset()} />}
      <div className="flex gap-2 overflow-x-auto pb-2" data-testid="recent">
        {!loaded && Array.from({ length: 6 }, (_, i) => <Skeleton key={i} className="h-20 w-20 shrink-0" />)}
        {loaded && items.length === 0 && !error && <p className="text-sm text-muted">Nothing yet.</p>}
        {items.map((g) => (
          <button
            key={g.id}
            type="button"
            onClick={() => generate.getState().open(jobs[g.id] ?? g)}
            aria-label={`Open: ${g.prompt}`}
            aria-current={selected === g.id}
            className={`h-20 w-20 shrink-0 overflow-hidden rounded-lg border ${selected === g.id ? "border-accent" : "border-line"} bg-surface`}
          >
            {g.images[0] ? (
              <img src={g.images[0].thumbnail_url} alt="" className="pixelated h-full w-full object-cover" loading="lazy" />
            ) : (
              <span className="grid h-full place-items-center text-[10px] text-muted">{g.status}</span>
            )}
          </button>
        ))}
      </div>
    </section>
  );
}

function Settings() {
  const optionsError = use(generate, (s) => s.optionsError);
  return (
    <aside aria-label="Settings" className="flex flex-col gap-4 rounded-2xl border border-line bg-neutral-950 p-4 lg:sticky lg:top-20">
      {optionsError && <ErrorNote error={optionsError} onRetry={() => void generate.getState().loadOptions()} />}
      <ModelField />
      <AspectField />
      <StyleField />
      <LoraField />
      <BatchField />
      <ReferenceField />
      <AdvancedFields />
    </aside>
  );
}

export default function ImagePage() {
  const { query } = useLocation();
  const remix = query.get("remix");
  const reuse = query.get("reuse");
  const openId = query.get("open");
  const lora = query.get("lora");
  useEffect(() => {
    const g = generate.getState();
    void (async () => {
      // A LoRA to start with (from /train: one just trained, so the lists are read again).
      if (!g.optionsLoaded || g.optionsError || lora) await g.loadOptions();
      if (lora) {
        if (generate.getState().loras.some((l) => l.id === lora)) g.addLora(lora);
        navigate("/image", { replace: true });
      }
      try {
        if (remix) g.prefillRemix(await api.feedItem(remix));
        else if (reuse) {
          const item = await api.generation(reuse);
          g.reuse(item);
          g.open(item);
        } else if (openId) g.open(await api.generation(openId));
      } catch (e) {
        toasts.getState().error(e, "Cannot open that image");
      }
      if (remix || reuse || openId) navigate("/image", { replace: true });
    })();
  }, [remix, reuse, openId, lora]);
  const history = use(generate, (s) => s.order);
  const live = use(events, (s) => s.status);
  const running = use(generate, (s) => Object.values(s.jobs).some(isActive));
  // Without the event stream, running jobs are polled so the page never goes stale.
  useEffect(() => {
    if (live === "open" || !running) return;
    const t = setInterval(() => void generate.getState().resync(), 2000);
    return () => clearInterval(t);
  }, [live, running]);
  return (
    <div className="mx-auto flex max-w-[1400px] flex-col gap-5 px-3 py-5 sm:px-5">
      <h1 className="sr-only">Image generation</h1>
      <RemixBanner />
      <PromptBox />
      <SubmitError />
      {running && live !== "open" && (
        <p role="status" className="rounded-lg border border-line bg-surface px-3 py-2 text-sm text-muted" data-testid="live-status">
          Live updates are reconnecting; progress is checked every 2 s meanwhile.
        </p>
      )}
      <div className="grid gap-5 lg:grid-cols-[minmax(0,1fr)_22rem]">
        <section aria-label="Result" className="flex min-w-0 flex-col gap-4">
          <Current />
          {history.length > 1 && <SessionStrip />}
        </section>
        <Settings />
      </div>
      <Recent />
    </div>
  );
}

/** The jobs started on this page, to flip between while others still run. */
function SessionStrip() {
  const order = use(generate, (s) => s.order);
  const jobs = use(generate, (s) => s.jobs);
  const selected = use(generate, (s) => s.selected);
  return (
    <div className="flex gap-2 overflow-x-auto" aria-label="This session">
      {order.map((id) => {
        const j = jobs[id];
        if (!j) return null;
        return (
          <button
            key={id}
            type="button"
            onClick={() => generate.getState().select(id)}
            aria-current={selected === id}
            aria-label={`Show: ${j.prompt} (${j.status})`}
            className={`relative h-14 w-14 shrink-0 overflow-hidden rounded-lg border ${selected === id ? "border-accent" : "border-line"}`}
          >
            {j.images[0] ? (
              <img src={j.images[0].thumbnail_url} alt="" className="pixelated h-full w-full object-cover" />
            ) : j.preview ? (
              <img src={j.preview} alt="" className="pixelated h-full w-full object-cover opacity-70" />
            ) : (
              <span className="grid h-full place-items-center text-[10px] text-muted">{j.status}</span>
            )}
          </button>
        );
      })}
    </div>
  );
}
