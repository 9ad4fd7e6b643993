// /train: a LoRA trained from your own images. Name it, say what it is (a person, a
// product, a style, an object: each sets the rank, steps and learning rate) and its trigger
// word, drop up to 50 images (each is captioned automatically where a captioning model is
// installed; every caption can be edited), and start. Then watch it learn: the loss per step
// with its moving average, the sample images made every few steps with a fixed prompt and
// seed, the step and the time left. Cancel it, resume it from its last checkpoint, and once
// done use the LoRA in /image or download it (a kohya .safetensors that A1111 and ComfyUI
// load). Your trainings are listed on the left (`?id=` opens one).

import { useEffect, useEffectEvent, useMemo, useState } from "react";
import { asApiError, type ApiError } from "../../api/client";
import type { Job, Model, Preset, Training } from "../../api/types";
import { api, jobs, use } from "../../app";
import { Button, Chip, ErrorNote, Input, Select, Spinner, Textarea } from "../../components/ui";
import { useLoad } from "../../lib/load";
import { Link, navigate, useLocation } from "../../lib/router";
import { ema, etaText, lossPath } from "./chart";

const MAX_IMAGES = 50;
const PRESETS: { id: Preset; label: string; hint: string; steps: number; rank: number; text: boolean }[] = [
  { id: "person", label: "Person", hint: "A face and build; backgrounds left out where a background-removal model is installed", steps: 1200, rank: 16, text: true },
  { id: "product", label: "Product", hint: "Its shape, colours and labels", steps: 1000, rank: 16, text: true },
  { id: "style", label: "Style", hint: "A palette, a medium, brushwork", steps: 1500, rank: 32, text: false },
  { id: "object", label: "Object", hint: "A thing or a creature", steps: 800, rank: 8, text: false },
];

/** An image of the training set as it is being prepared. */
interface Shot {
  id: string;
  url: string;
  caption: string;
  /** A caption is being written by the captioning model. */
  captioning: boolean;
}

const ENDED = ["completed", "failed", "cancelled"];

/** Captions `image` with the server's captioning model: the text, once the job is done. */
async function captionOf(image: string): Promise<string> {
  let job = await api.caption(image);
  for (let i = 0; i < 600 && !ENDED.includes(job.status); i++) {
    await new Promise((r) => setTimeout(r, 400));
    job = await api.captionJob(job.id);
  }
  const out = job.outputs[0];
  if (job.status !== "completed" || !out) throw new Error(job.error?.message ?? "captioning failed");
  return (await api.captionText(out.url)).trim();
}

