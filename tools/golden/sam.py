#!/usr/bin/env python3
"""Makes Segment Anything's reference files: a tiny random-weight SAM (transformers'
`SamModel`, the reference's structure at small sizes: a 64² input in 8-px patches, windows
of 3 (the 8×8 grid padded to 9×9), one global block) and its outputs.

    /var/tmp/golden-venv/bin/python tools/golden/sam.py   # writes crates/krya-engine/tests/golden/segment/

Files:
- `sam.safetensors`: the state dict in transformers' names (a `facebook/sam-vit-*` repo);
- `sam_original.safetensors`: the same tensors in the original checkpoint's names
  (`image_encoder.blocks.…`, as sam_vit_b_01ec64.pth), renamed after the table in
  segment-anything's and transformers' conversion script;
- `reference.safetensors`: `pixel_values`, `image_embeddings`, and per case
  `{case}.masks` (low-resolution logits) and `{case}.iou`, and `post.masks` (the first
  case's logits as the predictor post-processes them for a 48×30 image); `cases.json`.
"""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import SamConfig, SamModel

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/segment"
torch.set_num_threads(2)


def original_name(k):
    """transformers' name → the original checkpoint's."""
    k = k.replace("vision_encoder.", "image_encoder.").replace("shared_image_embedding.positional_embedding",
                                                               "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
    if k.startswith("image_encoder."):
        k = (k.replace(".layers.", ".blocks.").replace("patch_embed.projection", "patch_embed.proj")
             .replace(".layer_norm1", ".norm1").replace(".layer_norm2", ".norm2")
             .replace("neck.conv1", "neck.0").replace("neck.norm1", "neck.1")
             .replace("neck.conv2", "neck.2").replace("neck.norm2", "neck.3"))
        k = k.replace("neck.layer_norm1", "neck.1").replace("neck.layer_norm2", "neck.3")
        k = k.replace("neck.norm1", "neck.1").replace("neck.norm2", "neck.3")
    k = (k.replace("mask_embed.conv1", "mask_downscaling.0").replace("mask_embed.layer_norm1", "mask_downscaling.1")
         .replace("mask_embed.conv2", "mask_downscaling.3").replace("mask_embed.layer_norm2", "mask_downscaling.4")
         .replace("mask_embed.conv3", "mask_downscaling.6").replace("point_embed.", "point_embeddings.")
         .replace("upscale_conv1", "output_upscaling.0").replace("upscale_layer_norm", "output_upscaling.1")
         .replace("upscale_conv2", "output_upscaling.3").replace("layer_norm_final_attn", "norm_final_attn"))
    if k.startswith("mask_decoder.transformer.layers."):
        for i in range(1, 5):
            k = k.replace(f".layer_norm{i}", f".norm{i}")
    if "output_hypernetworks_mlps." in k or "iou_prediction_head." in k:
        k = k.replace(".layers.0.", ".layers.1.").replace(".proj_in.", ".layers.0.").replace(".proj_out.", ".layers.2.")
    return k


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=3, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=3, global_attn_indexes=[1], mlp_dim=64,
                           num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=8,
                                 iou_head_hidden_dim=32, iou_head_depth=3),
        attn_implementation="eager",
    )
    torch.manual_seed(31)
    model = SamModel(config).eval()
    g = torch.Generator().manual_seed(32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed", "positional_embedding")):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("positional_embedding"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(model.shared_image_embedding.positional_embedding)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.pop("prompt_encoder.shared_embedding.positional_embedding", None)  # tied to shared_image_embedding
    save_file(sd, str(OUT / "sam.safetensors"))
    save_file({original_name(k): v for k, v in sd.items()}, str(OUT / "sam_original.safetensors"))

    pixel_values = torch.randn(1, 3, 64, 64, generator=g)
    tensors = {"pixel_values": pixel_values}
    cases = {
        "point": dict(points=[[20.3, 30.7]], labels=[1], box=None, multimask=True),
        "points": dict(points=[[10.0, 12.0], [40.0, 44.0]], labels=[1, 0], box=None, multimask=False),
        "box_point": dict(points=[[30.0, 25.0]], labels=[1], box=[8.0, 10.0, 50.0, 40.0], multimask=True),
        "box": dict(points=[], labels=[], box=[4.0, 6.0, 33.0, 60.0], multimask=False),
    }
    with torch.no_grad():
        emb = model.get_image_embeddings(pixel_values)
        tensors["image_embeddings"] = emb.contiguous()
        for name, c in cases.items():
            kw = dict(image_embeddings=emb, multimask_output=c["multimask"])
            if c["points"]:
                kw["input_points"] = torch.tensor([[c["points"]]])
                kw["input_labels"] = torch.tensor([[c["labels"]]])
            if c["box"]:
                kw["input_boxes"] = torch.tensor([[c["box"]]])
            out = model(**kw)
            tensors[f"{name}.masks"] = out.pred_masks[0, 0].contiguous()
            tensors[f"{name}.iou"] = out.iou_scores[0, 0].contiguous()
            print(name, tuple(out.pred_masks.shape), out.iou_scores[0, 0].tolist())
        # The predictor's post-processing of the first case's logits, for an image of 48×30
        # (scaled to 64×40 in the 64² input): up to the input, cropped, down to the image.
        from transformers import SamImageProcessor
        proc = SamImageProcessor(pad_size={"height": 64, "width": 64})
        post = proc.post_process_masks([tensors["point.masks"][None]], original_sizes=[[30, 48]],
                                       reshaped_input_sizes=[[40, 64]], binarize=False)[0]
        tensors["post.masks"] = post.contiguous()
    save_file(tensors, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
