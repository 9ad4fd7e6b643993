// /edit: an image changed where a mask says (inpaint), what it covers removed (erase, LaMa
// or an inpainting model), on a larger canvas (outpaint), re-drawn in a style (restyle) or as
// an instruction says (instruct, InstructPix2Pix), its background cut away or replaced
// (IS-Net's matte). Transparent pixels show a checkerboard.
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
import { type History, type Sides, type Version, aspectSides, canRedo, canUndo, current, dragSide, empty, growAlpha, invertAlpha, lineage, maskPixels, originalBox, pushAfter, redo, select, start, undo } from "./history";

type Operation = "inpaint" | "erase" | "outpaint" | "restyle" | "instruct" | "remove_background" | "replace_background";
type Capability = "inpaint" | "img2img" | "instruct" | "erase" | "matte";
/** The model capabilities each operation's picker lists, in order (erase: LaMa first). */
const NEEDS: Record<Operation, Capability[]> = {
  inpaint: ["inpaint"],
  erase: ["erase", "inpaint"],
  outpaint: ["inpaint"],
  restyle: ["img2img"],
  instruct: ["instruct"],
  remove_background: ["matte"],
  replace_background: ["inpaint"],
};
/** The operations that take the painted mask. */
const MASKED: Operation[] = ["inpaint", "erase"];
/** The operations that cut the subject out with a matte. */
const MATTED: Operation[] = ["remove_background", "replace_background"];
const LABELS: Record<Operation, string> = {
  inpaint: "Inpaint",
  erase: "Erase",
  outpaint: "Outpaint",
  restyle: "Restyle",
  instruct: "Instruct",
  remove_background: "Remove background",
  replace_background: "Replace background",
};
type Tool = "brush" | "eraser" | "rect" | "lasso" | "select";
/** Clicks and a box for click-to-segment, on one version. */
interface Prompts {
  on: string;
  points: { x: number; y: number; label: number }[];
  box: [number, number, number, number] | null;
}
const ASPECTS = ["16:9", "9:16", "1:1", "4:3", "3:2", "2:3"] as const;
/** The mask as it is shown over the image. */
const MASK_RGB = [244, 63, 94] as const;
const MASK_COLOUR = `rgb(${MASK_RGB.join(", ")})`;

