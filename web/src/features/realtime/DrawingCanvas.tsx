// The drawing surface (Konva): one Konva layer per canvas layer, the tools, selection with
// move/resize/rotate, and the export the stream sends. Shapes live in canvas units
// (`UNITS` square) whatever the size on screen.

import type Konva from "konva";
import { forwardRef, useEffect, useImperativeHandle, useRef, useState } from "react";
import { Circle, Image as KonvaImage, Layer, Line, Rect, Stage, Transformer } from "react-konva";
import { useStore } from "zustand";
import type { StoreApi } from "zustand/vanilla";
import { newId, placed, type CanvasState, type Layer as CanvasLayer, type Shape } from "./canvas";
import { floodMask, hexToRgba, paintMask, rgbToHex } from "./floodfill";
import { liveVideo } from "./live";

export const UNITS = 512;

export interface DrawingHandle {
  /** The visible layers composed on white paper, `size` pixels square. */
  compose(size: number): HTMLCanvasElement;
  /** The composition as JPEG bytes. */
  jpeg(size: number): Promise<Uint8Array>;
}

const images = new Map<string, HTMLImageElement>();
/** An image element for `src`; `onLoad` runs when one that was still loading arrives (the
 * canvas changed after the frame was sent). */
function useImage(src: string, onLoad: () => void): HTMLImageElement | null {
  // The source whose image has arrived since this shape was drawn.
  const [arrived, setArrived] = useState<string | null>(null);
  useEffect(() => {
    let el = images.get(src);
    if (!el) {
      el = new window.Image();
      el.src = src;
      images.set(src, el);
    }
    const wasLoading = !el.complete;
    let current = true;
    el.decode().then(
      () => {
        if (!current) return;
        setArrived(src);
        if (wasLoading) onLoad();
      },
      () => {},
    );
    return () => {
      current = false;
    };
  }, [src, onLoad]);
  const el = images.get(src);
  return el && (el.complete || arrived === src) ? el : null;
}

function ImageShape({ shape, common, onLoad }: { shape: Extract<Shape, { kind: "image" }>; common: Record<string, unknown>; onLoad: () => void }) {
  const img = useImage(shape.src, onLoad);
  return <KonvaImage {...common} image={img ?? undefined} width={shape.width} height={shape.height} />;
}

/** A webcam or screen layer: its video drawn as it plays. */
function LiveShape({ layerId, onFrame }: { layerId: string; onFrame: () => void }) {
  const ref = useRef<Konva.Image>(null);
  const video = liveVideo(layerId);
  useEffect(() => {
    if (!video) return;
    let raf = 0;
    let last = 0;
    const tick = (t: number) => {
      ref.current?.getLayer()?.batchDraw();
      // The stream takes frames at its own pace; 15 offers a second is plenty.
      if (t - last > 66) {
        last = t;
        onFrame();
      }
      raf = requestAnimationFrame(tick);
    };
    raf = requestAnimationFrame(tick);
    return () => cancelAnimationFrame(raf);
  }, [video, onFrame]);
  if (!video) return null;
  const w = video.videoWidth || UNITS;
  const h = video.videoHeight || UNITS;
  const s = Math.max(UNITS / w, UNITS / h);
  return <KonvaImage ref={ref} image={video} width={w * s} height={h * s} x={(UNITS - w * s) / 2} y={(UNITS - h * s) / 2} listening={false} />;
}

function ShapeNode({
  shape,
  draggable,
  onSelect,
  onChange,
  onLoad,
}: {
  shape: Shape;
  draggable: boolean;
  onSelect: () => void;
  onChange: (p: Partial<Shape>) => void;
  onLoad: () => void;
}) {
  const common = {
    id: shape.id,
    x: shape.x,
    y: shape.y,
    rotation: shape.rotation,
    scaleX: shape.scaleX,
    scaleY: shape.scaleY,
    opacity: shape.opacity,
    draggable,
    onPointerDown: draggable ? onSelect : undefined,
    onDragEnd: (e: Konva.KonvaEventObject<DragEvent>) => onChange({ x: e.target.x(), y: e.target.y() }),
    onTransformEnd: (e: Konva.KonvaEventObject<Event>) => {
      const n = e.target;
      onChange({ x: n.x(), y: n.y(), rotation: n.rotation(), scaleX: n.scaleX(), scaleY: n.scaleY() });
    },
  };
  switch (shape.kind) {
    case "stroke":
      return (
        <Line
          {...common}
          points={shape.points}
          stroke={shape.color}
          strokeWidth={shape.size}
          lineCap="round"
          lineJoin="round"
          tension={0.4}
          globalCompositeOperation={shape.erase ? "destination-out" : "source-over"}
          hitStrokeWidth={Math.max(shape.size, 12)}
        />
      );
    case "line":
      return <Line {...common} points={shape.points} stroke={shape.color} strokeWidth={shape.size} lineCap="round" hitStrokeWidth={Math.max(shape.size, 12)} />;
    case "polygon":
      return <Line {...common} points={shape.points} fill={shape.color} closed />;
    case "rect":
      return <Rect {...common} width={shape.width} height={shape.height} fill={shape.color} />;
    case "circle":
      return <Circle {...common} radius={shape.radius} fill={shape.color} />;
    case "image":
      return <ImageShape shape={shape} common={common} onLoad={onLoad} />;
  }
}

