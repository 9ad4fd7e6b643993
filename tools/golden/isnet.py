#!/usr/bin/env python3
"""Makes IS-Net's reference files: a tiny random-weight IS-Net built from the reference's own
modules (xuebinqin/DIS@b6764e2038:IS-Net/models/isnet.py: its RSU blocks and `ISNetDIS.forward`,
with narrower stages) and its outputs.

The reference is not on PyPI: point `DIS_ISNET` at that file (it imports torchvision):

    git -C DIS show b6764e2038:IS-Net/models/isnet.py > /var/tmp/dis/isnet.py
    DIS_ISNET=/var/tmp/dis/isnet.py /var/tmp/golden-venv/bin/python tools/golden/isnet.py

Files (crates/krya-engine/tests/golden/matte/):
- `isnet.safetensors`: the state dict, under the reference's names;
- `reference.safetensors`: `net.x` (`[1, 3, 72, 56]`, odd sizes below it so the ceil-mode
  pools are exercised) and `net.d1` (the first side output's logits, before the sigmoid);
  `matte.image` (`[40, 50, 3]` bytes), `matte.input` (what `Inference.py` feeds the network
  at a 64² input) and `matte.alpha` (its matte at the image's size, min–max normalised).
"""
import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/matte"
torch.set_num_threads(2)

spec = importlib.util.spec_from_file_location("isnet", os.environ["DIS_ISNET"])
isnet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(isnet)


class TinyISNet(isnet.ISNetDIS):
    """`ISNetDIS` with every stage narrower; `forward` is the reference's."""

    def __init__(self):
        nn.Module.__init__(self)
        self.conv_in = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        pool = lambda: nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.pool_in = pool()
        self.stage1 = isnet.RSU7(8, 4, 8)
        self.pool12 = pool()
        self.stage2 = isnet.RSU6(8, 4, 16)
        self.pool23 = pool()
        self.stage3 = isnet.RSU5(16, 8, 16)
        self.pool34 = pool()
        self.stage4 = isnet.RSU4(16, 8, 32)
        self.pool45 = pool()
        self.stage5 = isnet.RSU4F(32, 8, 32)
        self.pool56 = pool()
        self.stage6 = isnet.RSU4F(32, 8, 32)
        self.stage5d = isnet.RSU4F(64, 8, 32)
        self.stage4d = isnet.RSU4(64, 8, 16)
        self.stage3d = isnet.RSU5(32, 8, 16)
        self.stage2d = isnet.RSU6(32, 4, 8)
        self.stage1d = isnet.RSU7(16, 4, 8)
        self.side1 = nn.Conv2d(8, 1, 3, padding=1)
        self.side2 = nn.Conv2d(8, 1, 3, padding=1)
        self.side3 = nn.Conv2d(16, 1, 3, padding=1)
        self.side4 = nn.Conv2d(16, 1, 3, padding=1)
        self.side5 = nn.Conv2d(32, 1, 3, padding=1)
        self.side6 = nn.Conv2d(32, 1, 3, padding=1)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    net = TinyISNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")},
              OUT / "isnet.safetensors")
    ref = {}
    with torch.no_grad():
        # The network's logits: the reference returns sigmoids; take d1's logit back out of
        # the forward pass by running it with the sigmoid replaced.
        x = torch.rand(1, 3, 72, 56, generator=g) - 0.5
        sig = F.sigmoid
        isnet.F.sigmoid = lambda t: t
        ref["net.x"] = x
        ref["net.d1"] = net(x)[0][0].contiguous()
        isnet.F.sigmoid = sig

        # Inference.py at a 64² input on a smooth picture with an edge.
        h, w = 40, 50
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        im = torch.stack([xx * 5, yy * 6, ((xx - 25) ** 2 + (yy - 20) ** 2 < 150) * 200], -1)
        im = (im + torch.randint(0, 40, (h, w, 3), generator=g)).clamp(0, 255).to(torch.uint8)
        im_tensor = im.float().permute(2, 0, 1)
        im_tensor = F.upsample(im_tensor[None], [64, 64], mode="bilinear").type(torch.uint8)
        image = torch.divide(im_tensor, 255.0) - 0.5
        result = net(image)
        result = torch.squeeze(F.upsample(result[0][0], (h, w), mode="bilinear"), 0)
        ma, mi = torch.max(result), torch.min(result)
        ref["matte.image"] = im
        ref["matte.input"] = image.contiguous()
        ref["matte.alpha"] = ((result - mi) / (ma - mi))[0].contiguous()
    save_file(ref, OUT / "reference.safetensors")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