/** The mask layer over the image: painted with the pointer in image pixels. */
function MaskCanvas({
  version,
  tool,
  size,
  canvas,
  onChange,
  onPrompt,
}: {
  version: Version;
  tool: Tool;
  size: number;
  canvas: React.RefObject<HTMLCanvasElement | null>;
  onChange: () => void;
  /** Select: a click (label 1 adds, 0 removes) or a dragged box, in image pixels. */
  onPrompt: (p: { x: number; y: number; label: number } | { box: [number, number, number, number] }) => void;
}) {
  const last = useRef<{ x: number; y: number } | null>(null);
  const rectFrom = useRef<{ x: number; y: number } | null>(null);
  const button = useRef(0);
  const [rect, setRect] = useState<{ x: number; y: number; w: number; h: number } | null>(null);
  // The lasso's path so far, in image pixels.
  const [path, setPath] = useState<{ x: number; y: number }[] | null>(null);
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
        onContextMenu={(e) => tool === "select" && e.preventDefault()}
        onPointerDown={(e) => {
          e.currentTarget.setPointerCapture(e.pointerId);
          const p = at(e);
          if (tool === "select") {
            rectFrom.current = p;
            button.current = e.button;
          } else if (tool === "rect") {
            rectFrom.current = p;
            setRect({ x: p.x, y: p.y, w: 0, h: 0 });
          } else if (tool === "lasso") {
            setPath([p]);
          } else {
            last.current = p;
            stroke(p, p);
          }
        }}
        onPointerMove={(e) => {
          const p = at(e);
          if (path) {
            setPath([...path, p]);
          } else if (rectFrom.current) {
            const f = rectFrom.current;
            setRect({ x: Math.min(f.x, p.x), y: Math.min(f.y, p.y), w: Math.abs(p.x - f.x), h: Math.abs(p.y - f.y) });
          } else if (last.current) {
            stroke(last.current, p);
            last.current = p;
          }
        }}
        onPointerUp={(e) => {
          if (tool === "select" && rectFrom.current) {
            const f = rectFrom.current;
            const p = at(e);
            rectFrom.current = null;
            setRect(null);
            // A drag of a few screen pixels or more is a box; less, a click (right: remove).
            if (Math.hypot(p.x - f.x, p.y - f.y) > 6 * scale.current) {
              onPrompt({ box: [Math.min(f.x, p.x), Math.min(f.y, p.y), Math.max(f.x, p.x), Math.max(f.y, p.y)] });
            } else {
              onPrompt({ x: p.x, y: p.y, label: button.current === 2 ? 0 : 1 });
            }
            return;
          }
          if (rectFrom.current && rect) {
            const c = ctx();
            if (c) {
              c.globalCompositeOperation = "source-over";
              c.fillStyle = MASK_COLOUR;
              c.fillRect(rect.x, rect.y, rect.w, rect.h);
            }
          }
          const c = ctx();
          if (path && path.length > 2 && c) {
            c.globalCompositeOperation = "source-over";
            c.fillStyle = MASK_COLOUR;
            c.beginPath();
            c.moveTo(path[0].x, path[0].y);
            for (const q of path.slice(1)) c.lineTo(q.x, q.y);
            c.closePath();
            c.fill();
          }
          setPath(null);
          rectFrom.current = null;
          last.current = null;
          setRect(null);
          onChange();
        }}
      />
      {path && path.length > 1 && (
        <svg className="pointer-events-none absolute inset-0 h-full w-full" viewBox={`0 0 ${version.width} ${version.height}`} preserveAspectRatio="none">
          <polyline points={path.map((q) => `${q.x},${q.y}`).join(" ")} fill="none" stroke="white" strokeDasharray="4 3" vectorEffect="non-scaling-stroke" />
        </svg>
      )}
      {rect && (
        <div
          className="pointer-events-none absolute border border-dashed border-white"
          style={{ left: `${(100 * rect.x) / version.width}%`, top: `${(100 * rect.y) / version.height}%`, width: `${(100 * rect.w) / version.width}%`, height: `${(100 * rect.h) / version.height}%` }}
        />
      )}
    </div>
  );
}

