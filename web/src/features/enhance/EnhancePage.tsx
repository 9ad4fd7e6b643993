// /enhance: an image made larger by a super-resolution model. Drop or pick a file (or come
// from "Enhance" on an image: `?asset=ID&url=…`), choose the model and the scale, watch it
// go tile by tile, compare before and after with a slider, download.

import { useEffect, useMemo, useState } from "react";
import { asApiError, type ApiError } from "../../api/client";
import type { Asset, Job, Model } from "../../api/types";
import { api, jobs, use } from "../../app";
import { Button, Chip, ErrorNote, Select, Spinner } from "../../components/ui";
import { useLoad } from "../../lib/load";
import { useLocation } from "../../lib/router";

/** The input: an upload of this page, or an image of the gallery. */
interface Source {
  id: string;
  url: string;
  width: number;
  height: number;
}

const SCALES = [0, 1, 2, 4, 8] as const;
const MAX_SIDE = 22_000;

function Compare({ before, after, width, height }: { before: string; after: string; width: number; height: number }) {
  const [at, setAt] = useState(50);
  return (
    <div className="flex flex-col gap-2">
      <div className="relative overflow-hidden rounded-2xl border border-line bg-surface" style={{ aspectRatio: `${width} / ${height}` }} data-testid="compare">
        <img src={after} alt="After" className="absolute inset-0 h-full w-full object-contain" />
        <div className="absolute inset-0" style={{ clipPath: `inset(0 ${100 - at}% 0 0)` }}>
          <img src={before} alt="Before" className="pixelated h-full w-full object-contain" />
        </div>
        <div className="pointer-events-none absolute inset-y-0 w-0.5 bg-white/80" style={{ left: `${at}%` }} />
      </div>
      <label className="flex items-center gap-3 text-xs text-muted">
        Before
        <input type="range" min={0} max={100} value={at} onChange={(e) => setAt(Number(e.target.value))} className="flex-1" aria-label="Before and after" data-testid="compare-slider" />
        After
      </label>
    </div>
  );
}