function NewTraining({ onStarted }: { onStarted: (job: Job) => void }) {
  const models = useLoad(() => api.models("txt2img").then((r) => r.models.filter((m) => m.installed)));
  const captioners = useLoad(() => api.models("caption").then((r) => r.models.filter((m) => m.installed)));
  const [name, setName] = useState("");
  const [preset, setPreset] = useState<Preset>("style");
  const [trigger, setTrigger] = useState("");
  const [model, setModel] = useState("");
  const [shots, setShots] = useState<Shot[]>([]);
  const [uploading, setUploading] = useState(0);
  const [advanced, setAdvanced] = useState(false);
  const [steps, setSteps] = useState("");
  const [rank, setRank] = useState("");
  const [lr, setLr] = useState("");
  const [resolution, setResolution] = useState("");
  const [samplePrompt, setSamplePrompt] = useState("");
  // null: the preset's choice.
  const [textEncoder, setTextEncoder] = useState<boolean | null>(null);
  const [conv, setConv] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [starting, setStarting] = useState(false);
  const offered: Model[] = models.data ?? [];
  const chosen = model || offered[0]?.id || "";
  const canCaption = (captioners.data ?? []).length > 0;
  const p = PRESETS.find((x) => x.id === preset)!;

  async function add(files: File[]) {
    setError(null);
    const take = files.filter((f) => f.type.startsWith("image/")).slice(0, MAX_IMAGES);
    setUploading((n) => n + take.length);
    for (const f of take) {
      try {
        const a = await api.upload(f);
        // At most 50, however many drops came at once (a caption for one left out
        // changes nothing).
        setShots((s) => (s.length < MAX_IMAGES ? [...s, { id: a.id, url: a.url, caption: "", captioning: canCaption }] : s));
        if (canCaption) {
          captionOf(a.id).then(
            (text) => setShots((s) => s.map((x) => (x.id === a.id ? { ...x, caption: x.caption || text, captioning: false } : x))),
            () => setShots((s) => s.map((x) => (x.id === a.id ? { ...x, captioning: false } : x))),
          );
        }
      } catch (e) {
        setError(asApiError(e));
      } finally {
        setUploading((n) => n - 1);
      }
    }
  }

  async function start() {
    setError(null);
    setStarting(true);
    const num = (v: string) => (v.trim() === "" ? undefined : Number(v));
    try {
      onStarted(
        await api.train({
          name: name.trim(),
          preset,
          trigger: trigger.trim() || undefined,
          model: chosen || undefined,
          images: shots.map((s) => ({ id: s.id, caption: s.caption.trim() })),
          steps: num(steps),
          rank: num(rank),
          learning_rate: num(lr),
          resolution: num(resolution),
          sample_prompt: samplePrompt.trim() || undefined,
          train_text_encoder: textEncoder ?? undefined,
          train_conv_layers: conv || undefined,
        }),
      );
    } catch (e) {
      setError(asApiError(e));
    } finally {
      setStarting(false);
    }
  }

  const busy = uploading > 0 || shots.some((s) => s.captioning);
  return (
    <div className="flex flex-col gap-5" data-testid="train-new">
      <div className="grid gap-4 sm:grid-cols-2">
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Name</span>
          <Input value={name} maxLength={100} onChange={(e) => setName(e.target.value)} placeholder="My style" aria-label="Name" />
        </label>
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Trigger word</span>
          <Input value={trigger} maxLength={50} onChange={(e) => setTrigger(e.target.value)} placeholder="zkx" aria-label="Trigger word" />
        </label>
      </div>
      <div className="flex flex-col gap-1.5">
        <span className="text-xs font-medium uppercase tracking-wide text-muted">What it learns</span>
        <div className="flex flex-wrap gap-1.5" role="group" aria-label="What it learns">
          {PRESETS.map((x) => (
            <Chip key={x.id} active={preset === x.id} onClick={() => setPreset(x.id)}>
              {x.label}
            </Chip>
          ))}
        </div>
        <span className="text-xs text-muted">
          {p.hint}. {p.steps} steps, rank {p.rank}.
        </span>
      </div>
      <label className="flex flex-col gap-1.5">
        <span className="text-xs font-medium uppercase tracking-wide text-muted">Base model</span>
        {models.error ? (
          <ErrorNote error={models.error} onRetry={models.reload} />
        ) : (
          <Select value={chosen} onChange={(e) => setModel(e.target.value)} aria-label="Base model">
            {offered.length === 0 && <option value="">No image model installed</option>}
            {offered.map((m) => (
              <option key={m.id} value={m.id}>
                {m.name}
                {m.family ? ` (${m.family})` : ""}
              </option>
            ))}
          </Select>
        )}
      </label>
      <label
        className="flex cursor-pointer flex-col items-center justify-center gap-2 rounded-2xl border border-dashed border-line p-6 text-center text-sm text-muted hover:border-neutral-500"
        onDragOver={(e) => e.preventDefault()}
        onDrop={(e) => {
          e.preventDefault();
          void add(Array.from(e.dataTransfer.files));
        }}
        data-testid="train-drop"
      >
        {uploading > 0 && <Spinner />}
        <span>
          Drop images here, or choose them ({shots.length} of {MAX_IMAGES})
        </span>
        <input
          type="file"
          accept="image/*"
          multiple
          className="sr-only"
          aria-label="Training images"
          onChange={(e) => {
            void add(Array.from(e.target.files ?? []));
            e.target.value = "";
          }}
        />
      </label>
      {shots.length > 0 && (
        <ul className="grid grid-cols-2 gap-3 sm:grid-cols-3 lg:grid-cols-4" aria-label="Images to train on" data-testid="train-images">
          {shots.map((s, i) => (
            <li key={s.id} className="flex flex-col gap-2 rounded-xl border border-line p-2">
              <div className="relative">
                <img src={s.url} alt={`Training image ${i + 1}`} className="pixelated aspect-square w-full rounded-lg bg-neutral-900 object-cover" />
                <button
                  type="button"
                  className="absolute right-1 top-1 h-7 w-7 rounded-full bg-neutral-950/80 text-sm text-white"
                  aria-label={`Remove training image ${i + 1}`}
                  onClick={() => setShots((all) => all.filter((x) => x.id !== s.id))}
                >
                  ×
                </button>
              </div>
              <Textarea
                rows={2}
                value={s.caption}
                maxLength={1000}
                placeholder={s.captioning ? "Captioning…" : "What it shows"}
                aria-label={`Caption ${i + 1}`}
                onChange={(e) => setShots((all) => all.map((x) => (x.id === s.id ? { ...x, caption: e.target.value } : x)))}
              />
            </li>
          ))}
        </ul>
      )}
      {!canCaption && shots.length > 0 && <p className="text-xs text-muted">No captioning model is installed: write a caption for each image, or leave them empty to train on the trigger word alone.</p>}
      <div>
        <button type="button" className="text-sm text-muted underline" onClick={() => setAdvanced((a) => !a)} aria-expanded={advanced}>
          Advanced settings
        </button>
      </div>
      {advanced && (
        <div className="grid gap-4 rounded-xl border border-line p-3 sm:grid-cols-2" data-testid="train-advanced">
          {(
            [
              ["Steps", steps, setSteps, String(p.steps)],
              ["Rank", rank, setRank, String(p.rank)],
              ["Learning rate", lr, setLr, "0.0001"],
              ["Resolution", resolution, setResolution, "the model's own"],
            ] as const
          ).map(([label, value, set, placeholder]) => (
            <label key={label} className="flex flex-col gap-1.5">
              <span className="text-xs font-medium uppercase tracking-wide text-muted">{label}</span>
              <Input inputMode="decimal" value={value} onChange={(e) => set(e.target.value)} placeholder={placeholder} aria-label={label} />
            </label>
          ))}
          <label className="flex items-center gap-2 text-sm text-neutral-300 sm:col-span-2">
            <input type="checkbox" checked={textEncoder ?? p.text} onChange={(e) => setTextEncoder(e.target.checked)} data-testid="train-text-encoder" />
            Train the text encoder too (SD 1.x and 2.x)
          </label>
          <label className="flex items-center gap-2 text-sm text-neutral-300 sm:col-span-2">
            <input type="checkbox" checked={conv} onChange={(e) => setConv(e.target.checked)} data-testid="train-conv" />
            Train the convolutions too (LoCon: more texture, a larger file)
          </label>
          <label className="flex flex-col gap-1.5 sm:col-span-2">
            <span className="text-xs font-medium uppercase tracking-wide text-muted">Sample prompt</span>
            <Input value={samplePrompt} maxLength={1000} onChange={(e) => setSamplePrompt(e.target.value)} placeholder="The trigger word alone" aria-label="Sample prompt" />
          </label>
        </div>
      )}
      <div className="flex items-center gap-3">
        <Button variant="primary" size="lg" disabled={!name.trim() || shots.length === 0 || !chosen || busy || starting} onClick={start} data-testid="train-start">
          {starting && <Spinner />}
          Start training
        </Button>
        {busy && <span className="text-sm text-muted">{uploading > 0 ? "Uploading…" : "Writing captions…"}</span>}
      </div>
      {error && <ErrorNote error={error} />}
    </div>
  );
}

