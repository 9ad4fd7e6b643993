#!/usr/bin/env python3
"""PyTorch's side of the upscaler benchmark: writes full-size random-weight models of
RealESRGAN_x4plus (RRDBNet, 64 features, 23 blocks) and realesr-general-x4v3
(SRVGGNetCompact, 64 features, 32 convolutions) to DIR, and times spandrel's forward on a
256×256 tile, fp32, on the CPU with every core torch sees.

    /var/tmp/golden-venv/bin/python tools/bench/upscale_torch.py DIR [--size 256] [--runs 3]

It prints one JSON line per model: {"model", "file", "median_s", "runs"}. `tools/bench/upscale.sh`
runs it and `cargo run --release -p krya-engine --example upscale_bench` on the same files.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
from upscale import compact, rrdb_new  # noqa: E402

import spandrel  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    models = {
        "x4plus": (out / "x4plus.safetensors", lambda: rrdb_new(64, 23, 32, 3, 3)),
        "general-x4v3": (out / "general-x4v3.safetensors", lambda: compact(64, 32, 3, 3, 4)),
    }
    x = torch.rand(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    for name, (path, make) in models.items():
        if not path.exists():
            save_file({k: v.contiguous() for k, v in make().items()}, str(path))
        m = spandrel.ModelLoader().load_from_file(str(path))
        m.model.eval()
        times = []
        with torch.inference_mode():
            m.model(x)  # warm-up
            for _ in range(a.runs):
                t = time.perf_counter()
                m.model(x)
                times.append(time.perf_counter() - t)
        print(json.dumps({"model": name, "file": str(path), "median_s": statistics.median(times), "runs": a.runs,
                          "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
