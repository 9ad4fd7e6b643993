#!/usr/bin/env python3
"""Makes the SwinIR reference files: tiny random-weight SwinIR models with each of its four
reconstructions, saved as the official files are (buffers included), and spandrel's outputs
for them.

    /var/tmp/golden-venv/bin/python tools/golden/swinir.py   # writes crates/krya-engine/tests/golden/upscale/swinir_*

Each file is read back through spandrel's own loader, which detects SwinIR and its
hyper-parameters from the keys, and the reference output is that model's forward,
unclamped (not the descriptor's call, which clamps and also pads inputs under 16 px, a
policy of its own). Cases:

- `swinir_ps`: `pixelshuffle` ×2 (classical SR), `1conv`, two groups of different heads,
  window 4 built for 16² (so its shifted blocks store a 16-window mask), input 13×10 (padded
  by reflection to whole windows);
- `swinir_real`: `nearest+conv` ×4 (real-world SR), `3conv`, one group, input 9×11;
- `swinir_direct`: `pixelshuffledirect` ×3 (lightweight), input 8×8, `.pth` in `params`;
- `swinir_jpeg`: no upsampler (×1, the residual added to the input), window 7, so the image
  range is 255 as in the JPEG models, input 15×13;
- `hat`, `hat_identity`: HAT (convolution branches, overlapping cross-attention), ×2 with
  `1conv` residuals and ×4 with none.

`swinir_reference.safetensors` holds `{case}.input` and `{case}.output`; `swinir_cases.json`
lists the cases with what spandrel detected.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

import spandrel
from spandrel.architectures.HAT import HAT
from spandrel.architectures.SwinIR import SwinIR

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/upscale"
torch.set_num_threads(2)
GEN = torch.Generator().manual_seed(20261208)


def model(arch=SwinIR, **kw):
    torch.manual_seed(0)
    m = arch(
        patch_size=1,
        in_chans=3,
        mlp_ratio=2.0,
        drop_path_rate=0.0,
        **kw,
    ).eval()
    # Every weight moved off its initial value (LayerNorms off 1 and 0, biases off 0), so
    # a weight read into the wrong place shows.
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn(p.shape, generator=GEN) * (0.05 if p.dim() > 1 else 0.05))
    return m


def image(h, w):
    return torch.rand(1, 3, h, w, generator=GEN).float()


def main():
    loader = spandrel.ModelLoader()
    tensors = {}
    cases = []

    def case(name, m, x, fmt="safetensors", wrap=None):
        sd = {k: v.contiguous() for k, v in m.state_dict().items()}
        path = OUT / f"{name}.{fmt}"
        if fmt == "safetensors":
            save_file(sd, str(path))
        else:
            torch.save({wrap: sd} if wrap else sd, str(path))
        loaded = loader.load_from_file(str(path))
        loaded.model.eval()
        # The network itself (its own reflection padding to whole windows), unclamped: the
        # descriptor clamps, and also pads inputs under 16 px, a policy of its own.
        with torch.no_grad():
            y = loaded.model(x)
        tensors[f"{name}.input"] = x.contiguous()
        tensors[f"{name}.output"] = y.contiguous()
        cases.append({
            "name": name,
            "file": path.name,
            "architecture": loaded.architecture.id,
            "scale": loaded.scale,
            "tags": loaded.tags,
        })
        print(name, loaded.architecture.id, loaded.scale, loaded.tags, tuple(x.shape), "->", tuple(y.shape))

    case("swinir_ps", model(img_size=16, embed_dim=12, depths=[2, 2], num_heads=[2, 3], window_size=4,
                            upscale=2, upsampler="pixelshuffle", resi_connection="1conv"), image(13, 10))
    case("swinir_real", model(img_size=8, embed_dim=16, depths=[2], num_heads=[2], window_size=4,
                              upscale=4, upsampler="nearest+conv", resi_connection="3conv"), image(9, 11))
    case("swinir_direct", model(img_size=8, embed_dim=12, depths=[2], num_heads=[3], window_size=4,
                                upscale=3, upsampler="pixelshuffledirect", resi_connection="1conv"),
         image(8, 8), fmt="pth", wrap="params")
    case("swinir_jpeg", model(img_size=14, embed_dim=8, depths=[2], num_heads=[2], window_size=7,
                              upscale=1, img_range=255.0, upsampler="", resi_connection="1conv"), image(15, 13))

    # HAT: SwinIR's layout with convolution branches and overlapping cross-attention, window
    # 4 with keys from 6 × 6 (overlap 0.5), two groups of different heads, ×2 (and ×4 with
    # the groups' and body's residual convolutions left out: "identity").
    case("hat", model(HAT, img_size=16, embed_dim=12, depths=[2, 2], num_heads=[2, 3], window_size=4,
                      compress_ratio=3, squeeze_factor=4, overlap_ratio=0.5, upscale=2,
                      resi_connection="1conv", num_feat=16), image(13, 10))
    case("hat_identity", model(HAT, img_size=16, embed_dim=8, depths=[2], num_heads=[2], window_size=4,
                               compress_ratio=2, squeeze_factor=4, overlap_ratio=0.5, upscale=4,
                               resi_connection="identity", num_feat=8), image(9, 11))

    save_file(tensors, str(OUT / "swinir_reference.safetensors"))
    (OUT / "swinir_cases.json").write_text(json.dumps(cases, indent=1) + "\n")


if __name__ == "__main__":
    main()
