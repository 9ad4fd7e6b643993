// /realtime (seed §2.2, §4.3): draw on the left, the model renders on the right as you go.
// Prompt bar on top, layers on the left, tools and stream controls along the bottom.

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { useStore } from "zustand";
import type { Model } from "../../api/types";
import { api, session, toasts } from "../../app";
import { LoraPicker } from "../../components/LoraPicker";
import { Button, Chip, Select, Spinner } from "../../components/ui";
import type { LoraUse } from "../../stores/generate";
import { Link } from "../../lib/router";
import { RealtimeClient, type RealtimeParams, type ServerStatus } from "./client";
import { DrawingCanvas, UNITS, type DrawingHandle } from "./DrawingCanvas";
import { Icon } from "./icons";
import { startLive, stopLive, stopLiveExcept } from "./live";
import { BLENDS, createCanvasStore, hasContent, newId, placed, type CanvasState, type Tool } from "./canvas";
import type { StoreApi } from "zustand/vanilla";

const TOOLS: { id: Tool; label: string; key: string }[] = [
  { id: "brush", label: "Brush", key: "b" },
  { id: "eraser", label: "Eraser", key: "e" },
  { id: "rect", label: "Rectangle", key: "r" },
  { id: "circle", label: "Circle", key: "c" },
  { id: "line", label: "Line", key: "l" },
  { id: "polygon", label: "Polygon", key: "p" },
  { id: "select", label: "Select", key: "v" },
  { id: "eyedropper", label: "Eyedropper", key: "i" },
  { id: "fill", label: "Fill", key: "f" },
];

/** The side of each square pane: half the area's width side by side (from 768 px), the
 * whole width stacked, at most 640 px and what the window's height leaves. */
function usePaneSize(ref: React.RefObject<HTMLElement | null>): number {
  const [size, setSize] = useState(320);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const ro = new ResizeObserver(([e]) => {
      const w = e.contentRect.width;
      const pane = window.innerWidth >= 768 ? (w - 12) / 2 : w;
      const tall = Math.max(240, window.innerHeight - 300);
      setSize(Math.max(160, Math.floor(Math.min(pane, 640, tall))));
    });
    ro.observe(el);
    return () => ro.disconnect();
  }, [ref]);
  return size;
}

function loadImage(src: string): Promise<HTMLImageElement> {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("not an image the browser can read"));
    img.src = src;
  });
}

async function addImageLayer(store: StoreApi<CanvasState>, file: Blob, name: string) {
  const src = URL.createObjectURL(file);
  const img = await loadImage(src);
  const s = Math.min(UNITS / img.naturalWidth, UNITS / img.naturalHeight);
  const w = img.naturalWidth * s;
  const h = img.naturalHeight * s;
  store.getState().addLayer("image", name, [{ ...placed(), id: newId("s"), kind: "image", width: w, height: h, x: (UNITS - w) / 2, y: (UNITS - h) / 2, src }]);
}

