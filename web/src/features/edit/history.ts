// The editor's versions of an image: the original, then each result, in order. Undo and
// redo move along them; editing from an earlier version drops the ones after it (as every
// editor's history does); any version can be picked to continue from.

export interface Version {
  /** The asset (the original upload or an edit's output, whose parent is the one before). */
  id: string;
  url: string;
  width: number;
  height: number;
  /** What made it ("Original", "Inpaint", "Outpaint 16:9"). */
  label: string;
  /** An outpaint's: the pixels it added around the version it was made from. */
  added?: Sides;
}

export interface History {
  versions: Version[];
  /** The version shown and edited. */
  at: number;
}

export const empty: History = { versions: [], at: -1 };

/** A history that starts at `v`. */
export function start(v: Version): History {
  return { versions: [v], at: 0 };
}

/** A history of an image's versions (original first, as its `parent_id`s chain them),
 * at the one that was opened (the last). */
export function lineage(versions: Version[]): History {
  return versions.length === 0 ? empty : { versions, at: versions.length - 1 };
}

/** `v` made from the current version: after it, the later ones dropped. */
export function push(h: History, v: Version): History {
  return { versions: [...h.versions.slice(0, h.at + 1), v], at: h.at + 1 };
}

/** `v` made from version `parent` (whichever is shown now): after it, the ones after it
 * dropped; after the current one when `parent` is not in the history. */
export function pushAfter(h: History, parent: string, v: Version): History {
  const i = h.versions.findIndex((x) => x.id === parent);
  return push(i < 0 ? h : { ...h, at: i }, v);
}

export function canUndo(h: History): boolean {
  return h.at > 0;
}

export function canRedo(h: History): boolean {
  return h.at < h.versions.length - 1;
}

export function undo(h: History): History {
  return canUndo(h) ? { ...h, at: h.at - 1 } : h;
}

export function redo(h: History): History {
  return canRedo(h) ? { ...h, at: h.at + 1 } : h;
}

export function select(h: History, i: number): History {
  return i >= 0 && i < h.versions.length ? { ...h, at: i } : h;
}

export function current(h: History): Version | undefined {
  return h.versions[h.at];
}

/** The size a `w × h` image becomes outpainted to `aw:ah`, as the server extends it: the
 * short side grown (rounded up) until the aspect holds. */
export function aspectSize(w: number, h: number, aw: number, ah: number): { width: number; height: number } {
  if (w * ah >= h * aw) return { width: w, height: Math.ceil((w * ah) / aw) };
  return { width: Math.ceil((h * aw) / ah), height: h };
}

/** Where the original lies in version `at`, as fractions of that version's size (so the
 * comparison draws it where it is): moved by every outpaint on the way; `null` when a
 * version on the way changed the size without saying how (then it cannot be placed). */
export function originalBox(h: History, at = h.at): { left: number; top: number; width: number; height: number } | null {
  const chain = h.versions.slice(0, at + 1);
  const [first, last] = [chain[0], chain[chain.length - 1]];
  if (!first || !last || last.width <= 0 || last.height <= 0) return null;
  let x = 0;
  let y = 0;
  for (let i = 1; i < chain.length; i++) {
    const [prev, v] = [chain[i - 1], chain[i]];
    if (v.added) {
      x += v.added.left;
      y += v.added.top;
    } else if (v.width !== prev.width || v.height !== prev.height) {
      return null;
    }
  }
  return { left: x / last.width, top: y / last.height, width: first.width / last.width, height: first.height / last.height };
}

/** Pixels added on each side of an image (outpaint). */
export interface Sides {
  left: number;
  top: number;
  right: number;
  bottom: number;
}

/** What an outpaint to aspect `aw:ah` adds to a `w × h` image: the short side grown evenly
 * (the odd pixel at the end), as the server's `Extend::to_aspect`. */
export function aspectSides(w: number, h: number, aw: number, ah: number): Sides {
  const t = aspectSize(w, h, aw, ah);
  const dw = t.width - w;
  const dh = t.height - h;
  return { left: Math.floor(dw / 2), right: dw - Math.floor(dw / 2), top: Math.floor(dh / 2), bottom: dh - Math.floor(dh / 2) };
}

/** `s` with `side` moved by `delta` image pixels outwards, never inside the image, the
 * canvas at most `max` pixels a side. */
export function dragSide(s: Sides, side: keyof Sides, delta: number, w: number, h: number, max = 8192): Sides {
  const across = side === "left" || side === "right" ? w + s.left + s.right - s[side] : h + s.top + s.bottom - s[side];
  return { ...s, [side]: Math.max(0, Math.min(max - across, Math.round(s[side] + delta))) };
}

/** The painted part of an RGBA mask layer as the server takes it: white where at least
 * half opaque, black elsewhere (RGBA bytes, opaque). Also whether anything is painted. */
export function maskPixels(rgba: Uint8ClampedArray): { pixels: Uint8ClampedArray<ArrayBuffer>; painted: boolean } {
  const out = new Uint8ClampedArray(rgba.length);
  let painted = false;
  for (let i = 0; i < rgba.length; i += 4) {
    const v = rgba[i + 3] >= 128 ? 255 : 0;
    painted ||= v === 255;
    out[i] = out[i + 1] = out[i + 2] = v;
    out[i + 3] = 255;
  }
  return { pixels: out, painted };
}

/** The alpha of a `w × h` RGBA mask layer grown (`r > 0`) or shrunk (`r < 0`) by `|r|`
 * pixels: a square window, each pixel painted (or kept) when any (or every) pixel of its
 * window is painted; painted means at least half opaque. Per row then per column, with
 * running counts, so any radius costs the same. */
export function growAlpha(rgba: Uint8ClampedArray, w: number, h: number, r: number): void {
  if (r === 0) return;
  const grow = r > 0;
  const k = Math.abs(r);
  let on = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) on[i] = rgba[4 * i + 3] >= 128 ? 1 : 0;
  const pass = (src: Uint8Array, len: number, lines: number, at: (line: number, i: number) => number) => {
    const out = new Uint8Array(src.length);
    const prefix = new Int32Array(len + 1);
    for (let line = 0; line < lines; line++) {
      for (let i = 0; i < len; i++) prefix[i + 1] = prefix[i] + src[at(line, i)];
      for (let i = 0; i < len; i++) {
        const a = Math.max(0, i - k);
        const b = Math.min(len, i + k + 1);
        const count = prefix[b] - prefix[a];
        // Shrinking: the edge of the image counts as unpainted.
        out[at(line, i)] = grow ? (count > 0 ? 1 : 0) : count === 2 * k + 1 ? 1 : 0;
      }
    }
    return out;
  };
  on = pass(on, w, h, (y, x) => y * w + x);
  on = pass(on, h, w, (x, y) => y * w + x);
  for (let i = 0; i < w * h; i++) rgba[4 * i + 3] = on[i] ? 255 : 0;
}

/** The alpha of a mask layer inverted (painted ↔ clear). */
export function invertAlpha(rgba: Uint8ClampedArray): void {
  for (let i = 3; i < rgba.length; i += 4) rgba[i] = 255 - rgba[i];
}