/** Outpaint's frame: the canvas the image grows to, each edge dragged outwards (or back). */
function OutpaintFrame({ version, sides, target, onChange }: { version: Version; sides: Sides; target: { width: number; height: number }; onChange: (s: Sides) => void }) {
  const box = useRef<HTMLDivElement | null>(null);
  const from = useRef<{ side: keyof Sides; x: number; y: number; sides: Sides; scale: number } | null>(null);
  const edge: Record<keyof Sides, string> = {
    left: "left-0 top-0 h-full w-2 -translate-x-1/2 cursor-ew-resize",
    right: "right-0 top-0 h-full w-2 translate-x-1/2 cursor-ew-resize",
    top: "left-0 top-0 h-2 w-full -translate-y-1/2 cursor-ns-resize",
    bottom: "bottom-0 left-0 h-2 w-full translate-y-1/2 cursor-ns-resize",
  };
  return (
    <div ref={box} className="absolute inset-0 z-10 border-2 border-dashed border-white/70" data-testid="edit-frame">
      {(Object.keys(edge) as (keyof Sides)[]).map((side) => (
        <div
          key={side}
          role="separator"
          aria-label={`Drag the ${side} edge`}
          className={`absolute bg-white/80 ${edge[side]}`}
          data-testid={`edit-frame-${side}`}
          onPointerDown={(e) => {
            const b = box.current?.getBoundingClientRect();
            if (!b) return;
            e.currentTarget.setPointerCapture(e.pointerId);
            // Image pixels per screen pixel, as the frame is when the drag begins.
            const scale = side === "left" || side === "right" ? target.width / b.width : target.height / b.height;
            from.current = { side, x: e.clientX, y: e.clientY, sides, scale };
          }}
          onPointerMove={(e) => {
            const f = from.current;
            if (!f) return;
            const screen = f.side === "left" || f.side === "right" ? e.clientX - f.x : e.clientY - f.y;
            const out = f.side === "left" || f.side === "top" ? -screen : screen;
            onChange(dragSide(f.sides, f.side, out * f.scale, version.width, version.height));
          }}
          onPointerUp={() => (from.current = null)}
        />
      ))}
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
  // Opened from the gallery: its earlier versions (the parents' chain) join the strip,
  // unless editing has begun meanwhile.
  useEffect(() => {
    if (!fromGallery) return;
    let live = true;
    api
      .versions(fromGallery)
      .then((v) => {
        if (!live || v.versions.length < 2) return;
        setHistory((h) =>
          h.versions.length === 1 && h.versions[0].id === fromGallery
            ? lineage(v.versions.map((a, i) => ({ id: a.id, url: a.url, width: a.width ?? 0, height: a.height ?? 0, label: i === 0 ? "Original" : `Version ${i + 1}` })))
            : h,
        );
      })
      .catch(() => {});
    return () => {
      live = false;
    };
  }, [fromGallery]);
  const version = current(history);
  const original = history.versions[0];
  const [operation, setOperation] = useState<Operation>("inpaint");
  const [submitting, setSubmitting] = useState(false);
  const [tool, setTool] = useState<Tool>("brush");
  const [brush, setBrush] = useState(32);
  // The version whose mask has paint on it (a new version's mask starts clear).
  const [paintedOn, setPaintedOn] = useState<string | null>(null);
  const painted = !!version && paintedOn === version.id;
  const [prompt, setPrompt] = useState("");
  // Left to the operation's default (1 to inpaint and outpaint, 0.6 to restyle) until moved.
  const [strengthSet, setStrength] = useState<number | null>(null);
  const strength = strengthSet ?? (operation === "restyle" ? 0.6 : 1);
  const [grow, setGrow] = useState(4);
  const [blur, setBlur] = useState(4);
  const [aspect, setAspect] = useState<(typeof ASPECTS)[number]>("16:9");
  const [comparing, setComparing] = useState(false);
  const [zoom, setZoom] = useState(1);
  // Outpaint: the frame dragged beyond the image (null: the aspect preset's).
  const [draggedOn, setDraggedOn] = useState<{ on: string; sides: Sides } | null>(null);
  const viewport = useRef<HTMLDivElement | null>(null);
  // A new version starts from the preset's frame.
  const shownId = current(history)?.id;
  const dragged = draggedOn && draggedOn.on === shownId ? draggedOn.sides : null;
  const setDragged = (sides: Sides | null) => setDraggedOn(sides && shownId ? { on: shownId, sides } : null);
  // Ctrl (or ⌘) and the wheel zoom the picture; the wheel alone scrolls (pans) it.
  useEffect(() => {
    const v = viewport.current;
    if (!v) return;
    const wheel = (e: WheelEvent) => {
      if (!e.ctrlKey && !e.metaKey) return;
      e.preventDefault();
      setZoom((z) => Math.min(8, Math.max(1, e.deltaY < 0 ? z * 1.25 : z / 1.25)));
    };
    v.addEventListener("wheel", wheel, { passive: false });
    return () => v.removeEventListener("wheel", wheel);
  });
  const models = useLoad(
    () => Promise.all(NEEDS[operation].map((c) => api.models(c))).then((lists) => lists.flatMap((r) => r.models).filter((m, i, all) => m.installed && all.findIndex((x) => x.id === m.id) === i)),
    NEEDS[operation].join(),
  );
  // Replace background: an uploaded picture, or one painted from the prompt.
  const [backdrop, setBackdrop] = useState<{ id: string; name: string } | null>(null);
  const [backdropMode, setBackdropMode] = useState<"image" | "prompt">("prompt");
  const mattes = useLoad(() => api.models("matte").then((r) => r.models));
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
  const segmenters = useLoad(() => api.models("segment").then((r) => r.models));
  const [segmenter, setSegmenter] = useState("");
  const [prompts, setPrompts] = useState<Prompts | null>(null);
  const shownPrompts = prompts && version && prompts.on === version.id ? prompts : null;
  const [segmenting, setSegmenting] = useState(false);
  const [segmentNote, setSegmentNote] = useState<string | null>(null);

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
    setPrompts(null);
    setSegmentNote(null);
  }

  /** Click to segment: every click and the box so far give the mask, which replaces the
   * mask layer. */
  async function segment(p: { x: number; y: number; label: number } | { box: [number, number, number, number] }) {
    if (!version) return;
    const base: Prompts = shownPrompts ?? { on: version.id, points: [], box: null };
    const next: Prompts = "box" in p ? { ...base, box: p.box } : { ...base, points: [...base.points, p] };
    setPrompts(next);
    setSegmenting(true);
    setError(null);
    try {
      const r = await api.segment({
        image: version.id,
        points: next.points.map((q) => ({ x: q.x, y: q.y, label: q.label })),
        box: next.box ?? undefined,
        model: segmenter || undefined,
      });
      const img = new Image();
      img.src = r.mask.url;
      await img.decode();
      const c = mask.current;
      if (!c) return;
      const tmp = document.createElement("canvas");
      tmp.width = c.width;
      tmp.height = c.height;
      const t = tmp.getContext("2d")!;
      t.drawImage(img, 0, 0, c.width, c.height);
      const drawn = t.getImageData(0, 0, c.width, c.height).data;
      // The mask's white is the layer's paint.
      changeLayer((a) => {
        for (let i = 0; i < a.length; i += 4) a[i + 3] = drawn[i] >= 128 ? 255 : 0;
      });
      setSegmentNote(`Mask ${r.embedded ? "(image read)" : ""} · score ${r.score.toFixed(2)}`);
    } catch (e) {
      setError(asApiError(e));
    } finally {
      setSegmenting(false);
    }
  }

  function checkPainted() {
    const c = mask.current;
    const data = c?.getContext("2d")?.getImageData(0, 0, c.width, c.height).data;
    setPaintedOn(data && version && maskPixels(data).painted ? version.id : null);
  }

  /** Changes the mask layer's opacity (`change` gets its RGBA bytes); every pixel then
   * takes the mask's colour, so paint that appears is shown as the rest. */
  function changeLayer(change: (rgba: Uint8ClampedArray) => void) {
    const c = mask.current;
    const g = c?.getContext("2d");
    if (!c || !g) return;
    const data = g.getImageData(0, 0, c.width, c.height);
    change(data.data);
    for (let i = 0; i < data.data.length; i += 4) data.data.set(MASK_RGB, i);
    g.putImageData(data, 0, 0);
    checkPainted();
  }

  /** Grows (or shrinks) the painted mask by `r` screen pixels. */
  function reshape(r: number) {
    const c = mask.current;
    if (!c) return;
    const px = Math.max(1, Math.round((Math.abs(r) * c.width) / Math.max(1, c.getBoundingClientRect().width)));
    changeLayer((a) => growAlpha(a, c.width, c.height, Math.sign(r) * px));
  }

  function invert() {
    changeLayer(invertAlpha);
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
          const p = (j.params ?? {}) as { operation?: Operation; aspect?: string; image?: string; extend?: Sides };
          const label = `${LABELS[p.operation ?? "inpaint"]}${p.operation === "outpaint" && p.aspect ? ` ${p.aspect}` : ""}`;
          // After the version it was made from, whichever is shown now; an outpaint with
          // what it added around it (so the comparison can place the original).
          setHistory((h) => {
            const parent = h.versions.find((v) => v.id === p.image);
            const [aw, ah] = (p.aspect ?? "").split(":").map(Number);
            const added =
              p.operation !== "outpaint" || !parent ? undefined : (p.extend ?? (aw > 0 && ah > 0 && parent.width > 0 ? aspectSides(parent.width, parent.height, aw, ah) : undefined));
            return pushAfter(h, p.image ?? "", { id: out.id, url: out.url, width: out.width ?? 0, height: out.height ?? 0, label, added });
          });
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
    if (!version || submitting) return;
    setError(null);
    setSubmitting(true);
    try {
      const common = { image: version.id, prompt: prompt.trim() || undefined, model: chosenModel || undefined, strength: strengthSet ?? undefined, grow, blur };
      if (operation === "inpaint") {
        setJob(await api.edit({ ...common, operation, mask: await uploadMask() }));
      } else if (operation === "erase") {
        setJob(await api.edit({ image: version.id, operation, mask: await uploadMask(), model: chosenModel || undefined, blur }));
      } else if (operation === "outpaint") {
        setJob(await api.edit(dragged ? { ...common, operation, extend: dragged } : { ...common, operation, aspect }));
      } else if (operation === "restyle") {
        setJob(await api.edit({ ...common, operation, style: style || undefined }));
      } else if (operation === "remove_background") {
        setJob(await api.edit({ image: version.id, operation, matte_model: chosenModel || undefined }));
      } else if (operation === "replace_background") {
        setJob(
          await api.edit(
            backdropMode === "image"
              ? { image: version.id, operation, background: backdrop?.id }
              : { image: version.id, operation, prompt: prompt.trim(), model: chosenModel || undefined },
          ),
        );
      } else {
        setJob(await api.edit({ image: version.id, operation, prompt: prompt.trim(), model: chosenModel || undefined, image_guidance: imageGuidance }));
      }
    } catch (e) {
      setError(asApiError(e));
    } finally {
      setSubmitting(false);
    }
  }

  const running = job && !["completed", "failed", "cancelled"].includes(job.status);
  const progress = live?.progress ?? job?.progress;
  const [aw, ah] = aspect.split(":").map(Number);
  const sides = version && version.width > 0 ? (dragged ?? aspectSides(version.width, version.height, aw, ah)) : null;
  const target = version && sides ? { width: version.width + sides.left + sides.right, height: version.height + sides.top + sides.bottom } : null;
  const sameSize = target && version && target.width === version.width && target.height === version.height;
  // Outpaint shows the frame it will fill: the canvas grown by `sides`, the image inside.
  const framed = operation === "outpaint" && !!version && !!sides && !!target && !comparing;
  const canvasSize = framed && target ? target : { width: version?.width || 1, height: version?.height || 1 };
  const byImage = operation === "replace_background" && backdropMode === "image";
  const ready =
    !!version &&
    !running &&
    !submitting &&
    (byImage ? !!backdrop : !!chosenModel) &&
    (MASKED.includes(operation) ? painted : operation === "outpaint" ? !sameSize : operation === "instruct" || operation === "replace_background" ? byImage || prompt.trim() !== "" : true);
  const chosen = (models.data ?? []).find((m) => m.id === chosenModel);
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
              <Chip
                key={o}
                active={operation === o}
                onClick={() => {
                  // The mask layer goes with the inpaint view: back to it, it starts clear.
                  setOperation(o);
                  setPaintedOn(null);
                }}
              >
                {LABELS[o]}
              </Chip>
            ))}
          </div>
        </div>
        {MASKED.includes(operation) ? (
          <div className="flex flex-col gap-3 rounded-xl border border-line p-3">
            <div className="flex flex-wrap gap-1.5" role="group" aria-label="Mask tool">
              {(["brush", "eraser", "rect", "lasso", "select"] as const)
                .filter((t) => t !== "select" || (segmenters.data ?? []).length > 0)
                .map((t) => (
                  <Chip key={t} active={tool === t} onClick={() => setTool(t)}>
                    {{ rect: "Rectangle", lasso: "Lasso", brush: "Brush", eraser: "Eraser", select: "Select object" }[t]}
                  </Chip>
                ))}
            </div>
            {tool === "select" && (segmenters.data ?? []).length > 1 && (
              <Select value={segmenter} onChange={(e) => setSegmenter(e.target.value)} aria-label="Segmentation model">
                <option value="">Default ({(segmenters.data ?? []).find((m) => m.installed)?.name ?? segmenters.data?.[0]?.name})</option>
                {(segmenters.data ?? []).map((m) => (
                  <option key={m.id} value={m.id}>
                    {m.name}
                    {m.installed ? "" : " (downloads on first click)"}
                  </option>
                ))}
              </Select>
            )}
            {tool === "select" && (
              <p className="text-xs text-muted" data-testid="edit-segment">
                {segmenting
                  ? "Finding the object…"
                  : (segmentNote ??
                    `Click the object (right-click: not this), or drag a box.${segmenters.data?.[0] && !segmenters.data.some((m) => m.installed) ? " The model downloads on the first click." : ""}`)}
              </p>
            )}
            <Amount label="Brush size (screen px)" value={brush} max={200} step={1} digits={0} onChange={setBrush} testId="edit-brush" />
            <div className="flex gap-2">
              <Button size="sm" onClick={invert} disabled={!version}>
                Invert
              </Button>
              <Button size="sm" onClick={() => reshape(8)} disabled={!painted} aria-label="Grow the mask">
                Grow
              </Button>
              <Button size="sm" onClick={() => reshape(-8)} disabled={!painted} aria-label="Shrink the mask">
                Shrink
              </Button>
              <Button size="sm" onClick={clearMask} disabled={!painted}>
                Clear
              </Button>
            </div>
            {operation === "inpaint" && <Amount label="Grow (px)" value={grow} max={64} step={1} digits={0} onChange={setGrow} testId="edit-grow" />}
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
        ) : operation !== "outpaint" ? null : (
          <div className="flex flex-col gap-3 rounded-xl border border-line p-3">
            <div className="flex flex-wrap gap-1.5" role="group" aria-label="Aspect">
              {ASPECTS.map((a) => (
                <Chip
                  key={a}
                  active={!dragged && aspect === a}
                  onClick={() => {
                    setAspect(a);
                    setDragged(null);
                  }}
                >
                  {a}
                </Chip>
              ))}
            </div>
            {target && version && (
              <p className="text-xs text-muted" data-testid="edit-outpaint-size">
                {version.width} × {version.height} → {target.width} × {target.height}
                {sameSize && (dragged ? " (drag the frame's edges out)" : " (already this shape)")}
              </p>
            )}
            <p className="text-xs text-muted">Or drag the frame's edges beyond the image.</p>
          </div>
        )}
        {operation === "replace_background" && (
          <div className="flex flex-col gap-3 rounded-xl border border-line p-3">
            <div className="flex flex-wrap gap-1.5" role="group" aria-label="New background">
              <Chip active={backdropMode === "prompt"} onClick={() => setBackdropMode("prompt")}>
                Paint from a prompt
              </Chip>
              <Chip active={backdropMode === "image"} onClick={() => setBackdropMode("image")}>
                An image
              </Chip>
            </div>
            {backdropMode === "image" && (
              <label className="flex cursor-pointer flex-col gap-1 text-sm text-muted">
                <span>{backdrop ? `Background: ${backdrop.name}` : "Choose the background image"}</span>
                <input
                  type="file"
                  accept="image/*"
                  aria-label="Background image"
                  className="text-xs"
                  onChange={async (e) => {
                    const f = e.target.files?.[0];
                    if (!f) return;
                    try {
                      setBackdrop({ id: (await api.upload(f)).id, name: f.name });
                    } catch (err) {
                      setError(asApiError(err));
                    }
                  }}
                />
              </label>
            )}
          </div>
        )}
        {MATTED.includes(operation) && (
          <p className="text-xs text-muted" data-testid="edit-matte-note">
            {operation === "remove_background" ? "Cuts the subject out: the background becomes transparent." : "Keeps the subject and puts a new background behind it."}
            {mattes.data?.[0] && !mattes.data.some((m) => m.installed) && " The background-removal model downloads on first use."}
          </p>
        )}
        {operation === "remove_background" || byImage ? null : operation === "erase" ? (
          <p className="text-xs text-muted">Removes what the mask covers, filled in from its surroundings.</p>
        ) : (
          <label className="flex flex-col gap-1.5">
            <span className="text-xs font-medium uppercase tracking-wide text-muted">{operation === "instruct" ? "Instruction" : "Prompt (optional)"}</span>
            <Textarea
              rows={2}
              value={prompt}
              maxLength={4000}
              onChange={(e) => setPrompt(e.target.value)}
              placeholder={operation === "instruct" ? "Make it winter" : operation === "replace_background" ? "A sunny beach" : "What to paint there"}
              aria-label={operation === "instruct" ? "Instruction" : "Prompt"}
            />
          </label>
        )}
        {["inpaint", "outpaint", "restyle"].includes(operation) && <Amount label="Strength" value={strength} onChange={setStrength} testId="edit-strength" />}
        {!byImage && (
        <label className="flex flex-col gap-1.5">
          <span className="text-xs font-medium uppercase tracking-wide text-muted">{operation === "remove_background" ? "Background-removal model" : "Image model"}</span>
          {models.error ? (
            <ErrorNote error={models.error} onRetry={models.reload} />
          ) : (
            <Select value={chosenModel} onChange={(e) => setModel(e.target.value)} aria-label="Image model">
              {(models.data ?? []).length === 0 && (
                <option value="">{operation === "instruct" ? "No instruction-editing model installed" : operation === "remove_background" ? "No background-removal model installed" : "No image model installed"}</option>
              )}
              {(models.data ?? []).map((m) => (
                <option key={m.id} value={m.id}>
                  {m.name}
                </option>
              ))}
            </Select>
          )}
          {chosen?.license && (
            <span className="text-xs text-muted" data-testid="edit-license">
              Licence: {chosen.license}
            </span>
          )}
        </label>
        )}
        <Button variant="primary" size="lg" disabled={!ready} onClick={run} data-testid="edit-run">
          {running && <Spinner />}
          {MASKED.includes(operation) && !painted ? "Paint a mask first" : LABELS[operation]}
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
                <input type="checkbox" checked={comparing} onChange={(e) => {
                    setComparing(e.target.checked);
                    setPaintedOn(null);
                  }} disabled={history.at === 0} data-testid="edit-compare" />
                Compare with the original
              </label>
              <span className="flex items-center gap-1">
                <Button size="sm" onClick={() => setZoom((z) => Math.max(1, z / 2))} disabled={zoom <= 1} aria-label="Zoom out">
                  −
                </Button>
                <span className="w-12 text-center tabular-nums text-muted" data-testid="edit-zoom">
                  {Math.round(zoom * 100)}%
                </span>
                <Button size="sm" onClick={() => setZoom((z) => Math.min(8, z * 2))} disabled={zoom >= 8} aria-label="Zoom in">
                  +
                </Button>
              </span>
              <span className="ml-auto text-muted" data-testid="edit-size">
                {version.width} × {version.height}
              </span>
              <a href={version.url} download className="rounded-lg bg-white px-3 py-1.5 font-medium text-neutral-950" data-testid="edit-download">
                Download
              </a>
            </div>
            {comparing && original && history.at > 0 ? (
              <Compare before={original.url} after={version.url} width={version.width || 1} height={version.height || 1} beforeBox={originalBox(history)} />
            ) : (
              // Zoomed, the picture is wider than its frame: the frame scrolls (pans).
              <div ref={viewport} className="max-h-[75vh] overflow-auto rounded-2xl border border-line" data-testid="edit-viewport">
              <div className="checkerboard relative" style={{ width: `${zoom * 100}%`, aspectRatio: `${canvasSize.width} / ${canvasSize.height}` }} data-testid="edit-canvas">
                {framed && sides && target && <OutpaintFrame version={version} sides={sides} target={target} onChange={setDragged} />}
                <img
                  src={version.url}
                  alt={`Version ${history.at + 1}: ${version.label}`}
                  draggable={false}
                  className="absolute h-full w-full object-contain"
                  style={
                    framed && sides && target
                      ? { left: `${(100 * sides.left) / target.width}%`, top: `${(100 * sides.top) / target.height}%`, width: `${(100 * version.width) / target.width}%`, height: `${(100 * version.height) / target.height}%` }
                      : { left: 0, top: 0 }
                  }
                  data-testid="edit-image"
                  data-version={version.id}
                />
                {MASKED.includes(operation) && version.width > 0 && <MaskCanvas key={version.id} version={version} tool={tool} size={brush} canvas={mask} onChange={checkPainted} onPrompt={(p) => void segment(p)} />}
                {MASKED.includes(operation) &&
                  shownPrompts?.points.map((p, i) => (
                    <span
                      key={i}
                      className={`pointer-events-none absolute h-2.5 w-2.5 -translate-x-1/2 -translate-y-1/2 rounded-full border border-white ${p.label ? "bg-emerald-500" : "bg-red-600"}`}
                      style={{ left: `${(100 * p.x) / version.width}%`, top: `${(100 * p.y) / version.height}%` }}
                      data-testid="edit-click"
                    />
                  ))}
              </div>
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
          <p className="text-sm text-muted">Open an image to edit it: paint or click a mask to inpaint or erase, outpaint, restyle, follow an instruction, or remove the background. Each result is a new version you can go back to.</p>
        )}
      </section>
    </div>
  );
}