function LayersPanel({ store }: { store: StoreApi<CanvasState> }) {
  const layers = useStore(store, (s) => s.layers);
  const activeId = useStore(store, (s) => s.activeId);
  const [dragging, setDragging] = useState<string | null>(null);
  const file = useRef<HTMLInputElement>(null);
  const live = async (kind: "webcam" | "screen") => {
    const id = store.getState().addLayer(kind, kind === "webcam" ? "Camera" : "Screen");
    try {
      await startLive(id, kind, () => store.getState().layers.some((l) => l.id === id));
      store.getState().touch();
    } catch (e) {
      store.getState().removeLayer(id);
      toasts.getState().error(e, kind === "webcam" ? "No camera" : "No screen capture");
    }
  };
  // Top of the list is the top layer.
  const shown = [...layers].reverse();
  return (
    <aside id="layers-panel" aria-label="Layers" className="flex w-full flex-col gap-2 md:w-60" data-testid="layers">
      <ul className="flex flex-col gap-1">
        {shown.map((l) => (
          <li
            key={l.id}
            draggable
            onDragStart={() => setDragging(l.id)}
            onDragOver={(e) => e.preventDefault()}
            onDrop={() => {
              if (dragging && dragging !== l.id) store.getState().moveLayer(dragging, layers.findIndex((x) => x.id === l.id));
              setDragging(null);
            }}
            className={`rounded-lg border p-2 text-sm ${l.id === activeId ? "border-accent bg-accent/10" : "border-line bg-surface"}`}
          >
            <div className="flex items-center gap-1">
              <button type="button" aria-label={l.visible ? `Hide ${l.name}` : `Show ${l.name}`} aria-pressed={l.visible} onClick={() => store.getState().updateLayer(l.id, { visible: !l.visible })} className="grid w-6 place-items-center text-neutral-300">
                <Icon name={l.visible ? "eye" : "eyeOff"} className="h-4 w-4" />
              </button>
              <button type="button" className="flex-1 truncate text-left" onClick={() => store.getState().setActive(l.id)} aria-current={l.id === activeId}>
                {l.name}
                {l.kind !== "paint" && <span className="ml-1 text-xs text-muted">({l.kind})</span>}
              </button>
              <button type="button" aria-label={`Move ${l.name} up`} onClick={() => store.getState().moveLayer(l.id, layers.findIndex((x) => x.id === l.id) + 1)} className="px-1 text-muted hover:text-white">
                ↑
              </button>
              <button type="button" aria-label={`Move ${l.name} down`} onClick={() => store.getState().moveLayer(l.id, layers.findIndex((x) => x.id === l.id) - 1)} className="px-1 text-muted hover:text-white">
                ↓
              </button>
              <button
                type="button"
                aria-label={`Delete ${l.name}`}
                onClick={() => {
                  stopLive(l.id);
                  store.getState().removeLayer(l.id);
                }}
                className="px-1 text-muted hover:text-red-400"
              >
                ×
              </button>
            </div>
            {l.id === activeId && (
              <div className="mt-2 grid grid-cols-2 gap-2">
                <label className="flex flex-col gap-1 text-xs text-muted">
                  Opacity
                  <input type="range" min={0} max={1} step={0.05} value={l.opacity} aria-label={`${l.name} opacity`} onChange={(e) => store.getState().updateLayer(l.id, { opacity: Number(e.target.value) })} />
                </label>
                <label className="flex flex-col gap-1 text-xs text-muted">
                  Blend
                  <select aria-label={`${l.name} blend mode`} value={l.blend} onChange={(e) => store.getState().updateLayer(l.id, { blend: e.target.value as (typeof BLENDS)[number] })} className="rounded border border-line bg-neutral-950 px-1 py-0.5 text-neutral-200">
                    {BLENDS.map((b) => (
                      <option key={b} value={b}>
                        {b === "source-over" ? "normal" : b}
                      </option>
                    ))}
                  </select>
                </label>
              </div>
            )}
          </li>
        ))}
      </ul>
      <div className="grid grid-cols-2 gap-1">
        <Button size="sm" onClick={() => store.getState().addLayer()}>
          + Layer
        </Button>
        <Button size="sm" onClick={() => file.current?.click()}>
          + Image
        </Button>
        <Button size="sm" onClick={() => void live("webcam")}>
          + Camera
        </Button>
        <Button size="sm" onClick={() => void live("screen")}>
          + Screen
        </Button>
      </div>
      <input
        ref={file}
        type="file"
        accept="image/*"
        className="sr-only"
        aria-label="Add an image layer"
        data-testid="image-layer-input"
        onChange={(e) => {
          const f = e.target.files?.[0];
          if (f) addImageLayer(store, f, f.name).catch((x) => toasts.getState().error(x, "Cannot add that image"));
          e.target.value = "";
        }}
      />
    </aside>
  );
}

