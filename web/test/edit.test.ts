import { describe, expect, it } from "vitest";
import { aspectSides, aspectSize, dragSide, growAlpha, canRedo, canUndo, current, invertAlpha, maskPixels, originalBox, push, pushAfter, redo, select, start, undo } from "../src/features/edit/history";

const v = (id: string) => ({ id, url: `/api/assets/${id}`, width: 64, height: 48, label: id });

describe("the editor's versions", () => {
  it("undo and redo move along them; an edit from an earlier one drops the later ones", () => {
    let h = start(v("a"));
    expect(canUndo(h)).toBe(false);
    h = push(h, v("b"));
    h = push(h, v("c"));
    expect(current(h)?.id).toBe("c");
    h = undo(undo(h));
    expect(current(h)?.id).toBe("a");
    expect(canUndo(h)).toBe(false);
    expect(canRedo(h)).toBe(true);
    h = redo(h);
    expect(current(h)?.id).toBe("b");
    h = push(h, v("d"));
    expect(h.versions.map((x) => x.id)).toEqual(["a", "b", "d"]);
    expect(canRedo(h)).toBe(false);
    expect(current(select(h, 0))?.id).toBe("a");
    expect(select(h, 9)).toBe(h);
  });

  it("a result goes after the version it was made from, whichever is shown when it ends", () => {
    let h = push(push(start(v("a")), v("b")), v("c"));
    h = undo(h); // "b" shown while an edit of "c" runs
    h = pushAfter(h, "c", v("d"));
    expect(h.versions.map((x) => x.id)).toEqual(["a", "b", "c", "d"]);
    expect(current(h)?.id).toBe("d");
    h = pushAfter(select(h, 0), "a", v("e"));
    expect(h.versions.map((x) => x.id)).toEqual(["a", "e"]);
    expect(pushAfter(start(v("a")), "gone", v("f")).versions.map((x) => x.id)).toEqual(["a", "f"]);
  });

  it("outpaint sizes are the server's", () => {
    expect(aspectSize(64, 48, 16, 9)).toEqual({ width: 86, height: 48 });
    expect(aspectSize(160, 40, 16, 9)).toEqual({ width: 160, height: 90 });
    expect(aspectSize(40, 64, 1, 1)).toEqual({ width: 64, height: 64 });
  });

  it("a mask layer becomes black and white at half opacity, and inverts", () => {
    const rgba = new Uint8ClampedArray([255, 0, 0, 200, 0, 0, 0, 100, 0, 0, 0, 0]);
    const { pixels, painted } = maskPixels(rgba);
    expect(Array.from(pixels)).toEqual([255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255]);
    expect(painted).toBe(true);
    expect(maskPixels(new Uint8ClampedArray(8)).painted).toBe(false);
    invertAlpha(rgba);
    expect([rgba[3], rgba[7], rgba[11]]).toEqual([55, 155, 255]);
  });

  it("grows and shrinks a mask layer by square windows", () => {
    // 5 × 3, one painted pixel in the middle.
    const rgba = new Uint8ClampedArray(5 * 3 * 4);
    rgba[4 * (1 * 5 + 2) + 3] = 255;
    growAlpha(rgba, 5, 3, 1);
    const painted = () => Array.from({ length: 15 }, (_, i) => (rgba[4 * i + 3] ? 1 : 0)).join("");
    expect(painted()).toBe("011100111001110");
    growAlpha(rgba, 5, 3, -1);
    // Shrinking by one keeps only the pixel whose whole window lies in the 3×3 square (the
    // edge of the image counts as unpainted).
    expect(painted()).toBe("000000010000000");
    growAlpha(rgba, 5, 3, 0);
  });
});

describe("outpaint frame", () => {
  it("places the original within outpainted versions for the comparison", () => {
    // 64 × 48, inpainted (same size), outpainted by 10 left and 6 top, then by 4 more left.
    let h = start(v("a"));
    h = push(h, v("b"));
    expect(originalBox(h)).toEqual({ left: 0, top: 0, width: 1, height: 1 });
    h = push(h, { ...v("c"), width: 80, height: 60, added: { left: 10, top: 6, right: 6, bottom: 6 } });
    h = push(h, { ...v("d"), width: 84, height: 60, added: { left: 4, top: 0, right: 0, bottom: 0 } });
    expect(originalBox(h)).toEqual({ left: 14 / 84, top: 6 / 60, width: 64 / 84, height: 48 / 60 });
    expect(originalBox(h, 2)).toEqual({ left: 10 / 80, top: 6 / 60, width: 64 / 80, height: 48 / 60 });
    // A size change that says nothing of where the original went: not placed.
    h = push(h, { ...v("e"), width: 168, height: 120 });
    expect(originalBox(h)).toBeNull();
  });

  it("splits an aspect's extension evenly, the odd pixel at the end, as the server", () => {
    expect(aspectSides(100, 50, 1, 1)).toEqual({ left: 0, right: 0, top: 25, bottom: 25 });
    expect(aspectSides(29, 16, 16, 9)).toEqual({ left: 0, right: 0, top: 0, bottom: 1 });
    expect(aspectSides(31, 40, 16, 9)).toEqual({ left: 20, right: 21, top: 0, bottom: 0 });
  });

  it("drags an edge outwards, never inside the image, the canvas at most the limit", () => {
    const none = { left: 0, top: 0, right: 0, bottom: 0 };
    expect(dragSide(none, "right", 12.4, 64, 48)).toEqual({ ...none, right: 12 });
    expect(dragSide({ ...none, left: 5 }, "left", -20, 64, 48)).toEqual(none);
    expect(dragSide({ ...none, left: 100 }, "right", 9000, 64, 48, 300)).toEqual({ ...none, left: 100, right: 136 });
  });
});
