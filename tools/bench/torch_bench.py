#!/usr/bin/env python3
"""PyTorch (diffusers/transformers) timings of the same components `krya bench` times, from
the same config files with random weights, f32 on CPU. Prints JSON like `krya bench --json`."""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--components", default="text-encoder,unet,vae-decode,vae-encode")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args()
    d = Path(a.model)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel.from_config(json.loads((d / "unet/config.json").read_text())).eval()
    vae = AutoencoderKL.from_config(json.loads((d / "vae/config.json").read_text())).eval()
    te = CLIPTextModel(CLIPTextConfig(**json.loads((d / "text_encoder/config.json").read_text()))).eval()
    load_s = time.perf_counter() - t0
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    lh, lw = a.height // f, a.width // f
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[(i * 7919) % te.config.vocab_size for i in range(77)]])
    sample = torch.randn(1, unet.config.in_channels, lh, lw, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    z = torch.randn(1, vae.config.latent_channels, lh, lw, generator=g)
    x = torch.randn(1, 3, a.height, a.width, generator=g)
    fns = {
        "text-encoder": lambda: te(ids),
        "unet": lambda: unet(sample, 999.0, encoder_hidden_states=ctx),
        "vae-decode": lambda: vae.decode(z),
        "vae-encode": lambda: vae.encode(x),
    }
    comps = {}
    with torch.inference_mode():
        for c in a.components.split(","):
            for _ in range(a.warmup):
                fns[c]()
            times = []
            for _ in range(a.runs):
                t = time.perf_counter()
                fns[c]()
                times.append(time.perf_counter() - t)
            # The work, counted from the architecture by PyTorch's own FLOP counter (a
            # multiply-add is 2 FLOPs; convolutions, matmuls and attention products).
            with FlopCounterMode(display=False) as fc:
                fns[c]()
            comps[c] = {"median_s": statistics.median(times), "runs_s": times, "flops": fc.get_total_flops()}
    print(json.dumps({"engine": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "width": a.width, "height": a.height, "load_s": load_s, "components": comps}, indent=2))


if __name__ == "__main__":
    main()