function Toolbar({ store }: { store: StoreApi<CanvasState> }) {
  const tool = useStore(store, (s) => s.tool);
  const color = useStore(store, (s) => s.color);
  const size = useStore(store, (s) => s.size);
  const opacity = useStore(store, (s) => s.opacity);
  const canUndo = useStore(store, (s) => s.past.length > 0);
  const canRedo = useStore(store, (s) => s.future.length > 0);
  const st = store.getState();
  return (
    <div role="toolbar" aria-label="Drawing tools" className="flex flex-wrap items-center gap-1">
      {TOOLS.map((t) => (
        <button
          key={t.id}
          type="button"
          title={`${t.label} (${t.key.toUpperCase()})`}
          aria-label={t.label}
          aria-pressed={tool === t.id}
          onClick={() => st.setTool(t.id)}
          className={`grid h-9 w-9 place-items-center rounded-lg border text-base ${tool === t.id ? "border-accent bg-accent/20" : "border-line bg-surface hover:border-neutral-500"}`}
        >
          <Icon name={t.id} />
        </button>
      ))}
      <span className="mx-1 h-6 w-px bg-line" />
      <input type="color" aria-label="Colour" value={color} onChange={(e) => st.setBrush({ color: e.target.value })} className="h-9 w-9 cursor-pointer rounded-lg border border-line bg-surface p-1" />
      <label className="flex items-center gap-1 text-xs text-muted">
        Size
        <input type="range" min={1} max={80} value={size} aria-label="Brush size" onChange={(e) => st.setBrush({ size: Number(e.target.value) })} className="w-20" />
      </label>
      <label className="flex items-center gap-1 text-xs text-muted">
        Opacity
        <input type="range" min={0.05} max={1} step={0.05} value={opacity} aria-label="Brush opacity" onChange={(e) => st.setBrush({ opacity: Number(e.target.value) })} className="w-20" />
      </label>
      <span className="mx-1 h-6 w-px bg-line" />
      <Button size="sm" variant="ghost" onClick={() => st.undo()} disabled={!canUndo} title="Undo (Ctrl+Z)">
        Undo
      </Button>
      <Button size="sm" variant="ghost" onClick={() => st.redo()} disabled={!canRedo} title="Redo (Ctrl+Shift+Z)">
        Redo
      </Button>
      <Button size="sm" variant="ghost" onClick={() => st.clear()}>
        Clear
      </Button>
    </div>
  );
}

type Conn = "connecting" | "open" | "closed";

