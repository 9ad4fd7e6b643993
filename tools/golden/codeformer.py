#!/usr/bin/env python3
"""Makes CodeFormer's reference files: a tiny random-weight CodeFormer and the reference
forward pass (spandrel-extra-arches' copy of sczhou/CodeFormer's `codeformer_arch.py`, the
forward `inference_codeformer.py` runs: `adain=True`, fusion weighted by the fidelity `w`).

    /var/tmp/golden-venv/bin/python tools/golden/codeformer.py   # writes crates/krya-engine/tests/golden/face/

The released model is a 512² VQGAN (nf 64, ch_mult [1,2,2,4,4,8], two ResBlocks a level,
attention at 16²) with a 9-layer, 512-wide transformer over its 16×16 codes and fusion at
32, 64, 128 and 256. Its constructor fixes those numbers, so the tiny model here builds the
same structure smaller (128², nf 32, ch_mult [1,2,1,1]: three downsamplings to the same
16×16 codes; a 2-layer, 64-wide transformer; 64 codes) and sets the fusion block indices
of that structure, which follow the released model's rule: the encoder's feature at a size
is taken after that level's last ResBlock, and the generator fuses after the first ResBlock
of the level (the bottom level: its last ResBlock). The forward pass is the reference's own.
Files:

- `codeformer.pth`: the state dict wrapped in `params_ema`, as the released codeformer.pth;
- `codeformer.safetensors`: `input` (NCHW in [-1, 1]); per fidelity w in (0, 0.5, 1):
  `w{w}.output`; `codes` (the code chosen for each of the 16×16 tokens).
"""
from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel_extra_arches.architectures.CodeFormer.__arch.codeformer import (
    CodeFormer,
    Fuse_sft_block,
    TransformerSALayer,
    VQAutoEncoder,
)
from torch import nn

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden/face"
torch.set_num_threads(2)


class TinyCodeFormer(CodeFormer):
    def __init__(self):
        VQAutoEncoder.__init__(self, 128, 32, [1, 2, 1, 1], "nearest", 2, [16], 64)
        dim = 64
        self.connect_list = ["32", "64", "128"]
        self.n_layers = 2
        self.dim_embd = dim
        self.dim_mlp = dim * 2
        self.position_emb = nn.Parameter(torch.zeros(256, dim))
        self.feat_emb = nn.Linear(256, dim)
        self.ft_layers = nn.Sequential(
            *[TransformerSALayer(embed_dim=dim, nhead=8, dim_mlp=dim * 2) for _ in range(2)]
        )
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 64, bias=False))
        self.channels = {"16": 32, "32": 32, "64": 64, "128": 32}
        # Encoder: 0 conv; 1-2 Res, 3 Down (128); 4-5, 6 (64); 7-8, 9 (32); 10 Res, 11 Attn,
        # 12 Res, 13 Attn (16); 14-16 non-local; 17 norm; 18 conv.
        self.fuse_encoder_block = {"128": 2, "64": 5, "32": 8, "16": 12}
        # Generator: 0 conv; 1-3 non-local; 4 Res, 5 Attn, 6 Res, 7 Attn, 8 Up (16);
        # 9-10, 11 Up (32); 12-13, 14 Up (64); 15-16 (128); 17 norm; 18 conv.
        self.fuse_generator_block = {"16": 6, "32": 9, "64": 12, "128": 15}
        self.fuse_convs_dict = nn.ModuleDict(
            {s: Fuse_sft_block(self.channels[s], self.channels[s]) for s in self.connect_list}
        )


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(11)
    net = TinyCodeFormer().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight") and p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name == "position_emb":
                p.copy_(0.5 * torch.randn_like(p))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn_like(p) / max(fan_in, 1) ** 0.5)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    torch.save({"params_ema": sd}, str(OUT / "codeformer.pth"))

    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(12)) * 2 - 1
    tensors = {"input": x.contiguous()}
    with torch.no_grad():
        for w in (0.0, 0.5, 1.0):
            y = net(x, weight=w)[0]  # (image, logits)
            tensors[f"w{w}.output"] = y.contiguous()
            print("w", w, tuple(y.shape), float(y.abs().mean()))
        # The encoder's output and the codes the transformer picks, for diagnosis.
        h = x
        for block in net.encoder.blocks:
            h = block(h)
        q = net.feat_emb(h.flatten(2).permute(2, 0, 1))
        pos = net.position_emb.unsqueeze(1)
        for layer in net.ft_layers:
            q = layer(q, query_pos=pos)
        logits = net.idx_pred_layer(q).permute(1, 0, 2)
        top2 = logits.topk(2, dim=2).values
        print("smallest top-2 logit gap", float((top2[..., 0] - top2[..., 1]).min()))
        tensors["codes"] = logits.argmax(dim=2).to(torch.int64).contiguous()
    save_file(tensors, str(OUT / "codeformer.safetensors"))


if __name__ == "__main__":
    main()
