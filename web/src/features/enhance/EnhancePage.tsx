// /enhance: an image made larger by a super-resolution model, optionally with faces restored
// and sharpened, or
// re-drawn by an image model ("Generative": creativity, resemblance, prompt, seed). Drop or
// pick a file (or come from "Enhance" on an image: `?asset=ID&url=…`), choose the model and
// the scale, watch it go tile by tile, compare before and after with a slider (zoom with the
// wheel or the buttons, drag to pan; a large output through its tiles, only those in view at
// the zoom's level), download.

import { type CSSProperties, useEffect, useMemo, useRef, useState } from "react";
import { asApiError, type ApiError } from "../../api/client";
import type { Asset, Job, Model } from "../../api/types";
import { api, jobs, use } from "../../app";
import { Button, Chip, ErrorNote, Select, Spinner, Textarea } from "../../components/ui";
import { useLoad } from "../../lib/load";
import { useLocation } from "../../lib/router";
import { type PlacedTile, TILED_ABOVE, type TileInfo, levelFor, tilesInView } from "./tiles";

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

/** A labelled 0–`max` slider showing its value. */
function Amount({ label, value, max = 1, step = 0.05, onChange, testId }: { label: string; value: number; max?: number; step?: number; onChange: (v: number) => void; testId: string }) {
  return (
    <label className="flex flex-col gap-1.5">
      <span className="flex justify-between text-xs font-medium uppercase tracking-wide text-muted">
        {label}
        <span className="tabular-nums normal-case">{value.toFixed(2)}</span>
      </span>
      <input type="range" min={0} max={max} step={step} value={value} onChange={(e) => onChange(Number(e.target.value))} aria-label={label} data-testid={testId} />
    </label>
  );
}

/** A pyramid's tiles in view at this zoom, over its one-tile top level (always there, so
 * nothing is blank while finer tiles load). */
function TiledImage({ id, info, fit, zoom, pan, style }: { id: string; info: TileInfo; fit: { width: number; height: number }; zoom: number; pan: { x: number; y: number }; style: CSSProperties }) {
  const level = levelFor(info, fit.width, zoom, window.devicePixelRatio || 1);
  const shown = [...tilesInView(info, info.levels - 1, fit, 1, { x: 0, y: 0 }), ...(level < info.levels - 1 ? tilesInView(info, level, fit, zoom, pan, 1) : [])];
  const url = (t: PlacedTile) => `/api/assets/${encodeURIComponent(id)}/tiles/${t.level}/${t.x}/${t.y}`;
  return (
    <div role="img" aria-label="After" className="absolute inset-0 overflow-hidden" style={style} data-testid="compare-tiles" data-level={level}>
      {shown.map((t) => (
        <img key={`${t.level}/${t.x}/${t.y}`} src={url(t)} alt="" draggable={false} className="absolute max-w-none" style={{ left: t.left, top: t.top, width: t.width, height: t.height }} />
      ))}
    </div>
  );
}

/** Before and after, split by a slider; both zoom (wheel, buttons) and pan (drag) together.
 * A large output is shown through its tiles (`tiles`), never whole. */
function Compare({ before, after, width, height, tiles }: { before: string; after: string; width: number; height: number; tiles?: { id: string; info: TileInfo } }) {
  const [at, setAt] = useState(50);
  const [zoom, setZoom] = useState(1);
  const [pan, setPan] = useState({ x: 0, y: 0 });
  const drag = useRef<{ x: number; y: number; px: number; py: number } | null>(null);
  const box = useRef<HTMLDivElement | null>(null);
  const [fit, setFit] = useState({ width: 0, height: 0 });
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const measure = () => setFit({ width: el.clientWidth, height: el.clientHeight });
    measure();
    const o = new ResizeObserver(measure);
    o.observe(el);
    return () => o.disconnect();
  }, []);
  const zoomTo = (z: number) => {
    const next = Math.min(16, Math.max(1, z));
    setZoom(next);
    if (next === 1) setPan({ x: 0, y: 0 });
  };
  const transform = { transform: `translate(${pan.x}px, ${pan.y}px) scale(${zoom})`, transformOrigin: "center" };
  return (
    <div className="flex flex-col gap-2">
      <div
        ref={box}
        className={`relative touch-none overflow-hidden rounded-2xl border border-line bg-surface ${zoom > 1 ? "cursor-grab" : ""}`}
        style={{ aspectRatio: `${width} / ${height}` }}
        data-testid="compare"
        data-zoom={zoom}
        onWheel={(e) => zoomTo(zoom * (e.deltaY < 0 ? 1.25 : 0.8))}
        onPointerDown={(e) => {
          if (zoom === 1) return;
          e.currentTarget.setPointerCapture(e.pointerId);
          drag.current = { x: e.clientX, y: e.clientY, px: pan.x, py: pan.y };
        }}
        onPointerMove={(e) => {
          const d = drag.current;
          if (d) setPan({ x: d.px + e.clientX - d.x, y: d.py + e.clientY - d.y });
        }}
        onPointerUp={() => (drag.current = null)}
      >
        {tiles ? (
          <TiledImage id={tiles.id} info={tiles.info} fit={fit} zoom={zoom} pan={pan} style={transform} />
        ) : (
          <img src={after} alt="After" draggable={false} className="absolute inset-0 h-full w-full object-contain" style={transform} />
        )}
        <div className="absolute inset-0" style={{ clipPath: `inset(0 ${100 - at}% 0 0)` }}>
          <img src={before} alt="Before" draggable={false} className="pixelated h-full w-full object-contain" style={transform} />
        </div>
        <div className="pointer-events-none absolute inset-y-0 w-0.5 bg-white/80" style={{ left: `${at}%` }} />
      </div>
      <div className="flex items-center gap-3 text-xs text-muted">
        <label className="flex flex-1 items-center gap-3">
          Before
          <input type="range" min={0} max={100} value={at} onChange={(e) => setAt(Number(e.target.value))} className="flex-1" aria-label="Before and after" data-testid="compare-slider" />
          After
        </label>
        <Button size="sm" onClick={() => zoomTo(zoom / 2)} disabled={zoom === 1} aria-label="Zoom out">
          −
        </Button>
        <span className="w-10 text-center tabular-nums" data-testid="compare-zoom">
          {Math.round(zoom * 100)}%
        </span>
        <Button size="sm" onClick={() => zoomTo(zoom * 2)} disabled={zoom >= 16} aria-label="Zoom in">
          +
        </Button>
      </div>
    </div>
  );
}

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
          <label className="flex items-center gap-2 text-sm text-neutral-300">
            <input type="checkbox" checked={faces} onChange={(e) => setFaces(e.target.checked)} data-testid="enhance-faces" />
            Restore faces ({restorers.data?.[0]?.name}
            {restorers.data?.[0]?.installed ? "" : ", downloaded on first use"})
          </label>
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
