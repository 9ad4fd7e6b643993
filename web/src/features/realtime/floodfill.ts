// Paint-bucket fill: the region of similar colour around a point, as a mask.

export interface Pixels {
  width: number;
  height: number;
  /** RGBA, 4 bytes per pixel. */
  data: Uint8ClampedArray;
}

/** The pixels reachable from `(x, y)` through neighbours (4-connected) whose colour
 * differs from the start pixel's by at most `tolerance` in every channel (alpha included).
 * Returns 1 for filled pixels, else 0; empty when the point is outside. */
export function floodMask(img: Pixels, x: number, y: number, tolerance = 32): Uint8Array {
  const { width: w, height: h, data } = img;
  const mask = new Uint8Array(w * h);
  x = Math.floor(x);
  y = Math.floor(y);
  if (x < 0 || y < 0 || x >= w || y >= h) return mask;
  const s = (y * w + x) * 4;
  const target = [data[s], data[s + 1], data[s + 2], data[s + 3]];
  const near = (i: number) => {
    const p = i * 4;
    return (
      Math.abs(data[p] - target[0]) <= tolerance &&
      Math.abs(data[p + 1] - target[1]) <= tolerance &&
      Math.abs(data[p + 2] - target[2]) <= tolerance &&
      Math.abs(data[p + 3] - target[3]) <= tolerance
    );
  };
  // Scanline fill: a stack of seeds, each filling a run of its row.
  const stack = [y * w + x];
  while (stack.length) {
    const i = stack.pop()!;
    if (mask[i]) continue;
    const row = Math.floor(i / w);
    let l = i;
    while (l > row * w && !mask[l - 1] && near(l - 1)) l--;
    let r = i;
    while (r < row * w + w - 1 && !mask[r + 1] && near(r + 1)) r++;
    for (let j = l; j <= r; j++) {
      mask[j] = 1;
      if (row > 0 && !mask[j - w] && near(j - w)) stack.push(j - w);
      if (row < h - 1 && !mask[j + w] && near(j + w)) stack.push(j + w);
    }
  }
  return mask;
}

/** The mask painted in one colour (RGBA bytes), transparent elsewhere. */
export function paintMask(mask: Uint8Array, width: number, height: number, rgba: [number, number, number, number]): Uint8ClampedArray<ArrayBuffer> {
  const out = new Uint8ClampedArray(width * height * 4);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    out.set(rgba, i * 4);
  }
  return out;
}

export function hexToRgba(hex: string, alpha = 1): [number, number, number, number] {
  const m = /^#?([0-9a-f]{6})$/i.exec(hex);
  const n = m ? parseInt(m[1], 16) : 0;
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255, Math.round(alpha * 255)];
}

export function rgbToHex(r: number, g: number, b: number): string {
  return `#${[r, g, b].map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}
