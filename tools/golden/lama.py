#!/usr/bin/env python3
"""Makes LaMa's reference files: the 2-D real FFTs its Fourier units use, and a tiny
random-weight big-lama generator (spandrel's `FFCResNetGenerator`, the big-lama structure
at small widths: ngf 8, three downsamplings, two residual blocks) with its outputs.

    /var/tmp/golden-venv/bin/python tools/golden/lama.py   # writes crates/krya-engine/tests/golden/erase/

Files:
- `lama.safetensors`: the generator's state dict under spandrel's names (`model.model.N.…`);
- `reference.safetensors`:
  - `fft.{even,odd}.x` and `.spec` (`torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")` as
    `[…, 2, h, w/2+1]`, real then imaginary parts) and `fft.{even,odd}.inv_spec` and `.inv`
    (`irfftn` of a random spectrum whose first and last bins have imaginary parts, which
    the inverse must ignore);
  - `net.x` (`[1, 4, 40, 56]`) and `net.y`, the generator's output for it;
  - `erase.image` (`[29, 37, 3]` bytes), `erase.mask` (`[29, 37]`, 0/255) and `erase.pred`
    (`[29, 37, 3]`): the generator's picture as LaMa predicts (binary mask, image in [0, 1]
    with the hole zeroed, symmetric padding to a multiple of 8 at the bottom and right,
    output cut back, clipped and truncated to bytes).
"""
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from spandrel.architectures.LaMa.__arch.LaMa import FFCResNetGenerator

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/erase"
torch.set_num_threads(2)


def randomise_bn(model, g):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.data = torch.randn(n, generator=g) * 0.1
            m.running_var.data = torch.rand(n, generator=g) + 0.5


def spec_of(c):
    return torch.stack([c.real, c.imag], dim=-3).contiguous()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    ref = {}
    for name, shape in [("even", (2, 3, 6, 10)), ("odd", (1, 2, 5, 11))]:
        x = torch.randn(*shape, generator=g)
        ref[f"fft.{name}.x"] = x
        ref[f"fft.{name}.spec"] = spec_of(torch.fft.rfftn(x, dim=(-2, -1), norm="ortho"))
        h, w = shape[-2:]
        f = w // 2 + 1
        s = torch.randn(*shape[:-2], 2, h, f, generator=g)
        ref[f"fft.{name}.inv_spec"] = s
        ref[f"fft.{name}.inv"] = torch.fft.irfftn(torch.complex(s[..., 0, :, :], s[..., 1, :, :]),
                                                   s=(h, w), dim=(-2, -1), norm="ortho").contiguous()

    torch.manual_seed(11)
    gen = FFCResNetGenerator(4, 3, ngf=8, n_downsampling=3, n_blocks=2)
    randomise_bn(gen, g)
    gen.eval()
    # spandrel's LaMa wraps the generator (`model.N.…`) as `model`: `model.model.N.…`.
    save_file({f"model.{k}": v.contiguous() for k, v in gen.state_dict().items()
               if not k.endswith("num_batches_tracked")}, OUT / "lama.safetensors")

    with torch.no_grad():
        x = torch.rand(1, 4, 40, 56, generator=g)
        x[:, 3] = (x[:, 3] > 0.6).float()
        ref["net.x"] = x
        ref["net.y"] = gen.model(x).contiguous()

        h, w = 29, 37
        image = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
        mask = torch.zeros(h, w, dtype=torch.uint8)
        mask[8:20, 10:25] = 255
        mask[3:6, 30:34] = 255
        img = image.permute(2, 0, 1).float().numpy() / 255.0
        m = (mask.numpy() > 0).astype(np.float32)[None]
        ph, pw = (h + 7) // 8 * 8, (w + 7) // 8 * 8
        img = np.pad(img, ((0, 0), (0, ph - h), (0, pw - w)), mode="symmetric")
        m = np.pad(m, ((0, 0), (0, ph - h), (0, pw - w)), mode="symmetric")
        img, m = torch.from_numpy(img)[None], torch.from_numpy(m)[None]
        pred = gen(img * (1 - m), m)[0, :, :h, :w]
        ref["erase.image"] = image
        ref["erase.mask"] = mask
        ref["erase.pred"] = torch.clamp(pred * 255, 0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    save_file(ref, OUT / "reference.safetensors")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