export default function EnhancePage() {
  const { query } = useLocation();
  const fromGallery = query.get("asset");
  const [source, setSource] = useState<Source | null>(null);
  const [shownFor, setShownFor] = useState<string | null>(null);
  if (fromGallery && shownFor !== fromGallery) {
    setShownFor(fromGallery);
    setSource({
      id: fromGallery,
      url: query.get("url") ?? `/api/assets/${encodeURIComponent(fromGallery)}`,
      width: Number(query.get("w") ?? 0),
      height: Number(query.get("h") ?? 0),
    });
  }
  const models = useLoad(() => api.models("upscale").then((r) => r.models));
  const [model, setModel] = useState("");
  const [scale, setScale] = useState<(typeof SCALES)[number]>(0);
  const [uploading, setUploading] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const live = use(jobs, (s) => (job ? s.jobs[job.id] : undefined));
  const installed: Model[] = useMemo(() => (models.data ?? []).filter((m) => m.installed), [models.data]);
  const chosen = model || installed[0]?.id || "";

  // When the job ends (the event stream says so), its record has the output.
  const ended = live && ["completed", "failed", "cancelled"].includes(live.status);
  const jobId = job?.id;
  useEffect(() => {
    if (!ended || !jobId) return;
    let current = true;
    api.enhanceJob(jobId).then(
      (j) => current && setJob(j),
      (e) => current && setError(asApiError(e)),
    );
    return () => {
      current = false;
    };
  }, [ended, jobId]);

  async function pick(file: File) {
    setError(null);
    setJob(null);
    setUploading(true);
    try {
      const a: Asset = await api.upload(file);
      setSource({ id: a.id, url: a.url, width: a.width ?? 0, height: a.height ?? 0 });
    } catch (e) {
      setError(asApiError(e));
    } finally {
      setUploading(false);
    }
  }

  async function start() {
    if (!source) return;
    setError(null);
    try {
      setJob(await api.enhance({ image: source.id, model: chosen, scale: scale || undefined }));
    } catch (e) {
      setError(asApiError(e));
    }
  }

  const running = job && !["completed", "failed", "cancelled"].includes(job.status);
  const progress = live?.progress ?? job?.progress;
  const output = job?.status === "completed" ? job.outputs[0] : undefined;
  const factor = scale || 4;
  const tooBig = source ? Math.max(source.width, source.height) * factor > MAX_SIDE : false;
  return (
    <div className="mx-auto grid max-w-6xl gap-6 px-3 py-6 sm:px-5 lg:grid-cols-[20rem_minmax(0,1fr)]">
      <aside className="flex flex-col gap-4">
        <h1 className="text-2xl font-semibold tracking-tight">Enhance</h1>
        <label
          className="flex cursor-pointer flex-col items-center justify-center gap-2 rounded-2xl border border-dashed border-line p-6 text-center text-sm text-muted hover:border-neutral-500"
          onDragOver={(e) => e.preventDefault()}
          onDrop={(e) => {
            e.preventDefault();
            const f = e.dataTransfer.files[0];
            if (f) void pick(f);
          }}
        >
          {uploading ? <Spinner /> : source ? <img src={source.url} alt="The image to enhance" className="pixelated max-h-40 rounded-lg" data-testid="enhance-source" /> : null}
          <span>{source ? "Drop or choose another image" : "Drop an image here, or choose one"}</span>
          <input
            type="file"
            accept="image/*"
            className="sr-only"
            aria-label="Image to enhance"
            onChange={(e) => {
              const f = e.target.files?.[0];
              if (f) void pick(f);
            }}
          />
        </label>
        {source && source.width > 0 && (
          <p className="text-xs text-muted" data-testid="enhance-size">
            {source.width} × {source.height} → {source.width * factor} × {source.height * factor}
            {tooBig && ` (over ${MAX_SIDE.toLocaleString()} px)`}
          </p>
        )}
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Model</span>
          {models.error ? (
            <ErrorNote error={models.error} onRetry={models.reload} />
          ) : (
            <Select value={chosen} onChange={(e) => setModel(e.target.value)} aria-label="Model">
              {installed.length === 0 && <option value="">No upscaler installed</option>}
              {installed.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.name}
                </option>
              ))}
            </Select>
          )}
        </label>
        <div className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Scale</span>
          <div className="flex flex-wrap gap-1.5" role="group" aria-label="Scale">
            {SCALES.map((s) => (
              <Chip key={s} active={scale === s} onClick={() => setScale(s)}>
                {s === 0 ? "Model's own" : `${s}×`}
              </Chip>
            ))}
          </div>
        </div>
        <Button variant="primary" size="lg" disabled={!source || !chosen || !!running || tooBig} onClick={start} data-testid="enhance-start">
          {running && <Spinner />}
          Enhance
        </Button>
        {error && <ErrorNote error={error} />}
      </aside>
      <section className="flex min-w-0 flex-col gap-3" aria-label="Result">
        {running && (
          <div className="flex flex-col gap-2 rounded-xl border border-line p-4" data-testid="enhance-progress">
            <p className="text-sm text-neutral-300">
              {progress && progress.total > 0 ? `Tile ${progress.step} of ${progress.total}` : "Waiting for the enhancer…"}
            </p>
            <div className="h-1.5 overflow-hidden rounded-full bg-neutral-800" role="progressbar" aria-valuemin={0} aria-valuemax={progress?.total || 1} aria-valuenow={progress?.step ?? 0} aria-label="Progress">
              <div className="brand-gradient h-full transition-all" style={{ width: `${progress && progress.total ? (100 * progress.step) / progress.total : 0}%` }} />
            </div>
          </div>
        )}
        {job?.status === "failed" && <ErrorNote error={{ message: job.error?.message ?? "The enhancer failed." }} />}
        {output && source && (
          <>
            <Compare before={source.url} after={output.url} width={output.width ?? 1} height={output.height ?? 1} />
            <div className="flex items-center gap-3 text-sm">
              <a href={output.url} download className="rounded-lg bg-white px-4 py-2 font-medium text-neutral-950" data-testid="enhance-download">
                Download PNG
              </a>
              <span className="text-muted" data-testid="enhance-result-size">
                {output.width} × {output.height}
              </span>
            </div>
          </>
        )}
        {!job && !running && <p className="text-sm text-muted">The enlarged image appears here, with a slider to compare it with the original.</p>}
      </section>
    </div>
  );
}