/** The loss per step (faint) and its moving average, as an SVG. */
function LossChart({ losses }: { losses: number[] }) {
  const smooth = useMemo(() => ema(losses, 0.9), [losses]);
  const [w, h] = [600, 180];
  if (losses.length === 0) return <p className="text-sm text-muted">The loss shows here after the first step.</p>;
  const lo = Math.min(...losses);
  const hi = Math.max(...losses);
  return (
    <figure className="flex flex-col gap-1">
      <svg viewBox={`0 0 ${w} ${h}`} preserveAspectRatio="none" className="h-44 w-full rounded-xl border border-line bg-surface" role="img" aria-label={`Loss over ${losses.length} steps`} data-testid="loss-chart" data-points={losses.length}>
        <path d={lossPath(losses, w, h, lo, hi)} fill="none" stroke="rgb(115 115 115)" strokeWidth="1" vectorEffect="non-scaling-stroke" />
        <path d={lossPath(smooth, w, h, lo, hi)} fill="none" stroke="rgb(244 114 182)" strokeWidth="2" vectorEffect="non-scaling-stroke" />
      </svg>
      <figcaption className="flex justify-between text-xs text-muted">
        <span>Loss (moving average in pink)</span>
        <span data-testid="loss-last">{smooth[smooth.length - 1].toFixed(4)}</span>
      </figcaption>
    </figure>
  );
}

