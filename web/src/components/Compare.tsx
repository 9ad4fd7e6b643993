// Before and after, split by a slider that zooms and pans both together; a large
// output through its tile pyramid (only the tiles in view at the zoom's level).

import { type CSSProperties, useEffect, useRef, useState } from "react";
import { type PlacedTile, type TileInfo, levelFor, tilesInView } from "../features/enhance/tiles";
import { Button } from "./ui";

/** A pyramid's tiles in view at this zoom, over its one-tile top level (always there, so
 * nothing is blank while finer tiles load). */
export function TiledImage({ id, info, fit, zoom, pan, style }: { id: string; info: TileInfo; fit: { width: number; height: number }; zoom: number; pan: { x: number; y: number }; style: CSSProperties }) {
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
export function Compare({
  before,
  after,
  width,
  height,
  tiles,
  beforeBox,
}: {
  before: string;
  after: string;
  width: number;
  height: number;
  tiles?: { id: string; info: TileInfo };
  /** Where "before" lies within "after", as fractions of its size (an outpaint's original);
   * else it covers the whole frame. */
  beforeBox?: { left: number; top: number; width: number; height: number } | null;
}) {
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
          {beforeBox ? (
            <div className="absolute inset-0" style={transform}>
              <img
                src={before}
                alt="Before"
                draggable={false}
                className="pixelated absolute max-w-none"
                style={{ left: `${beforeBox.left * 100}%`, top: `${beforeBox.top * 100}%`, width: `${beforeBox.width * 100}%`, height: `${beforeBox.height * 100}%` }}
                data-testid="compare-before-placed"
              />
            </div>
          ) : (
            <img src={before} alt="Before" draggable={false} className="pixelated h-full w-full object-contain" style={transform} />
          )}
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

