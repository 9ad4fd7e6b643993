import { describe, expect, it } from "vitest";
import { ema, etaText, lossPath } from "../src/features/train/chart";

describe("training chart", () => {
  it("smooths without pulling the first points toward zero", () => {
    expect(ema([2, 2, 2], 0.9)).toEqual([2, 2, 2].map((x) => expect.closeTo(x, 10)));
    const s = ema([1, 0], 0.5);
    expect(s[0]).toBeCloseTo(1);
    // (0.5·0.5 + 0) / (1 − 0.25)
    expect(s[1]).toBeCloseTo(0.25 / 0.75);
  });

  it("draws the curve inside the box, low values at the bottom", () => {
    const d = lossPath([1, 0.5, 0], 100, 50, 0, 1);
    expect(d).toBe("M4.0,4.0 L50.0,25.0 L96.0,46.0");
    expect(lossPath([3, 3], 100, 50, 3, 3)).toBe("M4.0,25.0 L96.0,25.0");
  });

  it("says the time left in words", () => {
    expect(etaText(44.6)).toBe("45 s");
    expect(etaText(185)).toBe("3 min");
    expect(etaText(4800)).toBe("1 h 20 min");
  });
});
