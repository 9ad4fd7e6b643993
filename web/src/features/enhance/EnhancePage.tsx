// /enhance: an image made larger by a super-resolution model, optionally with faces restored
// and sharpened, or
// re-drawn by an image model ("Generative": creativity, resemblance, prompt, seed). Drop or
// pick a file (or come from "Enhance" on an image: `?asset=ID&url=…`), choose the model and
// the scale, watch it go tile by tile, compare before and after with a slider (zoom with the
// wheel or the buttons, drag to pan; a large output through its tiles, only those in view at
// the zoom's level), download.

import { useEffect, useMemo, useState } from "react";
import { asApiError, type ApiError } from "../../api/client";
import type { Asset, Job, Model } from "../../api/types";
import { api, jobs, use } from "../../app";
import { Compare } from "../../components/Compare";
import { Amount, Button, Chip, ErrorNote, Select, Spinner, Textarea } from "../../components/ui";
import { useLoad } from "../../lib/load";
import { Link, useLocation } from "../../lib/router";
import { TILED_ABOVE, type TileInfo } from "./tiles";

/** The input: an upload of this page, or an image of the gallery. */
interface Source {
  id: string;
  url: string;
  width: number;
  height: number;
}

const SCALES = [0, 1, 2, 4, 8] as const;
const MAX_SIDE = 22_000;
/** Generative enhance re-draws the whole image in memory: at most this a side. */
const GENERATIVE_MAX_SIDE = 2048;
type Mode = "upscale" | "generative";

/** Installed models first; the curated ones after them are downloaded on first use. */
function installedFirst(models: Model[]): Model[] {
  return [...models].sort((a, b) => Number(b.installed) - Number(a.installed));
}

