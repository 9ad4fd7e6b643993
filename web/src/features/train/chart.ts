// The training page's arithmetic: the loss curve's moving average and SVG path, and the
// time left in words.

/** The exponential moving average of `xs` (TensorBoard's smoothing, debiased so that the
 * first points are not pulled toward zero). */
export function ema(xs: number[], beta: number): number[] {
  const out: number[] = [];
  let m = 0;
  xs.forEach((x, i) => {
    m = beta * m + (1 - beta) * x;
    out.push(m / (1 - beta ** (i + 1)));
  });
  return out;
}

/** `ys` as an SVG path across a `w` × `h` box, `lo` at the bottom and `hi` at the top (a
 * flat curve sits in the middle). */
export function lossPath(ys: number[], w: number, h: number, lo: number, hi: number): string {
  const pad = 4;
  const span = hi - lo;
  const x = (i: number) => (ys.length === 1 ? w / 2 : pad + ((w - 2 * pad) * i) / (ys.length - 1));
  const y = (v: number) => (span > 0 ? pad + (h - 2 * pad) * (1 - (v - lo) / span) : h / 2);
  return ys.map((v, i) => `${i === 0 ? "M" : "L"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
}

/** Seconds as "45 s", "3 min", "1 h 20 min". */
export function etaText(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
