#!/usr/bin/env python3
"""PyTorch's side of the editor's model benchmark (`tools/bench/erase_matte.sh`): big-lama
(spandrel's `FFCResNetGenerator`, the released sizes) at 512² and IS-Net (the reference's
`ISNetDIS`) at 1024², random weights saved for the engine to load, then timed (median of
RUNS, 2 threads).

    DIS_ISNET=/var/tmp/dis/isnet.py erase_matte_torch.py DIR [--runs 3]
"""
import argparse
import importlib.util
import os
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.LaMa.__arch.LaMa import FFCResNetGenerator

torch.set_num_threads(2)


def median_time(f, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def save(model, path, prefix=""):
    if not path.exists():
        save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()
                   if not k.endswith("num_batches_tracked")}, str(path))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)

    lama = FFCResNetGenerator(4, 3).eval()
    save(lama, out / "big-lama.safetensors", "model.")
    x = torch.rand(1, 4, 512, 512, generator=g)
    with torch.no_grad():
        lama(x[:, :3], x[:, 3:])
        t_lama = median_time(lambda: lama(x[:, :3], x[:, 3:]), a.runs)

    spec = importlib.util.spec_from_file_location("isnet", os.environ["DIS_ISNET"])
    isnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(isnet)
    net = isnet.ISNetDIS().eval()
    save(net, out / "isnet.safetensors")
    y = torch.rand(1, 3, 1024, 1024, generator=g) - 0.5
    with torch.no_grad():
        net(y)
        t_isnet = median_time(lambda: net(y), a.runs)
    print(f"pytorch {torch.__version__} ({torch.get_num_threads()} threads): "
          f"lama 512² {t_lama:.3f} s, isnet 1024² {t_isnet:.3f} s")


if __name__ == "__main__":
    main()
