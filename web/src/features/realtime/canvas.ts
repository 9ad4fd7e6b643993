// The drawing canvas: layers of shapes, the current tool and colour, and undo/redo. Every
// change makes new arrays, so a history entry is just the layers as they were.

import { createStore } from "zustand/vanilla";

export type Tool = "brush" | "eraser" | "rect" | "circle" | "line" | "polygon" | "select" | "eyedropper" | "fill";

export const BLENDS = ["source-over", "multiply", "screen", "overlay", "darken", "lighten", "difference", "color-dodge", "color-burn"] as const;
export type Blend = (typeof BLENDS)[number];

interface Placed {
  id: string;
  x: number;
  y: number;
  rotation: number;
  scaleX: number;
  scaleY: number;
  opacity: number;
}

export type Shape =
  | (Placed & { kind: "stroke"; points: number[]; color: string; size: number; erase: boolean })
  | (Placed & { kind: "rect"; width: number; height: number; color: string })
  | (Placed & { kind: "circle"; radius: number; color: string })
  | (Placed & { kind: "line"; points: number[]; color: string; size: number })
  | (Placed & { kind: "polygon"; points: number[]; color: string })
  | (Placed & { kind: "image"; width: number; height: number; src: string });

export type LayerKind = "paint" | "image" | "webcam" | "screen";

export interface Layer {
  id: string;
  name: string;
  kind: LayerKind;
  visible: boolean;
  opacity: number;
  blend: Blend;
  shapes: Shape[];
}

export interface CanvasState {
  layers: Layer[];
  activeId: string;
  tool: Tool;
  color: string;
  size: number;
  opacity: number;
  selectedId: string | null;
  past: Layer[][];
  future: Layer[][];
  /** Counts changes to what the canvas shows (sends follow it). */
  revision: number;

  setTool(t: Tool): void;
  setBrush(p: Partial<Pick<CanvasState, "color" | "size" | "opacity">>): void;
  addLayer(kind?: LayerKind, name?: string, shapes?: Shape[]): string;
  removeLayer(id: string): void;
  moveLayer(id: string, to: number): void;
  updateLayer(id: string, patch: Partial<Pick<Layer, "name" | "visible" | "opacity" | "blend">>): void;
  setActive(id: string): void;
  addShape(shape: Shape, layerId?: string): void;
  updateShape(id: string, patch: Partial<Shape>): void;
  removeShape(id: string): void;
  select(id: string | null): void;
  /** Empties the active layer. */
  clear(): void;
  undo(): void;
  redo(): void;
  /** A live layer's picture changed (webcam, screen): resend without a history entry. */
  touch(): void;
}

const HISTORY = 100;
let counter = 0;
export const newId = (prefix: string) => `${prefix}${Date.now().toString(36)}${(counter++).toString(36)}`;

export function placed(): Omit<Placed, "id"> {
  return { x: 0, y: 0, rotation: 0, scaleX: 1, scaleY: 1, opacity: 1 };
}

function layer(kind: LayerKind, name: string, shapes: Shape[] = []): Layer {
  return { id: newId("l"), name, kind, visible: true, opacity: 1, blend: "source-over", shapes };
}

/** Whether anything visible is drawn (else the stream is text only). */
export function hasContent(layers: Layer[]): boolean {
  return layers.some((l) => l.visible && l.opacity > 0 && (l.shapes.length > 0 || l.kind === "webcam" || l.kind === "screen"));
}

export function createCanvasStore() {
  return createStore<CanvasState>()((set, get) => {
    /** Applies a change to the layers as one undoable step. */
    const commit = (layers: Layer[], extra: Partial<CanvasState> = {}) => {
      const s = get();
      set({
        layers,
        past: [...s.past.slice(-(HISTORY - 1)), s.layers],
        future: [],
        revision: s.revision + 1,
        ...extra,
      });
    };
    const mapShapes = (f: (sh: Shape) => Shape | null) =>
      get().layers.map((l) => ({ ...l, shapes: l.shapes.map(f).filter((x): x is Shape => x !== null) }));
    const first = layer("paint", "Layer 1");
    return {
      layers: [first],
      activeId: first.id,
      tool: "brush",
      color: "#e4572e",
      size: 12,
      opacity: 1,
      selectedId: null,
      past: [],
      future: [],
      revision: 0,

      setTool(tool) {
        set({ tool, selectedId: tool === "select" ? get().selectedId : null });
      },
      setBrush(p) {
        set(p);
      },
      addLayer(kind = "paint", name, shapes = []) {
        const l = layer(kind, name ?? `Layer ${get().layers.length + 1}`, shapes);
        commit([...get().layers, l], { activeId: l.id });
        return l.id;
      },
      removeLayer(id) {
        const layers = get().layers.filter((l) => l.id !== id);
        if (layers.length === get().layers.length) return;
        const keep = layers.length ? layers : [layer("paint", "Layer 1")];
        const activeId = keep.some((l) => l.id === get().activeId) ? get().activeId : keep[keep.length - 1].id;
        commit(keep, { activeId });
      },
      moveLayer(id, to) {
        const layers = [...get().layers];
        const from = layers.findIndex((l) => l.id === id);
        if (from < 0) return;
        const target = Math.max(0, Math.min(layers.length - 1, to));
        if (target === from) return;
        const [l] = layers.splice(from, 1);
        layers.splice(target, 0, l);
        commit(layers);
      },
      updateLayer(id, patch) {
        commit(get().layers.map((l) => (l.id === id ? { ...l, ...patch } : l)));
      },
      setActive(id) {
        if (get().layers.some((l) => l.id === id)) set({ activeId: id });
      },
      addShape(shape, layerId) {
        const target = layerId ?? get().activeId;
        commit(get().layers.map((l) => (l.id === target ? { ...l, shapes: [...l.shapes, shape] } : l)));
      },
      updateShape(id, patch) {
        commit(mapShapes((sh) => (sh.id === id ? ({ ...sh, ...patch } as Shape) : sh)));
      },
      removeShape(id) {
        commit(mapShapes((sh) => (sh.id === id ? null : sh)), { selectedId: get().selectedId === id ? null : get().selectedId });
      },
      select(id) {
        set({ selectedId: id });
      },
      clear() {
        const a = get().activeId;
        if (!get().layers.find((l) => l.id === a)?.shapes.length) return;
        commit(get().layers.map((l) => (l.id === a ? { ...l, shapes: [] } : l)), { selectedId: null });
      },
      undo() {
        const s = get();
        const prev = s.past.at(-1);
        if (!prev) return;
        set({
          layers: prev,
          past: s.past.slice(0, -1),
          future: [s.layers, ...s.future],
          revision: s.revision + 1,
          selectedId: null,
          activeId: prev.some((l) => l.id === s.activeId) ? s.activeId : prev[prev.length - 1].id,
        });
      },
      redo() {
        const s = get();
        const next = s.future[0];
        if (!next) return;
        set({
          layers: next,
          past: [...s.past, s.layers],
          future: s.future.slice(1),
          revision: s.revision + 1,
          selectedId: null,
          activeId: next.some((l) => l.id === s.activeId) ? s.activeId : next[next.length - 1].id,
        });
      },
      touch() {
        set({ revision: get().revision + 1 });
      },
    };
  });
}
