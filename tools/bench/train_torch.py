#!/usr/bin/env python3
"""PyTorch + peft's side of the LoRA training benchmark (`tools/bench/train.sh`): one
training step of an SD 1.5-size UNet (diffusers' default `UNet2DConditionModel`, random
weights) at 512² (64² latents), batch 1, a rank-16 LoRA on the attention projections:
forward, MSE loss, backward, AdamW. Writes the UNet's config for the engine to build the
same shapes; prints the median step time and the process's peak memory.

    train_torch.py DIR [--runs 2] [--size 64]
"""
import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoraConfig

torch.set_num_threads(2)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--size", type=int, default=64, help="latent side (64 = 512 px)")
    a = p.parse_args()
    out = Path(a.dir)
    (out / "unet").mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel(cross_attention_dim=768)  # SD 1.5's shapes
    (out / "unet/config.json").write_text(json.dumps(dict(unet.config), indent=1))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [q for q in unet.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, a.size, a.size, generator=g)
    ctx = torch.randn(1, 77, 768, generator=g)
    target = torch.randn(1, 4, a.size, a.size, generator=g)
    t = torch.tensor([500])

    def step():
        loss = F.mse_loss(unet(x, t, ctx).sample, target)
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    times = []
    for _ in range(a.runs):
        s = time.perf_counter()
        step()
        times.append(time.perf_counter() - s)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    print(f"pytorch {torch.__version__} + peft (2 threads): step {statistics.median(times):.2f} s, peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
