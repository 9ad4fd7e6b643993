// /edit: an image changed where a mask says (inpaint), on a larger canvas (outpaint),
// re-drawn in a style (restyle) or as an instruction says (instruct, InstructPix2Pix).
// Open an image (drop, pick, or "Edit" on a gallery image: `?asset=ID&url=…&w=…&h=…`), paint
// the mask with a brush, an eraser or rectangles over it (invert, clear; grow and feather are
// the server's), choose the operation and run it. Each result is a new version in the strip
// below: undo and redo, pick any version to continue from, compare it with the original.

import { useEffect, useRef, useState } from "react";
import { asApiError, type ApiError } from "../../api/client";
import type { Asset, Job } from "../../api/types";
import { api, jobs, use } from "../../app";
import { Compare } from "../../components/Compare";
import { Amount, Button, Chip, ErrorNote, Select, Spinner, Textarea } from "../../components/ui";
import { useLoad } from "../../lib/load";
import { useLocation } from "../../lib/router";
import { type History, type Version, aspectSize, canRedo, canUndo, current, empty, invertAlpha, maskPixels, push, redo, select, start, undo } from "./history";

type Operation = "inpaint" | "outpaint" | "restyle" | "instruct";
/** The model capability each operation needs. */
const NEEDS: Record<Operation, "inpaint" | "img2img" | "instruct"> = { inpaint: "inpaint", outpaint: "inpaint", restyle: "img2img", instruct: "instruct" };
const LABELS: Record<Operation, string> = { inpaint: "Inpaint", outpaint: "Outpaint", restyle: "Restyle", instruct: "Instruct" };
type Tool = "brush" | "eraser" | "rect";
const ASPECTS = ["16:9", "9:16", "1:1", "4:3", "3:2", "2:3"] as const;
/** The mask as it is shown over the image. */
const MASK_COLOUR = "rgb(244, 63, 94)";

/** The mask layer over the image: painted with the pointer in image pixels. */
function MaskCanvas({ version, tool, size, canvas, onChange }: { version: Version; tool: Tool; size: number; canvas: React.RefObject<HTMLCanvasElement | null>; onChange: () => void }) {
  const last = useRef<{ x: number; y: number } | null>(null);
  const rectFrom = useRef<{ x: number; y: number } | null>(null);
  const [rect, setRect] = useState<{ x: number; y: number; w: number; h: number } | null>(null);
  // Image pixels per screen pixel: the brush's size is on screen, whatever the zoom.
  const scale = useRef(1);
  const at = (e: React.PointerEvent<HTMLCanvasElement>) => {
    const r = e.currentTarget.getBoundingClientRect();
    scale.current = version.width / Math.max(1, r.width);
    return { x: ((e.clientX - r.left) * version.width) / r.width, y: ((e.clientY - r.top) * version.height) / r.height };
  };
  const ctx = () => canvas.current?.getContext("2d") ?? null;
  const stroke = (from: { x: number; y: number }, to: { x: number; y: number }) => {
    const c = ctx();
    if (!c) return;
    c.globalCompositeOperation = tool === "eraser" ? "destination-out" : "source-over";
    c.strokeStyle = c.fillStyle = MASK_COLOUR;
    c.lineWidth = size * scale.current;
    c.lineCap = c.lineJoin = "round";
    c.beginPath();
    c.moveTo(from.x, from.y);
    c.lineTo(to.x, to.y);
    c.stroke();
  };
  return (
    <div className="absolute inset-0">
      <canvas
        ref={canvas}
        width={version.width}
        height={version.height}
        className="absolute inset-0 h-full w-full cursor-crosshair touch-none opacity-60"
        aria-label="Mask: paint what to change"
        data-testid="edit-mask"
        onPointerDown={(e) => {
          e.currentTarget.setPointerCapture(e.pointerId);
          const p = at(e);
          if (tool === "rect") {
            rectFrom.current = p;
            setRect({ x: p.x, y: p.y, w: 0, h: 0 });
          } else {
            last.current = p;
            stroke(p, p);
          }
        }}
        onPointerMove={(e) => {
          const p = at(e);
          if (rectFrom.current) {
            const f = rectFrom.current;
            setRect({ x: Math.min(f.x, p.x), y: Math.min(f.y, p.y), w: Math.abs(p.x - f.x), h: Math.abs(p.y - f.y) });
          } else if (last.current) {
            stroke(last.current, p);
            last.current = p;
          }
        }}
        onPointerUp={() => {
          if (rectFrom.current && rect) {
            const c = ctx();
            if (c) {
              c.globalCompositeOperation = "source-over";
              c.fillStyle = MASK_COLOUR;
              c.fillRect(rect.x, rect.y, rect.w, rect.h);
            }
          }
          rectFrom.current = null;
          last.current = null;
          setRect(null);
          onChange();
        }}
      />
      {rect && (
        <div
          className="pointer-events-none absolute border border-dashed border-white"
          style={{ left: `${(100 * rect.x) / version.width}%`, top: `${(100 * rect.y) / version.height}%`, width: `${(100 * rect.w) / version.width}%`, height: `${(100 * rect.h) / version.height}%` }}
        />
      )}
    </div>
  );
}

