#!/usr/bin/env python3
"""Makes the enhancer's reference files: tiny random-weight super-resolution models in each
key layout the engine reads, and spandrel's outputs for them.

    python -m venv /var/tmp/golden-venv && /var/tmp/golden-venv/bin/pip install -r tools/golden/requirements.txt
    /var/tmp/golden-venv/bin/python tools/golden/upscale.py   # writes crates/krya-engine/tests/golden/upscale/

Every model file is read back through spandrel's own loader (`ModelLoader`), which detects
the architecture and its hyper-parameters from the keys, and the reference output is that
model's: a layout written wrongly here fails there, not in the Rust test. Files:

- `esrgan_new.pth`: RRDBNet ×4 in the Real-ESRGAN layout (`conv_first`, `body.N.rdbM`),
  wrapped in `params_ema` as BasicSR saves it, zip-format pickle;
- `esrgan_x2.safetensors`: ×2 with pixel-unshuffled input (`conv_first` takes 12 channels);
- `esrgan_old.pth`: the old ESRGAN layout (`model.N`, `model.1.sub.N.RDBM.convK.0`), plain;
- `esrgan_bsrgan.safetensors`: the BSRGAN/RealSR layout (`RRDB_trunk`, `trunk_conv`);
- `esrgan_x1.safetensors`: ×1 (input unshuffled by 4);
- `compact.safetensors` / `compact_wdn.safetensors`: SRVGGNetCompact ×4 (PReLU), two weight
  sets, as realesr-general-x4v3 and its "wdn" twin; `compact_x2.pth` (×2, `params`).

`reference.safetensors` holds, per case, the input image (`{case}.input`, NCHW in [0, 1],
odd sizes) and spandrel's output (`{case}.output`); `cases.json` lists the cases with what
spandrel detected.
"""
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import spandrel

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/upscale"
torch.set_num_threads(2)
GEN = torch.Generator().manual_seed(20261207)


def rand(*shape, std=0.08):
    return (torch.randn(*shape, generator=GEN) * std).float()


def conv(sd, name, cin, cout, std=0.08):
    sd[f"{name}.weight"] = rand(cout, cin, 3, 3, std=std)
    sd[f"{name}.bias"] = rand(cout, std=0.02)


def rrdb_new(nf, nb, gc, in_nc, out_nc, ups=2):
    """Real-ESRGAN (basicsr) layout; `ups` upconv layers (×4 always in that class)."""
    sd = OrderedDict()
    conv(sd, "conv_first", in_nc, nf)
    for i in range(nb):
        for j in (1, 2, 3):
            for k in range(1, 6):
                cin = nf + (k - 1) * gc
                cout = gc if k < 5 else nf
                conv(sd, f"body.{i}.rdb{j}.conv{k}", cin, cout)
    conv(sd, "conv_body", nf, nf)
    for u in range(1, ups + 1):
        conv(sd, f"conv_up{u}", nf, nf)
    conv(sd, "conv_hr", nf, nf)
    conv(sd, "conv_last", nf, out_nc)
    return sd


def to_bsrgan(sd):
    out = OrderedDict()
    for k, v in sd.items():
        k = re.sub(r"^body\.(\d+)\.rdb(\d)\.", r"RRDB_trunk.\1.RDB\2.", k)
        k = k.replace("conv_body.", "trunk_conv.").replace("conv_up", "upconv").replace("conv_hr.", "HRconv.")
        out[k] = v
    return out