function TrainingView({ id, onResumed, onStatus }: { id: string; onResumed: (job: Job) => void; onStatus: (status: string) => void }) {
  const [t, setT] = useState<Training | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const live = use(jobs, (s) => s.jobs[id]);
  const running = !t || !ENDED.includes(t.status);
  const report = useEffectEvent(onStatus);
  // Polled while it runs (the loss curve and samples are in the record, not the events),
  // and a few times after a cancel (the trainer writes its last checkpoint as it stops).
  // A failed read is tried again, less often.
  useEffect(() => {
    let current = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let after = 0;
    let failures = 0;
    const load = async () => {
      try {
        const next = await api.training(id);
        if (!current) return;
        setT(next);
        setError(null);
        failures = 0;
        report(next.status);
        const settling = next.status === "cancelled" && after++ < 5;
        if (!ENDED.includes(next.status) || settling) timer = setTimeout(load, 1000);
      } catch (e) {
        if (!current) return;
        setError(asApiError(e));
        failures++;
        timer = setTimeout(load, Math.min(30_000, 1000 * 2 ** failures));
      }
    };
    void load();
    return () => {
      current = false;
      clearTimeout(timer);
    };
  }, [id, live?.status]);
  if (error && !t) return <ErrorNote error={error} />;
  if (!t) return <Spinner />;
  const step = Math.max(t.progress.step, live?.progress.step ?? 0);
  const total = t.progress.total || Number((t.params as { steps?: number }).steps ?? 0);
  const name = (t.params as { name?: string }).name ?? "LoRA";
  const tr = t.training;
  const statusText =
    t.status === "pending"
      ? "Waiting for the trainer…"
      : t.status === "processing"
        ? live?.stage && live.progress.total > 0
          ? `${live.stage}… ${live.progress.step} of ${live.progress.total}`
          : `Step ${step} of ${total}${tr.eta_seconds != null ? ` · ${etaText(tr.eta_seconds)} left` : ""}`
        : t.status === "completed"
          ? `Done: ${total} steps`
          : t.status === "cancelled"
            ? `Cancelled at step ${tr.checkpoint_step ?? 0} of ${total}`
            : `Failed: ${t.error?.message ?? "the trainer stopped"}`;
  return (
    <div className="flex flex-col gap-4" data-testid="training">
      <div className="flex flex-wrap items-center justify-between gap-3">
        <h2 className="text-xl font-semibold">{name}</h2>
        <div className="flex gap-2">
          {running && (
            <Button
              onClick={() =>
                api.cancelJob(id).then(
                  (j) => setT((old) => (old ? { ...old, status: j.status as Training["status"] } : old)),
                  (e) => setError(asApiError(e)),
                )
              }
              data-testid="train-cancel"
            >
              Cancel
            </Button>
          )}
          {["cancelled", "failed"].includes(t.status) && tr.checkpoint_step != null && (
            <Button variant="primary" onClick={() => api.train({ resume_from: id }).then(onResumed, (e) => setError(asApiError(e)))} data-testid="train-resume">
              Resume from step {tr.checkpoint_step}
            </Button>
          )}
        </div>
      </div>
      <p className="text-sm text-neutral-300" role="status" data-testid="train-status">
        {statusText}
      </p>
      {tr.resumed_at.length > 0 && <p className="text-xs text-muted">Went on from step {tr.resumed_at.join(", ")}.</p>}
      <div className="h-1.5 overflow-hidden rounded-full bg-neutral-800" role="progressbar" aria-valuemin={0} aria-valuemax={total || 1} aria-valuenow={step} aria-label="Training progress">
        <div className="brand-gradient h-full transition-all" style={{ width: `${total ? (100 * step) / total : 0}%` }} />
      </div>
      <LossChart losses={tr.losses} />
      {tr.eval_loss && (
        <p className="text-xs text-muted" data-testid="train-eval">
          Loss on fixed draws: {tr.eval_loss.before.toFixed(4)} before, {tr.eval_loss.after.toFixed(4)} after.
        </p>
      )}
      <section className="flex flex-col gap-2" aria-label="Samples">
        <h3 className="text-sm font-medium text-neutral-300">Samples</h3>
        {tr.samples.length === 0 ? (
          <p className="text-sm text-muted">A sample image appears every few steps, with the same prompt and seed.</p>
        ) : (
          <ul className="grid grid-cols-3 gap-2 sm:grid-cols-4 lg:grid-cols-6" data-testid="train-samples">
            {tr.samples.map((s) => (
              <li key={s.step} className="flex flex-col gap-1">
                <img src={s.url} alt={`Sample at step ${s.step}`} className="pixelated aspect-square w-full rounded-lg bg-neutral-900 object-cover" />
                <span className="text-center text-xs text-muted">Step {s.step}</span>
              </li>
            ))}
          </ul>
        )}
      </section>
      {t.status === "completed" && tr.lora && (
        <div className="flex flex-wrap items-center gap-3 text-sm">
          <Link to={`/image?lora=${encodeURIComponent(tr.lora)}`} className="rounded-lg bg-white px-4 py-2 font-medium text-neutral-950" data-testid="train-use">
            Use in Image
          </Link>
          <a href={`/api/assets/${encodeURIComponent(tr.lora)}`} download={`${name}.safetensors`} className="rounded-lg border border-line px-4 py-2" data-testid="train-download">
            Download .safetensors
          </a>
        </div>
      )}
      {error && <ErrorNote error={error} />}
    </div>
  );
}

