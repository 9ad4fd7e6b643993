#!/usr/bin/env python3
"""Makes MobileSAM's reference files: a tiny random-weight TinyViT encoder built from the
reference's own modules (ChaoningZhang/MobileSAM@34bbbfdfac:mobile_sam/modeling/tiny_vit_sam.py,
at a 1024² input as its `forward_features` requires, with narrow stages) and a SAM prompt
encoder and mask decoder (transformers' `SamModel`, which `tools/golden/sam.py` shows equal to
the reference's) on its 64² embedding.

The reference is not on PyPI (it imports timm): point `MOBILESAM_TINYVIT` at that file:

    git -C MobileSAM show 34bbbfdfac:mobile_sam/modeling/tiny_vit_sam.py > /var/tmp/mobilesam/tiny_vit_sam.py
    MOBILESAM_TINYVIT=/var/tmp/mobilesam/tiny_vit_sam.py /var/tmp/golden-venv/bin/python tools/golden/mobile_sam.py

The reference keeps its last patch merging at stride 1 only for the released widths (320, 448,
576): the tiny model's last merging is swapped for the reference's own `Conv2d_BN` at stride 1,
and its neck (256 channels as released) for the same layers at 32.

Files (crates/krya-engine/tests/golden/segment/):
- `mobile_sam.safetensors`: the whole model under the original checkpoint's names
  (`image_encoder.patch_embed.seq.0.c.weight`, …, the classifier head the release keeps
  included, `prompt_encoder.…`, `mask_decoder.…`, as mobile_sam.pt);
- `mobile_sam_reference.safetensors`: `pixels_small` (`[1, 3, 64, 64]`; the encoder's input is
  it repeated 16 times along each side), `image_embeddings` (`[1, 32, 64, 64]`), and per case
  `{case}.masks` (every 4th low-resolution logit along each side) and `{case}.iou`.
"""
import importlib.util
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import SamConfig, SamModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sam import original_name  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/segment"
torch.set_num_threads(2)

spec = importlib.util.spec_from_file_location("tiny_vit_sam", os.environ["MOBILESAM_TINYVIT"])
tv = importlib.util.module_from_spec(spec)
sys.modules["tiny_vit_sam"] = tv  # timm's `register_model` looks its module up there
spec.loader.exec_module(tv)

C = 32


def main():
    torch.manual_seed(41)
    enc = tv.TinyViT(img_size=1024, in_chans=3, num_classes=10, embed_dims=[8, 16, 24, 32], depths=[2, 1, 2, 1],
                     num_heads=[1, 2, 3, 4], window_sizes=[7, 7, 14, 7], mlp_ratio=2.0, drop_rate=0.0,
                     drop_path_rate=0.0, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
    enc.layers[2].downsample.conv2 = tv.Conv2d_BN(32, 32, 3, 1, 1, groups=32)
    enc.neck = nn.Sequential(nn.Conv2d(32, C, 1, bias=False), tv.LayerNorm2d(C),
                             nn.Conv2d(C, C, 3, padding=1, bias=False), tv.LayerNorm2d(C))
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in enc.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    enc.eval()  # the attention's `ab` (the bias table gathered) is made here, from the values above

    config = SamConfig(
        vision_config=dict(hidden_size=8, output_channels=C, num_hidden_layers=1, num_attention_heads=1,
                           image_size=1024, patch_size=16, window_size=0, global_attn_indexes=[0], mlp_dim=8,
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=C, image_size=1024, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=C, mlp_dim=64, num_hidden_layers=2, num_attention_heads=8,
                                 iou_head_hidden_dim=32, iou_head_depth=3),
        attn_implementation="eager",
    )
    torch.manual_seed(43)
    sam = SamModel(config).eval()
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if name.startswith("vision_encoder."):
                continue
            if name.endswith("positional_embedding"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        sam.prompt_encoder.shared_embedding.positional_embedding.copy_(sam.shared_image_embedding.positional_embedding)

    sd = {f"image_encoder.{k}": v.contiguous() for k, v in enc.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    for k, v in sam.state_dict().items():
        if k.startswith("vision_encoder.") or k == "prompt_encoder.shared_embedding.positional_embedding":
            continue
        sd[original_name(k)] = v.contiguous()
    save_file(sd, str(OUT / "mobile_sam.safetensors"))

    small = torch.randn(1, 3, 64, 64, generator=g)
    pixels = small.repeat_interleave(16, dim=2).repeat_interleave(16, dim=3)
    tensors = {"pixels_small": small}
    cases = {
        "point": dict(points=[[300.5, 700.25]], labels=[1], box=None, multimask=True),
        "box_point": dict(points=[[500.0, 410.0]], labels=[0], box=[100.0, 200.0, 800.0, 900.0], multimask=False),
    }
    with torch.no_grad():
        emb = enc(pixels)
        print("embedding", tuple(emb.shape), float(emb.abs().max()))
        tensors["image_embeddings"] = emb.contiguous()
        for name, c in cases.items():
            kw = dict(image_embeddings=emb, multimask_output=c["multimask"],
                      input_points=torch.tensor([[c["points"]]]), input_labels=torch.tensor([[c["labels"]]]))
            if c["box"]:
                kw["input_boxes"] = torch.tensor([[c["box"]]])
            out = sam(**kw)
            tensors[f"{name}.masks"] = out.pred_masks[0, 0, :, ::4, ::4].contiguous()  # every 4th logit
            tensors[f"{name}.iou"] = out.iou_scores[0, 0].contiguous()
            print(name, tuple(out.pred_masks.shape), out.iou_scores[0, 0].tolist())
    save_file(tensors, str(OUT / "mobile_sam_reference.safetensors"))
    for f in ("mobile_sam.safetensors", "mobile_sam_reference.safetensors"):
        (OUT / f).chmod(0o644)


if __name__ == "__main__":
    main()