export default function Realtime() {
  const store = useMemo(() => createCanvasStore(), []);
  const drawing = useRef<DrawingHandle>(null);
  const area = useRef<HTMLDivElement>(null);
  const size = usePaneSize(area);
  const [models, setModels] = useState<Model[] | null>(null);
  const [model, setModel] = useState("");
  const [prompt, setPrompt] = useState("");
  const [typed, setTyped] = useState("");
  const [strength, setStrength] = useState(0.6);
  const [seed, setSeed] = useState(() => Math.floor(Math.random() * 2 ** 31));
  const [steps, setSteps] = useState(1);
  const [resolution, setResolution] = useState(512);
  const [frame, setFrame] = useState<{ url: string; blob: Blob; params: RealtimeParams | null } | null>(null);
  const [status, setStatus] = useState<ServerStatus | null>(null);
  const [roundTrip, setRoundTrip] = useState<number | null>(null);
  const [conn, setConn] = useState<{ state: Conn; reason?: string }>({ state: "connecting" });
  const [problem, setProblem] = useState<string | null>(null);
  const [saving, setSaving] = useState(false);
  const [showLayers, setShowLayers] = useState(true);
  const [loraModels, setLoraModels] = useState<Model[]>([]);
  const [loras, setLoras] = useState<LoraUse[]>([]);
  const revision = useStore(store, (s) => s.revision);

  // Models that can stream: installed first, distilled (fast) first.
  useEffect(() => {
    api.models("txt2img").then(
      (r) => {
        const list = [...r.models].sort((a, b) => Number(b.installed) - Number(a.installed) || Number(b.fast) - Number(a.fast));
        setModels(list);
        const pick = list[0];
        if (pick) {
          setModel(pick.id);
          const native = pick.resolution ?? 512;
          setResolution(native < 512 ? native * 2 : native > 1024 ? 1024 : native);
        }
      },
      (e) => setProblem(`Cannot list models: ${e.message}`),
    );
    api.models("lora").then(
      (r) => setLoraModels(r.models),
      () => setLoraModels([]),
    );
  }, []);

  // Typing updates the picture after a short pause.
  useEffect(() => {
    const t = setTimeout(() => setPrompt(typed), 250);
    return () => clearTimeout(t);
  }, [typed]);

  const client = useMemo(() => {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    return new RealtimeClient({
      url: `${proto}://${location.host}/ws/realtime`,
      onFrame: (f) => {
        const url = URL.createObjectURL(f.image);
        setFrame((old) => {
          if (old) URL.revokeObjectURL(old.url);
          return { url, blob: f.image, params: f.params };
        });
        if (f.roundTripMs !== null) setRoundTrip(f.roundTripMs);
        setProblem(null);
      },
      onStatus: setStatus,
      onError: (e) => setProblem(e.message),
      onState: (state, reason) => setConn({ state, reason }),
    });
  }, []);

  const alive = useRef(true);
  useEffect(() => {
    alive.current = true;
    client.connect();
    return () => {
      alive.current = false;
      client.close();
    };
  }, [client]);

  // Leaving the page (or undoing a camera layer) turns the camera or screen share off.
  useEffect(() => {
    const sync = () => stopLiveExcept(new Set(store.getState().layers.map((l) => l.id)));
    const unsubscribe = store.subscribe(sync);
    return () => {
      unsubscribe();
      stopLiveExcept(new Set());
    };
  }, [store]);
  useEffect(() => () => setFrame((old) => (old && URL.revokeObjectURL(old.url), null)), []);

  // A refused session: renew it and reconnect, a few times with a pause; signed out for
  // good goes to the sign-in page.
  const retries = useRef(0);
  useEffect(() => {
    if (conn.state === "open") retries.current = 0;
    if (conn.state !== "closed" || conn.reason !== "unauthorized") return;
    if (retries.current >= 3) {
      setProblem("The live canvas refused this session; reload the page or sign in again.");
      return;
    }
    const wait = 500 * 2 ** retries.current++;
    const t = setTimeout(() => {
      void api.refresh().then((r) => {
        if (!alive.current) return;
        if (r === "refused") session.getState().signedOut();
        else client.connect();
      });
    }, wait);
    return () => clearTimeout(t);
  }, [conn, client]);

  const m = models?.find((x) => x.id === model);
  const factor = 8;
  const res = Math.max(factor, Math.round(resolution / factor) * factor);
  const offer = useCallback(() => {
    if (!model) return;
    client.offer(async () => {
      const layers = store.getState().layers;
      const canvas = hasContent(layers) && drawing.current ? await drawing.current.jpeg(res) : null;
      return { canvas, params: { prompt, strength, seed, model, width: res, height: res, steps, loras } };
    });
  }, [client, store, prompt, strength, seed, model, res, steps, loras]);

  useEffect(() => {
    offer();
  }, [offer, revision, conn.state]);

  // Keyboard: tools, undo/redo, delete the selection.
  useEffect(() => {
    const key = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement;
      if (t.closest("input, textarea, select")) return;
      const st = store.getState();
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") {
        e.preventDefault();
        if (e.shiftKey) st.redo();
        else st.undo();
        return;
      }
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "y") {
        e.preventDefault();
        st.redo();
        return;
      }
      if ((e.key === "Delete" || e.key === "Backspace") && st.selectedId) {
        st.removeShape(st.selectedId);
        return;
      }
      const tool = TOOLS.find((x) => x.key === e.key.toLowerCase());
      if (tool && !e.ctrlKey && !e.metaKey && !e.altKey) st.setTool(tool.id);
    };
    window.addEventListener("keydown", key);
    return () => window.removeEventListener("keydown", key);
  }, [store]);

  async function save() {
    if (!frame) return;
    setSaving(true);
    try {
      const asset = await api.upload(frame.blob);
      // What made this frame, not what the controls say now.
      const p = frame.params ?? { prompt, model, seed, strength, steps };
      await api.saveCapture({ image: asset.id, prompt: p.prompt, model: p.model ?? model, seed: p.seed, strength: p.strength, steps: p.steps ?? steps });
      toasts.getState().push("info", "Saved to your generations");
    } catch (e) {
      toasts.getState().error(e, "Cannot save");
    } finally {
      setSaving(false);
    }
  }

  const resolutions = (() => {
    const native = m?.resolution ?? 512;
    const base = [512, 768, 1024];
    return native < 512 ? [native, native * 2, native * 4, ...base] : base;
  })();
  const fps = status?.fps ?? 0;
  const latency = status?.latency_ms ?? null;

  return (
    <div
      className="mx-auto flex max-w-[1600px] flex-col gap-3 px-3 py-3 sm:px-5"
      onDragOver={(e) => e.preventDefault()}
      onDrop={(e) => {
        e.preventDefault();
        const f = e.dataTransfer.files[0];
        if (f) addImageLayer(store, f, f.name).catch((x) => toasts.getState().error(x, "Cannot add that image"));
      }}
    >
      <h1 className="sr-only">Real-time canvas</h1>
      <div className="flex items-center gap-2 rounded-2xl border border-line bg-surface p-2">
        <label htmlFor="rt-prompt" className="sr-only">
          Prompt
        </label>
        <input
          id="rt-prompt"
          value={typed}
          onChange={(e) => setTyped(e.target.value)}
          placeholder="Describe what you draw… it renders as you type"
          className="h-10 flex-1 bg-transparent px-2 text-base placeholder:text-neutral-500 focus:outline-none"
        />
        <span className={`hidden items-center gap-1 text-xs sm:flex ${conn.state === "open" ? "text-emerald-400" : "text-amber-400"}`} data-testid="connection">
          ● {conn.state === "open" ? "live" : conn.state === "connecting" ? "connecting…" : `offline${conn.reason ? ` (${conn.reason})` : ""}`}
        </span>
      </div>
      {(problem || (conn.state === "closed" && conn.reason === "too-many-sessions")) && (
        <p role="alert" className="rounded-lg border border-red-900 bg-red-950/50 px-3 py-2 text-sm text-red-200" data-testid="realtime-error">
          {conn.reason === "too-many-sessions" && conn.state === "closed" ? "You have the live canvas open in too many tabs; close one and reload." : problem}
        </p>
      )}
      <div className="flex flex-col gap-3 md:flex-row">
        <div className="flex flex-col gap-2">
          <Button size="sm" variant="ghost" aria-expanded={showLayers} aria-controls="layers-panel" onClick={() => setShowLayers((v) => !v)} className="self-start">
            {showLayers ? "◂ Layers" : "▸ Layers"}
          </Button>
          {showLayers && <LayersPanel store={store} />}
        </div>
        <div ref={area} className="grid min-w-0 flex-1 gap-3 md:grid-cols-2">
          <section aria-label="Drawing" className="flex justify-center">
            <div className="overflow-hidden rounded-xl border border-line" style={{ width: size, height: size }} data-testid="drawing-canvas">
              <DrawingCanvas ref={drawing} store={store} size={size} />
            </div>
          </section>
          <section aria-label="Live output" className="flex flex-col items-center gap-2">
            <div className="grid place-items-center overflow-hidden rounded-xl border border-line bg-surface" style={{ width: size, height: size }}>
              {frame ? (
                <img src={frame.url} alt="What the model makes of the canvas" className="pixelated h-full w-full object-contain" data-testid="live-output" />
              ) : (
                <span className="flex items-center gap-2 text-sm text-muted">
                  {conn.state === "open" ? <Spinner /> : null}
                  {status?.detail ?? (conn.state === "open" ? "Draw or type to start" : "Connecting…")}
                </span>
              )}
            </div>
            <div className="flex w-full max-w-[720px] flex-wrap items-center justify-between gap-2 text-xs text-muted" style={{ width: size }}>
              <span data-testid="fps">{fps.toFixed(0)} fps</span>
              <span data-testid="latency">{latency !== null ? `${latency.toFixed(0)} ms render` : "—"}</span>
              <span>{roundTrip !== null ? `${roundTrip.toFixed(0)} ms round trip` : ""}</span>
              {status?.saturated && <span className="text-amber-400">busy: the server shares frames</span>}
              <Button size="sm" onClick={() => void save()} disabled={!frame || saving} data-testid="save-frame">
                {saving && <Spinner />}
                Save to gallery
              </Button>
            </div>
          </section>
        </div>
      </div>
      <div className="flex flex-col gap-3 rounded-2xl border border-line bg-surface p-3 lg:flex-row lg:items-center lg:justify-between">
        <Toolbar store={store} />
        <div className="flex flex-wrap items-center gap-3">
          <label className="flex items-center gap-2 text-xs text-muted">
            AI strength
            <input type="range" min={0.05} max={1} step={0.05} value={strength} aria-label="AI strength" onChange={(e) => setStrength(Number(e.target.value))} className="w-28" />
            <span className="w-8 text-neutral-200">{Math.round(strength * 100)}%</span>
          </label>
          <label className="flex items-center gap-1 text-xs text-muted">
            Seed
            <input
              aria-label="Seed"
              inputMode="numeric"
              value={seed}
              onChange={(e) => {
                const v = Number(e.target.value);
                if (Number.isInteger(v) && v >= 0 && v <= 4294967295) setSeed(v);
              }}
              className="h-8 w-24 rounded-lg border border-line bg-neutral-950 px-2 text-neutral-100"
            />
            <button type="button" aria-label="New random seed" title="New random seed" onClick={() => setSeed(Math.floor(Math.random() * 2 ** 31))} className="grid h-8 w-8 place-items-center rounded-lg border border-line">
              <Icon name="dice" className="h-4 w-4" />
            </button>
          </label>
          <div className="flex items-center gap-1" role="group" aria-label="Steps">
            {[1, 2, 3, 4].map((n) => (
              <Chip key={n} active={steps === n} onClick={() => setSteps(n)} title={`${n} step${n > 1 ? "s" : ""} per frame`}>
                {n}
              </Chip>
            ))}
          </div>
          <div className="w-28">
            <Select aria-label="Resolution" value={resolution} onChange={(e) => setResolution(Number(e.target.value))}>
              {resolutions.map((r) => (
                <option key={r} value={r}>
                  {r}²
                </option>
              ))}
            </Select>
          </div>
          {models === null ? (
            <Spinner />
          ) : (
            <div className="w-44">
              <Select aria-label="Model" value={model} onChange={(e) => setModel(e.target.value)}>
                {models.map((x) => (
                  <option key={x.id} value={x.id}>
                    {x.name}
                    {x.installed ? "" : " (downloads)"}
                  </option>
                ))}
              </Select>
            </div>
          )}
          {loraModels.length > 0 && (
            <div className="w-64">
              <LoraPicker
                loras={loraModels}
                chosen={loras}
                model={m}
                onAdd={(id) => setLoras((l) => (l.some((x) => x.id === id) ? l : [...l, { id, weight: 1 }]))}
                onWeight={(id, weight) => setLoras((l) => l.map((x) => (x.id === id ? { ...x, weight } : x)))}
                onRemove={(id) => setLoras((l) => l.filter((x) => x.id !== id))}
              />
            </div>
          )}
        </div>
      </div>
      <p className="text-xs text-muted">
        Tools: B brush, E eraser, R rectangle, C circle, L line, P polygon (click points, double-click to close), V select (drag, resize, rotate; Delete removes), I eyedropper, F fill. Ctrl+Z / Ctrl+Shift+Z undo and redo. Drop an image to add it as a layer.{" "}
        <Link to="/app" className="underline">
          Saved frames
        </Link>
      </p>
    </div>
  );
}