export default function TrainPage() {
  const { query } = useLocation();
  const open = query.get("id");
  // Read again when the open training's status changes (the list shows each one's).
  const [seen, setSeen] = useState("");
  const list = useLoad(() => api.trainings().then((r) => r.items), `${open} ${seen}`);
  const show = (job: Job) => navigate(`/train?id=${encodeURIComponent(job.id)}`);
  return (
    <div className="mx-auto grid max-w-6xl gap-6 px-3 py-6 sm:px-5 lg:grid-cols-[16rem_minmax(0,1fr)]">
      <aside className="flex flex-col gap-3">
        <h1 className="text-2xl font-semibold tracking-tight">Train</h1>
        <Button variant={open ? "secondary" : "primary"} onClick={() => navigate("/train")} data-testid="train-new-button">
          New training
        </Button>
        {list.error && <ErrorNote error={list.error} onRetry={list.reload} />}
        <ul className="flex flex-col gap-1" aria-label="Your trainings" data-testid="train-list">
          {(list.data ?? []).map((j) => (
            <li key={j.id}>
              <Link to={`/train?id=${encodeURIComponent(j.id)}`} className={`flex justify-between gap-2 rounded-lg px-3 py-2 text-sm hover:bg-neutral-900 ${j.id === open ? "bg-neutral-900" : ""}`}>
                <span className="truncate">{(j.params as { name?: string }).name ?? j.id}</span>
                <span className="text-muted">{j.status}</span>
              </Link>
            </li>
          ))}
        </ul>
      </aside>
      <section className="min-w-0">{open ? <TrainingView key={open} id={open} onResumed={show} onStatus={(st) => setSeen(`${open} ${st}`)} /> : <NewTraining onStarted={show} />}</section>
    </div>
  );
}
