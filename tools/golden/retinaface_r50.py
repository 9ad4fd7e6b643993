#!/usr/bin/env python3
"""Makes the reference for facexlib's ResNet-50 RetinaFace (the detector GFPGANer uses by
default) without committing its 110 MB of weights: every tensor of the model is filled from a
formula of its position in the state dict and its elements' indices, which the Rust test
computes again to the bit (integer hashing and IEEE double arithmetic, rounded once to f32),
so only the tensors' names and shapes and the model's outputs are stored.

    /var/tmp/golden-venv/bin/python tools/golden/retinaface_r50.py   # writes crates/krya-engine/tests/golden/face/r50*

Element `i` of float tensor number `k` (state-dict order): `h = (i · 2654435761 + k · 40503 +
12345) mod 2³²`, `u = h / 2³²`, then by the tensor's role: convolution and linear weights
`(u − ½) · 2√(3 / fan_in)`, biases `(u − ½) / 5`, batch-norm weights `½ + u`, batch-norm biases
and running means `(u − ½) / 5`, running variances `½ + u`.

Files: `r50.json` (the float tensors' names and shapes, in order, and the integer ones'),
`r50_reference.safetensors` (`image`: RGB 0-255 HWC; `loc`, `conf`, `landms`: the raw
outputs of facexlib's `RetinaFace("resnet50")` for it).
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/face"
torch.set_num_threads(2)


def fill(k, name, shape):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(k) * np.uint64(40503) + np.uint64(12345)) % np.uint64(2**32)
    u = h.astype(np.float64) / 2.0**32
    if len(shape) > 1:
        fan_in = int(np.prod(shape[1:]))
        v = (u - 0.5) * (2.0 * math.sqrt(3.0 / fan_in))
    elif name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith(".weight"):
        v = 0.5 + u
    else:
        v = (u - 0.5) / 5.0
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main():
    from facexlib.detection.retinaface import RetinaFace

    net = RetinaFace(network_name="resnet50", device=torch.device("cpu")).eval()
    sd = net.state_dict()
    floats = []
    ints = []
    k = 0
    for name, t in sd.items():
        if t.is_floating_point():
            sd[name] = fill(k, name, list(t.shape))
            floats.append({"name": name, "shape": list(t.shape)})
            k += 1
        else:
            ints.append({"name": name, "shape": list(t.shape)})
    net.load_state_dict(sd)
    g = torch.Generator().manual_seed(6)
    rgb = (torch.rand(64, 80, 3, generator=g) * 255).round()
    bgr = rgb.flip(-1)
    with torch.no_grad():
        x = bgr.permute(2, 0, 1).unsqueeze(0).contiguous() - net.mean_tensor
        loc, conf, landms = net(x)
    save_file({"image": rgb.contiguous(), "loc": loc.contiguous(), "conf": conf.contiguous(),
               "landms": landms.contiguous()}, str(OUT / "r50_reference.safetensors"))
    (OUT / "r50.json").write_text(json.dumps({"floats": floats, "ints": ints}) + "\n")
    print("r50", len(floats), "float tensors;", tuple(loc.shape), "loc max", loc.abs().max().item(),
          "landms max", landms.abs().max().item(), "conf range", conf.min().item(), conf.max().item())


if __name__ == "__main__":
    main()