const cssBlend = (b: CanvasLayer["blend"]) => (b === "source-over" ? "normal" : b);

export const DrawingCanvas = forwardRef<DrawingHandle, { store: StoreApi<CanvasState>; size: number }>(function DrawingCanvas({ store, size }, ref) {
  const s = useStore(store);
  const stage = useRef<Konva.Stage>(null);
  const konvaLayers = useRef(new Map<string, Konva.Layer>());
  const transformer = useRef<Konva.Transformer>(null);
  const [draft, setDraft] = useState<Shape | null>(null);
  const start = useRef<{ x: number; y: number } | null>(null);
  const scale = size / UNITS;

  // Opacity and blend modes apply between layers: on each layer's own <canvas>.
  useEffect(() => {
    for (const l of s.layers) {
      const el = konvaLayers.current.get(l.id)?.getCanvas()._canvas;
      if (el) {
        el.style.opacity = String(l.opacity);
        el.style.mixBlendMode = cssBlend(l.blend);
      }
    }
  });

  useEffect(() => {
    const t = transformer.current;
    if (!t) return;
    const node = s.selectedId && s.tool === "select" ? stage.current?.findOne(`#${s.selectedId}`) : null;
    t.nodes(node ? [node] : []);
    t.getLayer()?.batchDraw();
  }, [s.selectedId, s.tool, s.layers]);

  const compose = (px: number) => {
    const out = document.createElement("canvas");
    out.width = out.height = px;
    const ctx = out.getContext("2d")!;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, px, px);
    for (const l of store.getState().layers) {
      const k = konvaLayers.current.get(l.id);
      if (!l.visible || !k) continue;
      const c = k.toCanvas({ pixelRatio: px / size });
      ctx.globalAlpha = l.opacity;
      ctx.globalCompositeOperation = l.blend;
      ctx.drawImage(c, 0, 0, px, px);
    }
    return out;
  };

  useImperativeHandle(ref, () => ({
    compose,
    jpeg: (px: number) =>
      new Promise<Uint8Array>((resolve, reject) =>
        compose(px).toBlob(
          (b) => (b ? b.arrayBuffer().then((a) => resolve(new Uint8Array(a)), reject) : reject(new Error("the canvas could not be encoded"))),
          "image/jpeg",
          0.9,
        ),
      ),
  }));

  const pos = () => stage.current?.getRelativePointerPosition() ?? { x: 0, y: 0 };
  const active = s.layers.find((l) => l.id === s.activeId);
  const locked = !active || active.kind === "webcam" || active.kind === "screen";

  function down(e: Konva.KonvaEventObject<PointerEvent>) {
    const p = pos();
    const st = store.getState();
    if (st.tool === "select") {
      if (e.target === stage.current) st.select(null);
      return;
    }
    if (st.tool === "eyedropper") {
      const c = compose(size).getContext("2d")!;
      const [r, g, b] = c.getImageData(Math.floor(p.x * scale), Math.floor(p.y * scale), 1, 1).data;
      st.setBrush({ color: rgbToHex(r, g, b) });
      st.setTool("brush");
      return;
    }
    if (locked) return;
    if (st.tool === "fill") {
      const k = konvaLayers.current.get(st.activeId);
      if (!k) return;
      const c = k.toCanvas({ pixelRatio: UNITS / size });
      const ctx = c.getContext("2d")!;
      const img = ctx.getImageData(0, 0, c.width, c.height);
      const mask = floodMask(img, p.x, p.y, 48);
      const out = document.createElement("canvas");
      out.width = c.width;
      out.height = c.height;
      out.getContext("2d")!.putImageData(new ImageData(paintMask(mask, c.width, c.height, hexToRgba(st.color)), c.width, c.height), 0, 0);
      st.addShape({ ...placed(), id: newId("s"), kind: "image", width: UNITS, height: UNITS, src: out.toDataURL("image/png"), opacity: st.opacity });
      return;
    }
    const base = { ...placed(), id: newId("s"), opacity: st.opacity };
    start.current = p;
    switch (st.tool) {
      case "brush":
      case "eraser":
        setDraft({ ...base, kind: "stroke", points: [p.x, p.y, p.x + 0.01, p.y], color: st.color, size: st.size, erase: st.tool === "eraser", opacity: st.tool === "eraser" ? 1 : st.opacity });
        break;
      case "rect":
        setDraft({ ...base, kind: "rect", x: p.x, y: p.y, width: 0, height: 0, color: st.color });
        break;
      case "circle":
        setDraft({ ...base, kind: "circle", x: p.x, y: p.y, radius: 0, color: st.color });
        break;
      case "line":
        setDraft({ ...base, kind: "line", points: [p.x, p.y, p.x, p.y], color: st.color, size: st.size });
        break;
      case "polygon":
        setDraft((d) => {
          if (d?.kind === "polygon") {
            const [x0, y0] = d.points;
            // A click near the first point closes the polygon.
            if (d.points.length >= 6 && Math.hypot(p.x - x0, p.y - y0) < 10) {
              st.addShape(d);
              return null;
            }
            return { ...d, points: [...d.points, p.x, p.y] };
          }
          return { ...base, kind: "polygon", points: [p.x, p.y], color: st.color };
        });
        start.current = null;
        break;
    }
  }

  function move() {
    if (!start.current || !draft) return;
    const p = pos();
    const o = start.current;
    switch (draft.kind) {
      case "stroke":
        setDraft({ ...draft, points: [...draft.points, p.x, p.y] });
        break;
      case "rect":
        setDraft({ ...draft, x: Math.min(o.x, p.x), y: Math.min(o.y, p.y), width: Math.abs(p.x - o.x), height: Math.abs(p.y - o.y) });
        break;
      case "circle":
        setDraft({ ...draft, radius: Math.hypot(p.x - o.x, p.y - o.y) });
        break;
      case "line":
        setDraft({ ...draft, points: [o.x, o.y, p.x, p.y] });
        break;
    }
  }

  function up() {
    if (!start.current || !draft) return;
    start.current = null;
    const tiny = (draft.kind === "rect" && (draft.width < 2 || draft.height < 2)) || (draft.kind === "circle" && draft.radius < 1);
    if (!tiny) store.getState().addShape(draft);
    setDraft(null);
  }

  useEffect(() => {
    const key = (e: KeyboardEvent) => {
      if (e.key === "Escape") setDraft(null);
      if (e.key === "Enter" && draft?.kind === "polygon" && draft.points.length >= 6) {
        store.getState().addShape(draft);
        setDraft(null);
      }
    };
    window.addEventListener("keydown", key);
    return () => window.removeEventListener("keydown", key);
  }, [draft, store]);

  const touch = s.touch;
  const selecting = s.tool === "select";
  return (
    <Stage
      ref={stage}
      width={size}
      height={size}
      scaleX={scale}
      scaleY={scale}
      onPointerDown={down}
      onPointerMove={move}
      onPointerUp={up}
      onPointerLeave={up}
      onDblClick={() => {
        if (draft?.kind === "polygon" && draft.points.length >= 6) {
          store.getState().addShape(draft);
          setDraft(null);
        }
      }}
      style={{ background: "#ffffff", touchAction: "none", cursor: selecting ? "default" : "crosshair" }}
    >
      {s.layers.map((l) => (
        <Layer
          key={l.id}
          visible={l.visible}
          ref={(k) => {
            if (k) konvaLayers.current.set(l.id, k);
            else konvaLayers.current.delete(l.id);
          }}
        >
          {l.kind === "webcam" || l.kind === "screen" ? <LiveShape layerId={l.id} onFrame={touch} /> : null}
          {l.shapes.map((sh) => (
            <ShapeNode
              key={sh.id}
              shape={sh}
              draggable={selecting && l.id === s.activeId}
              onSelect={() => store.getState().select(sh.id)}
              onChange={(p) => store.getState().updateShape(sh.id, p)}
              onLoad={touch}
            />
          ))}
          {draft && l.id === s.activeId && <ShapeNode shape={draft} draggable={false} onSelect={() => {}} onChange={() => {}} onLoad={touch} />}
        </Layer>
      ))}
      <Layer>
        <Transformer ref={transformer} rotateEnabled keepRatio={false} />
      </Layer>
    </Stage>
  );
});
