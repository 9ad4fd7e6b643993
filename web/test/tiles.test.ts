import { describe, expect, it } from "vitest";
import { levelFor, levelSize, tilesInView } from "../src/features/enhance/tiles";

// A 22,000 × 11,000 output in 512-px tiles: 22000 → 11000 → … → 344 (7 halvings).
const info = { width: 22_000, height: 11_000, tile: 512, levels: 7 };

describe("the tile viewer", () => {
  it("halves levels with sides rounded up", () => {
    expect(levelSize(info, 0)).toEqual([22_000, 11_000]);
    expect(levelSize(info, 1)).toEqual([11_000, 5_500]);
    expect(levelSize(info, 6)).toEqual([344, 172]);
  });

  it("picks the coarsest level as sharp as the screen", () => {
    // In a 1100-px box the whole image is 20 image px per CSS px: level 4 (16×) is sharper,
    // level 5 (32×) is not.
    expect(levelFor(info, 1100, 1)).toBe(4);
    expect(levelFor(info, 1100, 1, 2)).toBe(3);
    expect(levelFor(info, 1100, 16)).toBe(0);
    expect(levelFor(info, 1100, 1 / 64)).toBe(6);
  });

  it("places only the tiles in view", () => {
    const fit = { width: 1100, height: 550 };
    // Zoom 1, level 4: 1375 × 688 px, 3 × 2 tiles, all in view, laid out at 0.8 CSS px each.
    const all = tilesInView(info, 4, fit, 1, { x: 0, y: 0 });
    expect(all.map((t) => [t.x, t.y])).toEqual([
      [0, 0], [1, 0], [2, 0],
      [0, 1], [1, 1], [2, 1],
    ]);
    expect(all[0]).toMatchObject({ left: 0, top: 0, width: 409.6, height: 409.6 });
    expect(all[2].width).toBeCloseTo((1375 - 1024) * 0.8);
    // Zoomed 16× on the centre at level 0: a 68.75 × 34.4 CSS px window of the box, 1375 ×
    // 688 image px from (10312, 5156): tiles 20–22 across, 10–11 down.
    const centre = tilesInView(info, 0, fit, 16, { x: 0, y: 0 });
    const xs = [...new Set(centre.map((t) => t.x))];
    const ys = [...new Set(centre.map((t) => t.y))];
    expect(xs).toEqual([20, 21, 22]);
    expect(ys).toEqual([10, 11]);
    // Panned to the left edge: the first column.
    const left = tilesInView(info, 0, fit, 16, { x: 16 * 550 - 1, y: 0 });
    expect(Math.min(...left.map((t) => t.x))).toBe(0);
    expect(tilesInView(info, 0, { width: 0, height: 0 }, 1, { x: 0, y: 0 })).toEqual([]);
  });
});
