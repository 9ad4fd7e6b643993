// Which tiles of an image pyramid (GET /api/assets/:id/tiles: level 0 full size, each level
// after it half the one before, sides rounded up) a viewer shows, and where: the box the
// image fits at zoom 1 is `fit` (CSS px), the view is that box moved by `pan` and scaled
// by `zoom` about its centre (CSS `translate(pan) scale(zoom)`, origin centre), as the
// before/after comparison does. Only the tiles in view are fetched, at the coarsest level
// that is still as sharp as the screen.

import type { TileInfo } from "../../api/types";

export type { TileInfo };

export interface PlacedTile {
  level: number;
  x: number;
  y: number;
  /** Position and size in the fit box's CSS px (before the zoom transform). */
  left: number;
  top: number;
  width: number;
  height: number;
}

/** Level `l`'s size in pixels. */
export function levelSize(info: TileInfo, l: number): [number, number] {
  let [w, h] = [info.width, info.height];
  for (let i = 0; i < l; i++) [w, h] = [Math.ceil(w / 2), Math.ceil(h / 2)];
  return [w, h];
}

/** The level to show at `zoom` in a `fitWidth`-px box on a screen of `dpr` device px per
 * CSS px: the coarsest with at least one of its pixels per device pixel. */
export function levelFor(info: TileInfo, fitWidth: number, zoom: number, dpr = 1): number {
  const devicePerImage = (fitWidth / info.width) * zoom * dpr;
  const l = Math.floor(-Math.log2(devicePerImage));
  return Math.max(0, Math.min(info.levels - 1, Number.isFinite(l) ? l : 0));
}

/** The tiles of `level` that are in view (`margin` tiles more around it). */
export function tilesInView(
  info: TileInfo,
  level: number,
  fit: { width: number; height: number },
  zoom: number,
  pan: { x: number; y: number },
  margin = 0,
): PlacedTile[] {
  if (fit.width <= 0 || fit.height <= 0) return [];
  const [lw, lh] = levelSize(info, level);
  // CSS px of the fit box per pixel of this level.
  const k = (fit.width / info.width) * 2 ** level;
  const side = info.tile * k;
  // The part of the fit box on screen: screen = centre + pan + zoom·(box − centre).
  const [cx, cy] = [fit.width / 2, fit.height / 2];
  const x0 = cx + (0 - cx - pan.x) / zoom;
  const x1 = cx + (fit.width - cx - pan.x) / zoom;
  const y0 = cy + (0 - cy - pan.y) / zoom;
  const y1 = cy + (fit.height - cy - pan.y) / zoom;
  const cols = Math.ceil(lw / info.tile);
  const rows = Math.ceil(lh / info.tile);
  const first = (v: number, n: number) => Math.max(0, Math.min(n - 1, Math.floor(v / side) - margin));
  const last = (v: number, n: number) => Math.max(0, Math.min(n - 1, Math.ceil(v / side) - 1 + margin));
  const out: PlacedTile[] = [];
  for (let y = first(y0, rows); y <= last(y1, rows); y++) {
    for (let x = first(x0, cols); x <= last(x1, cols); x++) {
      out.push({
        level,
        x,
        y,
        left: x * side,
        top: y * side,
        width: Math.min(info.tile, lw - x * info.tile) * k,
        height: Math.min(info.tile, lh - y * info.tile) * k,
      });
    }
  }
  return out;
}

/** Outputs larger than this on their long side are shown through their tiles. */
export const TILED_ABOVE = 4096;