def to_old(sd, nb):
    """The old ESRGAN layout: one flattened nn.Sequential."""
    out = OrderedDict()
    ups = sorted(int(m.group(1)) for k in sd if (m := re.match(r"conv_up(\d)\.weight", k)))
    for k, v in sd.items():
        m = re.match(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$", k)
        if m:
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = v
            continue
        name, kind = k.rsplit(".", 1)
        if name == "conv_first":
            out[f"model.0.{kind}"] = v
        elif name == "conv_body":
            out[f"model.1.sub.{nb}.{kind}"] = v
        elif name.startswith("conv_up"):
            out[f"model.{3 * int(name[-1])}.{kind}"] = v
        elif name == "conv_hr":
            out[f"model.{3 * len(ups) + 2}.{kind}"] = v
        elif name == "conv_last":
            out[f"model.{3 * len(ups) + 4}.{kind}"] = v
        else:
            raise KeyError(k)
    return out


def compact(nf, num_conv, in_nc, out_nc, scale):
    sd = OrderedDict()
    conv(sd, "body.0", in_nc, nf)
    sd["body.1.weight"] = (0.25 + rand(nf, std=0.05)).float()
    for i in range(num_conv):
        conv(sd, f"body.{2 * i + 2}", nf, nf)
        sd[f"body.{2 * i + 3}.weight"] = (0.25 + rand(nf, std=0.05)).float()
    conv(sd, f"body.{2 * num_conv + 2}", nf, out_nc * scale * scale)
    return sd


def save(name, sd, wrap=None):
    path = OUT / name
    if name.endswith(".safetensors"):
        assert wrap is None
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        # torch.save writes the zip format (torch >= 1.6), which candle reads.
        torch.save({wrap: sd} if wrap else sd, str(path))
    return path


def image(h, w, c=3):
    return torch.rand(1, c, h, w, generator=GEN).float()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    loader = spandrel.ModelLoader()
    tensors = {}
    cases = []

    def case(name, path, x, **extra):
        model = loader.load_from_file(str(path))
        model.model.eval()
        with torch.no_grad():
            y = model(x)
        tensors[f"{name}.input"] = x.contiguous()
        tensors[f"{name}.output"] = y.contiguous()
        cases.append({
            "name": name,
            "file": path.name,
            "architecture": model.architecture.id,
            "scale": model.scale,
            "input_channels": model.input_channels,
            "output_channels": model.output_channels,
            **extra,
        })
        print(name, model.architecture.id, model.scale, tuple(x.shape), "->", tuple(y.shape))

    nf, nb, gc = 8, 2, 32
    new = rrdb_new(nf, nb, gc, 3, 3)
    case("esrgan_new", save("esrgan_new.pth", new, wrap="params_ema"), image(13, 17))
    x2 = rrdb_new(nf, 1, gc, 12, 3)
    case("esrgan_x2", save("esrgan_x2.safetensors", x2), image(11, 14))
    old = to_old(rrdb_new(nf, 1, gc, 3, 3), 1)
    case("esrgan_old", save("esrgan_old.pth", old), image(12, 9))
    bsr = to_bsrgan(rrdb_new(nf, 1, gc, 3, 3))
    case("esrgan_bsrgan", save("esrgan_bsrgan.safetensors", bsr), image(9, 10))
    x1 = rrdb_new(nf, 1, gc, 48, 3)
    case("esrgan_x1", save("esrgan_x1.safetensors", x1), image(10, 13))

    # SRVGGNetCompact, two weight sets and their blend (realesr-general-x4v3's denoise strength).
    a = compact(8, 2, 3, 3, 4)
    b = compact(8, 2, 3, 3, 4)
    case("compact", save("compact.safetensors", a), image(15, 12))
    save("compact_wdn.safetensors", b)
    x = image(15, 12)
    for dn in (0.3,):
        blend = OrderedDict((k, dn * a[k] + (1 - dn) * b[k]) for k in a)
        model = loader.load_from_state_dict(blend)
        with torch.no_grad():
            y = model(x)
        tensors[f"compact_dni.input"] = x.contiguous()
        tensors[f"compact_dni.output"] = y.contiguous()
        cases.append({"name": "compact_dni", "file": "compact.safetensors", "blend": "compact_wdn.safetensors", "denoise": dn,
                      "architecture": model.architecture.id, "scale": model.scale, "input_channels": 3, "output_channels": 3})
    c2 = compact(8, 3, 3, 3, 2)
    case("compact_x2", save("compact_x2.pth", c2, wrap="params"), image(8, 11))

    # The seam test's whole-image output: a larger image through the compact model.
    big = image(70, 90)
    model = loader.load_from_file(str(OUT / "compact.safetensors"))
    with torch.no_grad():
        tensors["compact_big.input"] = big.contiguous()
        tensors["compact_big.output"] = model(big).contiguous()
    cases.append({"name": "compact_big", "file": "compact.safetensors", "architecture": "Compact", "scale": 4, "input_channels": 3, "output_channels": 3})

    save_file(tensors, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    (OUT / "VERSIONS").write_text(f"torch {torch.__version__}\nspandrel {spandrel.__version__}\n")


if __name__ == "__main__":
    main()