export default function EditPage() {
  const { query } = useLocation();
  const fromGallery = query.get("asset");
  const [history, setHistory] = useState<History>(empty);
  const [openedFor, setOpenedFor] = useState<string | null>(null);
  if (fromGallery && openedFor !== fromGallery) {
    setOpenedFor(fromGallery);
    setHistory(
      start({
        id: fromGallery,
        url: query.get("url") ?? `/api/assets/${encodeURIComponent(fromGallery)}`,
        width: Number(query.get("w") ?? 0),
        height: Number(query.get("h") ?? 0),
        label: "Original",
      }),
    );
  }
  const version = current(history);
  const original = history.versions[0];
  const [operation, setOperation] = useState<Operation>("inpaint");
  const [tool, setTool] = useState<Tool>("brush");
  const [brush, setBrush] = useState(32);
  // The version whose mask has paint on it (a new version's mask starts clear).
  const [paintedOn, setPaintedOn] = useState<string | null>(null);
  const painted = !!version && paintedOn === version.id;
  const [prompt, setPrompt] = useState("");
  const [strength, setStrength] = useState(1);
  const [grow, setGrow] = useState(4);
  const [blur, setBlur] = useState(4);
  const [aspect, setAspect] = useState<(typeof ASPECTS)[number]>("16:9");
  const [comparing, setComparing] = useState(false);
  const models = useLoad(() => api.models(NEEDS[operation]).then((r) => r.models.filter((m) => m.installed)), NEEDS[operation]);
  const styles = useLoad(() => api.styles().then((r) => r.styles));
  const [style, setStyle] = useState("");
  const [imageGuidance, setImageGuidance] = useState(1.5);
  const [model, setModel] = useState("");
  const chosenModel = (models.data ?? []).some((m) => m.id === model) ? model : models.data?.[0]?.id || "";
  const [uploading, setUploading] = useState(false);
  const [error, setError] = useState<ApiError | null>(null);
  const [job, setJob] = useState<Job | null>(null);
  const live = use(jobs, (s) => (job ? s.jobs[job.id] : undefined));
  const mask = useRef<HTMLCanvasElement | null>(null);

  // A picture's natural size, when it came without one.
  useEffect(() => {
    if (!version || version.width > 0) return;
    const img = new Image();
    img.onload = () => setHistory((h) => ({ ...h, versions: h.versions.map((v) => (v.id === version.id ? { ...v, width: img.naturalWidth, height: img.naturalHeight } : v)) }));
    img.src = version.url;
  }, [version]);

  function clearMask() {
    const c = mask.current;
    c?.getContext("2d")?.clearRect(0, 0, c.width, c.height);
    setPaintedOn(null);
  }

  function checkPainted() {
    const c = mask.current;
    const data = c?.getContext("2d")?.getImageData(0, 0, c.width, c.height).data;
    setPaintedOn(data && version && maskPixels(data).painted ? version.id : null);
  }

  function invert() {
    const c = mask.current;
    const g = c?.getContext("2d");
    if (!c || !g) return;
    const data = g.getImageData(0, 0, c.width, c.height);
    // Painted pixels keep the mask's colour; only their opacity flips.
    for (let i = 0; i < data.data.length; i += 4) {
      data.data[i] = 244;
      data.data[i + 1] = 63;
      data.data[i + 2] = 94;
    }
    invertAlpha(data.data);
    g.putImageData(data, 0, 0);
    checkPainted();
  }

  // When the job ends (the event stream says so), its record has the output: a new version.
  const ended = live && ["completed", "failed", "cancelled"].includes(live.status);
  const jobId = job?.id;
  useEffect(() => {
    if (!ended || !jobId) return;
    let alive = true;
    api.editJob(jobId).then(
      (j) => {
        if (!alive) return;
        setJob(j);
        const out = j.outputs[0];
        if (j.status === "completed" && out) {
          const p = (j.params ?? {}) as { operation?: Operation; aspect?: string };
          const label = `${LABELS[p.operation ?? "inpaint"]}${p.operation === "outpaint" && p.aspect ? ` ${p.aspect}` : ""}`;
          setHistory((h) => push(h, { id: out.id, url: out.url, width: out.width ?? 0, height: out.height ?? 0, label }));
        }
      },
      (e) => alive && setError(asApiError(e)),
    );
    return () => {
      alive = false;
    };
  }, [ended, jobId]);

  async function open(file: File) {
    setError(null);
    setJob(null);
    setUploading(true);
    try {
      const a: Asset = await api.upload(file);
      setHistory(start({ id: a.id, url: a.url, width: a.width ?? 0, height: a.height ?? 0, label: "Original" }));
    } catch (e) {
      setError(asApiError(e));
    } finally {
      setUploading(false);
    }
  }

  async function uploadMask(): Promise<string> {
    const c = mask.current;
    if (!c) throw new Error("no mask");
    const data = c.getContext("2d")!.getImageData(0, 0, c.width, c.height);
    const out = document.createElement("canvas");
    out.width = c.width;
    out.height = c.height;
    out.getContext("2d")!.putImageData(new ImageData(maskPixels(data.data).pixels, c.width, c.height), 0, 0);
    const blob = await new Promise<Blob>((resolve, reject) => out.toBlob((b) => (b ? resolve(b) : reject(new Error("the mask could not be encoded"))), "image/png"));
    return (await api.upload(blob)).id;
  }

  async function run() {
    if (!version) return;
    setError(null);
    try {
      const common = { image: version.id, prompt: prompt.trim() || undefined, model: chosenModel || undefined, strength, grow, blur };
      if (operation === "inpaint") {
        setJob(await api.edit({ ...common, operation, mask: await uploadMask() }));
      } else if (operation === "outpaint") {
        setJob(await api.edit({ ...common, operation, aspect }));
      } else if (operation === "restyle") {
        setJob(await api.edit({ ...common, operation, style: style || undefined }));
      } else {
        setJob(await api.edit({ image: version.id, operation, prompt: prompt.trim(), model: chosenModel || undefined, image_guidance: imageGuidance }));
      }
    } catch (e) {
      setError(asApiError(e));
    }
  }

  const running = job && !["completed", "failed", "cancelled"].includes(job.status);
  const progress = live?.progress ?? job?.progress;
  const [aw, ah] = aspect.split(":").map(Number);
  const target = version && version.width > 0 ? aspectSize(version.width, version.height, aw, ah) : null;
  const sameSize = target && version && target.width === version.width && target.height === version.height;
  const ready =
    !!version && !running && !!chosenModel && (operation === "inpaint" ? painted : operation === "outpaint" ? !sameSize : operation === "instruct" ? prompt.trim() !== "" : true);
  return (
    <div className="mx-auto grid max-w-6xl gap-6 px-3 py-6 sm:px-5 lg:grid-cols-[20rem_minmax(0,1fr)]">
      <aside className="flex flex-col gap-4">
        <h1 className="text-2xl font-semibold tracking-tight">Edit</h1>
        <label
          className="flex cursor-pointer flex-col items-center justify-center gap-2 rounded-2xl border border-dashed border-line p-4 text-center text-sm text-muted hover:border-neutral-500"
          onDragOver={(e) => e.preventDefault()}
          onDrop={(e) => {
            e.preventDefault();
            const f = e.dataTransfer.files[0];
            if (f) void open(f);
          }}
        >
          {uploading && <Spinner />}
          <span>{version ? "Drop or choose another image" : "Drop an image here, or choose one"}</span>
          <input
            type="file"
            accept="image/*"
            className="sr-only"
            aria-label="Image to edit"
            onChange={(e) => {
              const f = e.target.files?.[0];
              if (f) void open(f);
            }}
          />
        </label>
        <div className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Operation</span>
          <div className="flex flex-wrap gap-1.5" role="group" aria-label="Operation">
            {(Object.keys(LABELS) as Operation[]).map((o) => (
              <Chip key={o} active={operation === o} onClick={() => setOperation(o)}>
                {LABELS[o]}
              </Chip>
            ))}
          </div>
        </div>
        {operation === "inpaint" ? (
          <div className="flex flex-col gap-3 rounded-xl border border-line p-3">
            <div className="flex flex-wrap gap-1.5" role="group" aria-label="Mask tool">
              {(["brush", "eraser", "rect"] as const).map((t) => (
                <Chip key={t} active={tool === t} onClick={() => setTool(t)}>
                  {t === "rect" ? "Rectangle" : t === "brush" ? "Brush" : "Eraser"}
                </Chip>
              ))}
            </div>
            <Amount label="Brush size (screen px)" value={brush} max={200} step={1} digits={0} onChange={setBrush} testId="edit-brush" />
            <div className="flex gap-2">
              <Button size="sm" onClick={invert} disabled={!version}>
                Invert
              </Button>
              <Button size="sm" onClick={clearMask} disabled={!painted}>
                Clear
              </Button>
            </div>
            <Amount label="Grow (px)" value={grow} max={64} step={1} digits={0} onChange={setGrow} testId="edit-grow" />
            <Amount label="Feather (px)" value={blur} max={32} step={1} digits={0} onChange={setBlur} testId="edit-blur" />
          </div>
        ) : operation === "restyle" ? (
          <label className="flex flex-col gap-1.5">
            <span className="text-xs font-medium uppercase tracking-wide text-muted">Style</span>
            <Select value={style} onChange={(e) => setStyle(e.target.value)} aria-label="Style">
              <option value="">The prompt alone</option>
              {(styles.data ?? []).map((s) => (
                <option key={s.id} value={s.id}>
                  {s.name}
                </option>
              ))}
            </Select>
          </label>
        ) : operation === "instruct" ? (
          <Amount label="Image guidance" value={imageGuidance} max={5} step={0.1} digits={1} onChange={setImageGuidance} testId="edit-image-guidance" />
        ) : (
          <div className="flex flex-col gap-3 rounded-xl border border-line p-3">
            <div className="flex flex-wrap gap-1.5" role="group" aria-label="Aspect">
              {ASPECTS.map((a) => (
                <Chip key={a} active={aspect === a} onClick={() => setAspect(a)}>
                  {a}
                </Chip>
              ))}
            </div>
            {target && version && (
              <p className="text-xs text-muted" data-testid="edit-outpaint-size">
                {version.width} × {version.height} → {target.width} × {target.height}
                {sameSize && " (already this shape)"}
              </p>
            )}
          </div>
        )}
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">{operation === "instruct" ? "Instruction" : "Prompt (optional)"}</span>
          <Textarea
            rows={2}
            value={prompt}
            maxLength={4000}
            onChange={(e) => setPrompt(e.target.value)}
            placeholder={operation === "instruct" ? "Make it winter" : "What to paint there"}
            aria-label={operation === "instruct" ? "Instruction" : "Prompt"}
          />
        </label>
        {operation !== "instruct" && <Amount label="Strength" value={strength} onChange={setStrength} testId="edit-strength" />}
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">Image model</span>
          {models.error ? (
            <ErrorNote error={models.error} onRetry={models.reload} />
          ) : (
            <Select value={chosenModel} onChange={(e) => setModel(e.target.value)} aria-label="Image model">
              {(models.data ?? []).length === 0 && <option value="">{operation === "instruct" ? "No instruction-editing model installed" : "No image model installed"}</option>}
              {(models.data ?? []).map((m) => (
                <option key={m.id} value={m.id}>
                  {m.name}
                </option>
              ))}
            </Select>
          )}
        </label>
        <Button variant="primary" size="lg" disabled={!ready} onClick={run} data-testid="edit-run">
          {running && <Spinner />}
          {operation === "inpaint" && !painted ? "Paint a mask first" : LABELS[operation]}
        </Button>
        {error && <ErrorNote error={error} />}
      </aside>
      <section className="flex min-w-0 flex-col gap-3" aria-label="Image">
        {version ? (
          <>
            <div className="flex flex-wrap items-center gap-2 text-sm">
              <Button size="sm" onClick={() => setHistory(undo)} disabled={!canUndo(history)} data-testid="edit-undo">
                Undo
              </Button>
              <Button size="sm" onClick={() => setHistory(redo)} disabled={!canRedo(history)} data-testid="edit-redo">
                Redo
              </Button>
              <label className="flex items-center gap-2 text-neutral-300">
                <input type="checkbox" checked={comparing} onChange={(e) => setComparing(e.target.checked)} disabled={history.at === 0} data-testid="edit-compare" />
                Compare with the original
              </label>
              <span className="ml-auto text-muted" data-testid="edit-size">
                {version.width} × {version.height}
              </span>
              <a href={version.url} download className="rounded-lg bg-white px-3 py-1.5 font-medium text-neutral-950" data-testid="edit-download">
                Download
              </a>
            </div>
            {comparing && original && history.at > 0 ? (
              <Compare before={original.url} after={version.url} width={version.width || 1} height={version.height || 1} />
            ) : (
              <div className="relative overflow-hidden rounded-2xl border border-line bg-surface" style={{ aspectRatio: `${version.width || 1} / ${version.height || 1}` }}>
                <img src={version.url} alt={`Version ${history.at + 1}: ${version.label}`} draggable={false} className="absolute inset-0 h-full w-full object-contain" data-testid="edit-image" data-version={version.id} />
                {operation === "inpaint" && version.width > 0 && <MaskCanvas key={version.id} version={version} tool={tool} size={brush} canvas={mask} onChange={checkPainted} />}
              </div>
            )}
            {running && (
              <div className="flex flex-col gap-2 rounded-xl border border-line p-4" data-testid="edit-progress">
                <p className="text-sm text-neutral-300">{progress && progress.total > 0 ? `Step ${progress.step} of ${progress.total}` : "Waiting for the model…"}</p>
                {live?.preview && <img src={live.preview} alt="The result so far" className="pixelated max-h-60 rounded-lg object-contain" data-testid="edit-preview" />}
                <div className="h-1.5 overflow-hidden rounded-full bg-neutral-800" role="progressbar" aria-valuemin={0} aria-valuemax={progress?.total || 1} aria-valuenow={progress?.step ?? 0} aria-label="Progress">
                  <div className="brand-gradient h-full transition-all" style={{ width: `${progress && progress.total ? (100 * progress.step) / progress.total : 0}%` }} />
                </div>
              </div>
            )}
            {job?.status === "failed" && <ErrorNote error={{ message: job.error?.message ?? "The edit failed." }} />}
            <ol className="flex gap-2 overflow-x-auto pb-1" aria-label="Versions">
              {history.versions.map((v, i) => (
                <li key={v.id}>
                  <button
                    type="button"
                    onClick={() => setHistory((h) => select(h, i))}
                    className={`flex w-24 flex-col gap-1 rounded-lg border p-1 text-left text-xs ${i === history.at ? "border-white" : "border-line hover:border-neutral-500"}`}
                    aria-current={i === history.at ? "true" : undefined}
                    data-testid="edit-version"
                  >
                    <img src={v.url} alt="" className="aspect-square w-full rounded object-cover" />
                    <span className="truncate text-muted">
                      {i + 1}. {v.label}
                    </span>
                  </button>
                </li>
              ))}
            </ol>
          </>
        ) : (
          <p className="text-sm text-muted">Open an image to paint a mask over it, then inpaint or outpaint. Each result is a new version you can go back to.</p>
        )}
      </section>
    </div>
  );
}
