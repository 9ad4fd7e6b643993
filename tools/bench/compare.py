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
    a = p.parse_args()
    common = ["--model", a.model, "--width", str(a.width), "--height", str(a.height), "--runs", str(a.runs), "--warmup", str(a.warmup)]
    rows = []
    for c in a.components.split(","):
        k = run([a.krya, "bench", "--random-weights", "--json", "--components", c] + common)
        t = run([a.python, str(HERE / "torch_bench.py"), "--components", c] + common)
        km, tm = k["components"][c]["median_s"], t["components"][c]["median_s"]
        rows.append((c, km, tm))
        print(f"| {c} {a.width}x{a.height} | {km:.2f} s | {tm:.2f} s | {km / tm:.2f} |", flush=True)


if __name__ == "__main__":
    main()