function megabytes(bytes: number): string {
  return `${Math.max(1, Math.round(bytes / 1e6))} MB`;
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
  const [mode, setMode] = useState<Mode>("upscale");
  const [sharpen, setSharpen] = useState(0);
  const [creativity, setCreativity] = useState(0.35);
  const [resemblance, setResemblance] = useState(0.5);
  const [prompt, setPrompt] = useState("");
  const painters = useLoad(() => api.models("img2img").then((r) => r.models.filter((m) => m.installed)));
  const [painter, setPainter] = useState("");
  const restorers = useLoad(() => api.models("face_restore").then((r) => installedFirst(r.models)));
  const [denoise, setDenoise] = useState(1);
  const [faces, setFaces] = useState(false);
  const [restorer, setRestorer] = useState("");
  const [fidelity, setFidelity] = useState(0.5);
  const chosenRestorer = (restorers.data ?? []).find((m) => m.id === restorer) ?? restorers.data?.[0];
  const chosenPainter = painter || painters.data?.[0]?.id || "";
  const [uploading, setUploading] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const live = use(jobs, (s) => (job ? s.jobs[job.id] : undefined));
  const offered: Model[] = useMemo(() => installedFirst(models.data ?? []), [models.data]);
  const chosen = model || offered[0]?.id || "";
  const chosenModel = offered.find((m) => m.id === chosen);

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
      const generative = mode === "generative";
      setJob(
        await api.enhance({
          image: source.id,
          model: chosen,
          scale: scale || undefined,
          sharpen: sharpen || undefined,
          denoise: chosenModel?.denoise && denoise < 1 ? denoise : undefined,
          face_restore: faces || undefined,
          ...(faces && chosenRestorer ? { face_model: chosenRestorer.id, fidelity: chosenRestorer.fidelity ? fidelity : undefined } : {}),
          ...(generative ? { mode, creativity, resemblance, prompt: prompt.trim() || undefined, diffusion_model: chosenPainter || undefined } : {}),
        }),
      );
    } catch (e) {
      setError(asApiError(e));
    }
  }

  // A large output is viewed through its tile pyramid.
  const outputId = job?.status === "completed" ? job.outputs[0]?.id : undefined;
  const large = job?.status === "completed" && Math.max(job.outputs[0]?.width ?? 0, job.outputs[0]?.height ?? 0) > TILED_ABOVE;
  const [tiles, setTiles] = useState<{ id: string; info: TileInfo } | null>(null);
  useEffect(() => {
    if (!outputId || !large) return;
    let current = true;
    api.assetTiles(outputId).then(
      (info) => current && setTiles({ id: outputId, info }),
      () => {},
    );
    return () => {
      current = false;
    };
  }, [outputId, large]);
  const running = job && !["completed", "failed", "cancelled"].includes(job.status);
  const progress = live?.progress ?? job?.progress;
  const output = job?.status === "completed" ? job.outputs[0] : undefined;
  const factor = scale || 4;
  const limit = mode === "generative" ? GENERATIVE_MAX_SIDE : MAX_SIDE;
  const tooBig = source ? Math.max(source.width, source.height) * factor > limit : false;
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
            {tooBig && ` (over ${limit.toLocaleString()} px${mode === "generative" ? " for generative" : ""})`}
          </p>
        )}
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Model</span>
          {models.error ? (
            <ErrorNote error={models.error} onRetry={models.reload} />
          ) : (
            <Select value={chosen} onChange={(e) => setModel(e.target.value)} aria-label="Model">
              {offered.length === 0 && <option value="">No upscaler installed</option>}
              {offered.map((m) => (
                <option key={m.id} value={m.id}>
                  {m.name}
                  {m.installed ? "" : ` — downloads${m.size ? ` ${megabytes(m.size)}` : ""} on first use`}
                </option>
              ))}
            </Select>
          )}
          {chosenModel?.license && (
            <span className="text-xs text-muted" data-testid="enhance-license">
              Licence: {chosenModel.license}
            </span>
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
        <Amount label="Sharpen" value={sharpen} max={2} onChange={setSharpen} testId="enhance-sharpen" />
        {chosenModel?.denoise && <Amount label="Denoise" value={denoise} onChange={setDenoise} testId="enhance-denoise" />}
        {(restorers.data ?? []).length > 0 && (
          <div className="flex flex-col gap-3">
            <label className="flex items-center gap-2 text-sm text-neutral-300">
              <input type="checkbox" checked={faces} onChange={(e) => setFaces(e.target.checked)} data-testid="enhance-faces" />
              Restore faces
            </label>
            {faces && (
              <>
                <label className="flex flex-col gap-1.5">
                  <span className="text-xs font-medium uppercase tracking-wide text-muted">Face model</span>
                  <Select value={chosenRestorer?.id ?? ""} onChange={(e) => setRestorer(e.target.value)} aria-label="Face model" data-testid="enhance-face-model">
                    {(restorers.data ?? []).map((m) => (
                      <option key={m.id} value={m.id}>
                        {m.name}
                        {m.installed ? "" : ` — downloads${m.size ? ` ${megabytes(m.size)}` : ""} on first use`}
                      </option>
                    ))}
                  </Select>
                  {chosenRestorer?.license && (
                    <span className="text-xs text-muted" data-testid="enhance-face-license">
                      Licence: {chosenRestorer.license}
                    </span>
                  )}
                </label>
                {chosenRestorer?.fidelity && <Amount label="Fidelity" value={fidelity} onChange={setFidelity} testId="enhance-fidelity" />}
              </>
            )}
          </div>
        )}
        <div className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Mode</span>
          <div className="flex flex-wrap gap-1.5" role="group" aria-label="Mode">
            <Chip active={mode === "upscale"} onClick={() => setMode("upscale")}>
              Upscale
            </Chip>
            <Chip active={mode === "generative"} onClick={() => setMode("generative")}>
              Generative
            </Chip>
          </div>
        </div>
        {mode === "generative" && (
          <div className="flex flex-col gap-4 rounded-xl border border-line p-3" data-testid="enhance-generative">
            <p className="text-xs text-muted">Upscales, then an image model re-draws the detail, tile by tile.</p>
            <label className="flex flex-col gap-1.5">
              <span className="text-xs font-medium uppercase tracking-wide text-muted">Image model</span>
              {painters.error ? (
                <ErrorNote error={painters.error} onRetry={painters.reload} />
              ) : (
                <Select value={chosenPainter} onChange={(e) => setPainter(e.target.value)} aria-label="Image model">
                  {(painters.data ?? []).length === 0 && <option value="">No image model installed</option>}
                  {(painters.data ?? []).map((m) => (
                    <option key={m.id} value={m.id}>
                      {m.name}
                    </option>
                  ))}
                </Select>
              )}
            </label>
            <label className="flex flex-col gap-1.5">
              <span className="text-xs font-medium uppercase tracking-wide text-muted">Prompt (optional)</span>
              <Textarea rows={2} value={prompt} maxLength={4000} onChange={(e) => setPrompt(e.target.value)} placeholder="What the image shows" aria-label="Prompt" />
            </label>
            <Amount label="Creativity" value={creativity} onChange={setCreativity} testId="enhance-creativity" />
            <Amount label="Resemblance" value={resemblance} onChange={setResemblance} testId="enhance-resemblance" />
          </div>
        )}
        <Button variant="primary" size="lg" disabled={!source || !chosen || !!running || tooBig || (mode === "generative" && !chosenPainter)} onClick={start} data-testid="enhance-start">
          {running && <Spinner />}
          Enhance
        </Button>
        {error && <ErrorNote error={error} />}
      </aside>
      <section className="flex min-w-0 flex-col gap-3" aria-label="Result">
        {running && (
          <div className="flex flex-col gap-2 rounded-xl border border-line p-4" data-testid="enhance-progress">
            <p className="text-sm text-neutral-300">
              {live?.stage
                ? `${live.stage}… ${progress && progress.total > 0 ? `${progress.step} of ${progress.total} MB` : `${progress?.step ?? 0} MB`}`
                : progress && progress.total > 0
                  ? `${mode === "generative" ? "Step" : "Tile"} ${progress.step} of ${progress.total}`
                  : chosenModel && !chosenModel.installed
                    ? "Downloading the model…"
                    : "Waiting for the enhancer…"}
            </p>
            {live?.preview && <img src={live.preview} alt="The output so far" className="pixelated max-h-80 w-full rounded-lg object-contain" data-testid="enhance-preview" />}
            <div className="h-1.5 overflow-hidden rounded-full bg-neutral-800" role="progressbar" aria-valuemin={0} aria-valuemax={progress?.total || 1} aria-valuenow={progress?.step ?? 0} aria-label="Progress">
              <div className="brand-gradient h-full transition-all" style={{ width: `${progress && progress.total ? (100 * progress.step) / progress.total : 0}%` }} />
            </div>
          </div>
        )}
        {job?.status === "failed" && <ErrorNote error={{ message: job.error?.message ?? "The enhancer failed." }} />}
        {output && source && (
          <>
            <Compare
              before={source.url}
              // A large output is never fetched whole: its thumbnail stands in until its tiles' shape arrives.
              after={large ? (output.thumbnail_url ?? source.url) : output.url}
              width={output.width ?? 1}
              height={output.height ?? 1}
              tiles={tiles && tiles.id === outputId ? tiles : undefined}
            />
            <div className="flex items-center gap-3 text-sm">
              <a href={output.url} download className="rounded-lg bg-white px-4 py-2 font-medium text-neutral-950" data-testid="enhance-download">
                Download PNG
              </a>
              {!large && (
                <Link to={`/edit?asset=${encodeURIComponent(output.id)}&url=${encodeURIComponent(output.url)}&w=${output.width ?? 0}&h=${output.height ?? 0}`} className="rounded-lg border border-line px-4 py-2" data-testid="enhance-edit">
                  Edit
                </Link>
              )}
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
