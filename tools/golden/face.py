#!/usr/bin/env python3
"""Makes the face restorer's reference files: a tiny random-weight GFPGAN (clean
architecture) and spandrel's output for it; a random-weight RetinaFace (MobileNet ×0.25,
facexlib's) with its raw outputs and detections; OpenCV's similarity fit and warp of a face
crop, as facexlib's FaceRestoreHelper makes them.

    /var/tmp/golden-venv/bin/python tools/golden/face.py   # writes crates/krya-engine/tests/golden/face/

The model is spandrel's `GFPGANv1Clean` at a 32×32 face with few channels. Its weights are
random (the noise buffers too); the reference runs it with `randomize_noise=False`, the
stored noise, as the engine does (GFPGANer would draw fresh noise on every call). Files:

- `gfpgan.pth`: the state dict wrapped in `params_ema`, as the released GFPGANv1.4.pth is;
- `gfpgan_whole.safetensors`: a second one with SFT on all channels and one style code;
- `retinaface.pth`: facexlib's `RetinaFace("mobile0.25")`, random weights and batch-norm
  statistics, keys prefixed `module.` as the released detection_mobilenet0.25_Final.pth;
- `reference.safetensors`: per GFPGAN case, `{case}.input` (NCHW in [-1, 1]) and
  `{case}.output`; `retina.image` (RGB 0-255, HWC), `retina.loc` / `.conf` / `.landms` (the
  raw outputs), `retina.dets` (`detect_faces` at threshold 0.5: box, score, landmarks);
  `align.image` (RGB 0-255), `align.landmarks`, `align.matrix` (estimateAffinePartial2D,
  LMEDS, onto the template at 32 px), `align.crop` (warpAffine, 32², the grey border).
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from spandrel.architectures.GFPGAN.__arch.gfpganv1_clean_arch import GFPGANv1Clean  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/face"
torch.set_num_threads(2)


def tiny(seed, **kw):
    torch.manual_seed(seed)
    net = GFPGANv1Clean(
        out_size=32,
        num_style_feat=16,
        channel_multiplier=1,
        num_mlp=2,
        narrow=1 / 32,
        **kw,
    ).eval()
    # Random weights everywhere, at sizes that keep activations in range; the noise
    # strengths away from their zero initialisation so that the noise counts.
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("modulation.bias"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith(".weight") and p.dim() == 1:
                p.copy_(0.3 * torch.randn_like(p))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn_like(p) / max(fan_in, 1) ** 0.5)
    return net


def retina(tensors):
    import numpy as np
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(3)
    net = RetinaFace(network_name="mobile0.25", device=torch.device("cpu")).eval()
    with torch.no_grad():
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
        for name, p in net.named_parameters():
            if name.endswith(".weight") and p.dim() == 1:
                p.copy_(0.5 + torch.rand_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(sd, str(OUT / "retinaface.pth"))
    g = torch.Generator().manual_seed(4)
    rgb = (torch.rand(72, 100, 3, generator=g) * 255).round()
    bgr = rgb.flip(-1).numpy().astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(bgr.transpose(2, 0, 1).copy()).unsqueeze(0) - net.mean_tensor
        loc, conf, landms = net(x)
        dets = net.detect_faces(bgr, conf_threshold=0.5, nms_threshold=0.4)
    tensors["retina.image"] = rgb.contiguous()
    tensors["retina.loc"] = loc.contiguous()
    tensors["retina.conf"] = conf.contiguous()
    tensors["retina.landms"] = landms.contiguous()
    tensors["retina.dets"] = torch.from_numpy(np.ascontiguousarray(dets, dtype=np.float32))
    print("retinaface", tuple(loc.shape), "detections", dets.shape[0])


def align(tensors):
    import cv2
    import numpy as np

    g = torch.Generator().manual_seed(5)
    rgb = (torch.rand(40, 48, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    template = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                         [201.26117, 371.41043], [313.08905, 371.15118]]) * (32 / 512.0)
    # A face's landmarks: the template turned, scaled and moved, and nudged off it.
    theta, s = 0.25, 1.3
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) * s
    marks = (template @ rot.T + np.array([6.0, 4.0])).astype(np.float32)
    marks += np.array([[0.3, -0.2], [-0.1, 0.25], [0.2, 0.1], [-0.3, 0.0], [0.1, -0.2]], dtype=np.float32)
    m = cv2.estimateAffinePartial2D(marks, template.astype(np.float32), method=cv2.LMEDS)[0]
    bgr = rgb[..., ::-1].copy()
    crop = cv2.warpAffine(bgr, m, (32, 32), borderMode=cv2.BORDER_CONSTANT, borderValue=(135, 133, 132))
    tensors["align.image"] = torch.from_numpy(rgb.astype(np.float32))
    tensors["align.landmarks"] = torch.from_numpy(marks)
    tensors["align.matrix"] = torch.from_numpy(m.astype(np.float32))
    tensors["align.crop"] = torch.from_numpy(crop[..., ::-1].astype(np.float32).copy())
    print("align", m.tolist())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tensors, cases = {}, {}

    def case(name, net, file, wrap=None):
        sd = {k: v.contiguous() for k, v in net.state_dict().items()}
        if file.endswith(".pth"):
            torch.save({wrap: sd} if wrap else sd, str(OUT / file))
        else:
            save_file(sd, str(OUT / file))
        x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(len(cases))) * 2 - 1
        with torch.no_grad():
            y, _ = net(x, return_rgb=False, randomize_noise=False)
        tensors[f"{name}.input"] = x.contiguous()
        tensors[f"{name}.output"] = y.contiguous()
        cases[name] = {"file": file, "out_size": 32, "params": sum(p.numel() for p in net.parameters())}
        print(name, tuple(y.shape), float(y.abs().mean()))

    case("gfpgan", tiny(1), "gfpgan.pth", wrap="params_ema")
    case("gfpgan_whole", tiny(2, sft_half=False, different_w=False), "gfpgan_whole.safetensors")
    retina(tensors)
    align(tensors)
    save_file(tensors, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    import spandrel

    (OUT / "VERSIONS").write_text(f"torch {torch.__version__}\nspandrel {spandrel.__version__}\n")


if __name__ == "__main__":
    main()
