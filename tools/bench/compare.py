#!/usr/bin/env python3
"""Runs `krya bench` and tools/bench/torch_bench.py on the same config, component by
component, alternating between the two, and prints a markdown table with the ratio.

    python tools/bench/compare.py --krya target/release/krya --python /path/to/venv/bin/python \
        --model tools/bench/sd-turbo --width 512 --height 512 --runs 3
"""
import argparse
import json
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--krya", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--model", default=str(HERE / "sd-turbo"))
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--components", default="text-encoder,unet,vae-decode,vae-encode")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the machine's f32 peak (default: cores x MHz x 64 with AVX-512, x 32 with AVX2 only)")
    a = p.parse_args()
    peak = a.peak_gflops or machine_peak()
    common = ["--model", a.model, "--width", str(a.width), "--height", str(a.height), "--runs", str(a.runs), "--warmup", str(a.warmup)]
    rows = []
    print(f"peak {peak:.0f} GFLOP/s f32; | component | work | krya | PyTorch | krya / PyTorch |")
    for c in a.components.split(","):
        k = run([a.krya, "bench", "--random-weights", "--json", "--components", c] + common)
        t = run([a.python, str(HERE / "torch_bench.py"), "--components", c] + common)
        km, tm = k["components"][c]["median_s"], t["components"][c]["median_s"]
        gf = t["components"][c]["flops"] / 1e9
        rows.append((c, km, tm))
        print(f"| {c} {a.width}x{a.height} | {gf:.0f} GFLOP | {km:.2f} s ({gf / km:.0f} GFLOP/s, {100 * gf / km / peak:.0f}%) "
              f"| {tm:.2f} s ({gf / tm:.0f} GFLOP/s, {100 * gf / tm / peak:.0f}%) | {km / tm:.2f} |", flush=True)


def machine_peak():
    """f32 FLOP/s at the nominal clock: two FMA pipes, 16 lanes with AVX-512 (8 with AVX2)."""
    info = Path("/proc/cpuinfo").read_text()
    cores = info.count("processor\t:")
    mhz = float(info.split("cpu MHz")[1].split(":")[1].split()[0])
    lanes = 16 if "avx512f" in info else 8
    return cores * mhz / 1000 * 2 * lanes * 2


if __name__ == "__main__":
    main()
