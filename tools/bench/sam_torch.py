#!/usr/bin/env python3
"""PyTorch's side of the SAM benchmark (`tools/bench/sam.sh`): a random-weight SAM ViT-B
(transformers' `SamModel`, the released sizes), saved for the engine to load, then timed:
the image embedding of one 1024² input, and one click's decode on it (median of RUNS).

    sam_torch.py DIR [--runs 3]
"""
import argparse
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import SamConfig, SamModel

torch.set_num_threads(2)


def median_time(f, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    out = Path(a.dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = SamModel(SamConfig()).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if t.dim() >= 2:
                t.copy_(torch.randn(t.shape, generator=g) / t[0].numel() ** 0.5)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.pop("prompt_encoder.shared_embedding.positional_embedding", None)
    path = out / "sam-vit-b.safetensors"
    if not path.exists():
        save_file(sd, str(path))
    x = torch.randn(1, 3, 1024, 1024, generator=g)
    with torch.no_grad():
        emb = model.get_image_embeddings(x)
        embed = median_time(lambda: model.get_image_embeddings(x), a.runs)
        points = torch.tensor([[[[500.0, 400.0]]]])
        labels = torch.tensor([[[1]]])
        click = median_time(lambda: model(image_embeddings=emb, input_points=points, input_labels=labels,
                                          multimask_output=True), max(a.runs, 10))
    print(f"pytorch {torch.__version__} ({torch.get_num_threads()} threads): "
          f"embed 1024² {embed:.3f} s, click decode {click * 1000:.1f} ms")


if __name__ == "__main__":
    main()
