#!/usr/bin/env python3
"""Makes the LoRA reference files: adapter files in every format users have, for the tiny
SD 1.x and SDXL models of the golden set, and diffusers' images with them applied.

    /var/tmp/golden-venv/bin/python tools/golden/lora.py   # writes crates/krya-engine/tests/golden/lora/

- kohya/sd-scripts files (`lora_unet_…`, `lora_te_…`, `.alpha` stored as fp16, LoCon on
  3×3 convolutions, 4-D weights on 1×1 ones) and diffusers/PEFT files (`unet.…lora_A`,
  `text_encoder.…lora_B`, no alpha) go through diffusers' own `load_lora_weights` and
  `set_adapters` (several at once, each with its weight, a negative one included).
- SDXL: a kohya file in the SGM layout (`lora_unet_input_blocks_…`, `middle_block`,
  `output_blocks`, `in_layers_2`, …) for both text encoders (`lora_te1_`, `lora_te2_`),
  which diffusers maps to its UNet itself (`_maybe_map_sgm_blocks_to_diffusers`).
- LyCORIS (LoHa, LoKr, LoCon with a Tucker core, full `diff`/`diff_b`) and DoRA
  (`dora_scale` per output row and per input column): diffusers cannot load these, so the
  reference merges them with ComfyUI's `calculate_weight` math written out below (einsum
  forms), into a copy of the weights, and runs the plain pipeline.

Files: `*.safetensors` (the adapters; `turbo_kohya` is for the studio's end-to-end test), `cases.json`, `reference.safetensors` with
`case.{id}` (u8 `[batch, h, w, 3]`).
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from diffusers import DiffusionPipeline

GOLDEN = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden"
OUT = GOLDEN / "lora"
torch.set_num_threads(2)
G = torch.Generator().manual_seed(2024)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=G) * scale


def layers(module, want):
    """(name, layer) for the Linear and Conv2d layers whose names `want` accepts."""
    return [(n, m) for n, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and want(n, m)]


def lora_pair(m, rank, gain=0.6):
    """down/up weights for a layer, shaped as kohya stores them (convs 4-D)."""
    if isinstance(m, torch.nn.Conv2d):
        o, i, kh, kw = m.weight.shape
        down = randn(rank, i, kh, kw, scale=1 / (i * kh * kw) ** 0.5)
        up = randn(o, rank, 1, 1, scale=gain / rank ** 0.5)
    else:
        o, i = m.weight.shape
        down = randn(rank, i, scale=1 / i ** 0.5)
        up = randn(o, rank, scale=gain / rank ** 0.5)
    return down, up


UNET_KOHYA = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
              "conv1", "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv")
TE = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def ends(names):
    return lambda n, m: any(n.endswith(s) for s in names)


def te_name(n):
    """A text-encoder module's name as files spell it (transformers 5's CLIPTextModel has no
    `text_model` level; CLIPTextModelWithProjection keeps it)."""
    return n if n.startswith("text_model.") else "text_model." + n


def kohya_file(pipe, path, rank=4, alpha=2.0):
    sd = {}
    for prefix, module, want in [("lora_unet", pipe.unet, ends(UNET_KOHYA)), ("lora_te", pipe.text_encoder, ends(TE))]:
        for n, m in layers(module, want):
            name = te_name(n) if prefix == "lora_te" else n
            key = f"{prefix}_{name.replace('.', '_')}"
            down, up = lora_pair(m, rank)
            sd[f"{key}.lora_down.weight"] = down
            sd[f"{key}.lora_up.weight"] = up
            sd[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_file(sd, str(path), metadata={"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"})


def peft_file(pipe, path, rank=3):
    sd = {}
    for prefix, module, want in [("unet", pipe.unet, ends(("to_q", "to_k", "to_v", "to_out.0"))),
                                 ("text_encoder", pipe.text_encoder, ends(("q_proj", "k_proj", "v_proj", "out_proj")))]:
        for n, m in layers(module, want):
            name = te_name(n) if prefix == "text_encoder" else n
            down, up = lora_pair(m, rank, gain=0.8)
            sd[f"{prefix}.{name}.lora_A.weight"] = down
            sd[f"{prefix}.{name}.lora_B.weight"] = up
    save_file(sd, str(path))


def sgm_name(unet, n):
    """diffusers' UNet module name → the SGM (kohya SDXL) name, for layers_per_block L:
    input block 1 + b·(L+1) + j, output block b·(L+1) + j, ResNet convs renamed."""
    L = unet.config.layers_per_block
    res = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
    p = n.split(".")
    if p[0] in ("down_blocks", "up_blocks"):
        b, kind = int(p[1]), p[2]
        if kind == "downsamplers":
            return f"input_blocks.{1 + b * (L + 1) + L}.0.op"
        j = int(p[3])
        rest = p[4:]
        if kind == "resnets":
            rest = res[rest[0]].split(".") + rest[1:]
        sub = 0 if kind == "resnets" else 1
        idx = 1 + b * (L + 1) + j if p[0] == "down_blocks" else b * (L + 1) + j
        blocks = "input_blocks" if p[0] == "down_blocks" else "output_blocks"
        return ".".join([blocks, str(idx), str(sub)] + rest)
    if p[0] == "mid_block":
        kind, j, rest = p[1], int(p[2]), p[3:]
        if kind == "resnets":
            return ".".join(["middle_block", str(2 * j)] + res[rest[0]].split(".") + rest[1:])
        return ".".join(["middle_block", "1"] + rest)
    raise ValueError(n)


def sdxl_kohya_file(pipe, path, rank=4, alpha=4.0):
    sd = {}
    want = lambda n, m: (n.startswith(("down_blocks", "mid_block", "up_blocks")) and "upsamplers" not in n
                         and "downsamplers" not in n and ends(UNET_KOHYA)(n, m))
    for n, m in layers(pipe.unet, want):
        key = "lora_unet_" + sgm_name(pipe.unet, n).replace(".", "_")
        down, up = lora_pair(m, rank)
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    for prefix, te in [("lora_te1", pipe.text_encoder), ("lora_te2", pipe.text_encoder_2)]:
        for n, m in layers(te, ends(TE)):
            key = f"{prefix}_{te_name(n).replace('.', '_')}"
            down, up = lora_pair(m, rank)
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})


# --- LyCORIS and DoRA, merged by ComfyUI's math (comfy/lora.py, comfy/weight_adapter) ---

def tucker(t, wb, wa):
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def lycoris_file(pipe, path):
    """Each algorithm on some layers; returns {(component, module name): (ΔW·scale, dora, Δbias)}."""
    sd, merges = {}, {}
    unet, te = pipe.unet, pipe.text_encoder
    conv3 = [(n, m) for n, m in layers(unet, ends(("conv1", "conv2"))) if m.kernel_size == (3, 3)]
    lin = layers(unet, ends(("to_q", "to_k", "to_v", "to_out.0", "ff.net.2")))
    te_lin = layers(te, ends(("q_proj", "fc1", "fc2")))

    def put(prefix, name, tensors, alpha, delta, comp, dora=None, dbias=None):
        key = f"{prefix}_{name.replace('.', '_')}"
        for k, v in tensors.items():
            sd[f"{key}.{k}"] = v.contiguous()
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(alpha)
        if dora is not None:
            sd[f"{key}.dora_scale"] = dora
        merges[(comp, name)] = (delta, dora, dbias)

    # LoHa, plain, on linears (rank 2, alpha 1).
    for n, m in lin[0:4]:
        o, i = m.weight.shape
        r = 2
        w1a, w1b, w2a, w2b = randn(o, r, scale=0.8), randn(r, i, scale=1 / i ** 0.5), randn(o, r, scale=0.8), randn(r, i, scale=1 / i ** 0.5)
        put("lora_unet", n, dict(hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b), 1.0,
            ((w1a @ w1b) * (w2a @ w2b)) * (1.0 / r), "unet")
    # LoHa with Tucker cores on a 3×3 conv.
    n, m = conv3[0]
    o, i, kh, kw = m.weight.shape
    r = 2
    t1, t2 = randn(r, r, kh, kw, scale=0.7), randn(r, r, kh, kw, scale=0.7)
    w1a, w1b, w2a, w2b = randn(r, o, scale=0.7), randn(r, i, scale=1 / i ** 0.5), randn(r, o, scale=0.7), randn(r, i, scale=1 / i ** 0.5)
    put("lora_unet", n, dict(hada_w1_a=w1a, hada_w1_b=w1b, hada_w2_a=w2a, hada_w2_b=w2b, hada_t1=t1, hada_t2=t2), 1.0,
        tucker(t1, w1b, w1a) * tucker(t2, w2b, w2a) * (1.0 / r), "unet")
    # LoKr: w1 whole, w2 a product (rank 2, alpha 1) on a linear; both whole on another.
    for idx, (n, m) in enumerate(lin[4:6]):
        o, i = m.weight.shape
        a1, b1 = 2, 2
        w1 = randn(a1, b1, scale=0.8)
        if idx == 0:
            w2a, w2b = randn(o // a1, 2, scale=0.7), randn(2, i // b1, scale=1 / (i // b1) ** 0.5)
            put("lora_unet", n, dict(lokr_w1=w1, lokr_w2_a=w2a, lokr_w2_b=w2b), 1.0, torch.kron(w1, w2a @ w2b) * 0.5, "unet")
        else:
            w2 = randn(o // a1, i // b1, scale=0.5 / (i // b1) ** 0.5)
            put("lora_unet", n, dict(lokr_w1=w1, lokr_w2=w2), 7.0, torch.kron(w1, w2), "unet")
    # LoKr on a 3×3 conv: w1 a product, w2 whole (kernel taps in w2).
    n, m = conv3[1]
    o, i, kh, kw = m.weight.shape
    w1a, w1b = randn(2, 1, scale=0.8), randn(1, 2, scale=0.8)
    w2 = randn(o // 2, i // 2, kh, kw, scale=0.5 / (i // 2 * 9) ** 0.5)
    put("lora_unet", n, dict(lokr_w1_a=w1a, lokr_w1_b=w1b, lokr_w2=w2), 0.5,
        torch.kron((w1a @ w1b)[:, :, None, None], w2) * 0.5, "unet")
    # LoCon with a Tucker core on another 3×3 conv (rank 3, alpha 1.5).
    n, m = conv3[2]
    o, i, kh, kw = m.weight.shape
    r = 3
    down, mid, up = randn(r, i, 1, 1, scale=1 / i ** 0.5), randn(r, r, kh, kw, scale=0.4), randn(o, r, 1, 1, scale=0.5)
    delta = torch.einsum("o a, a b k l, b i -> o i k l", up[:, :, 0, 0], mid, down[:, :, 0, 0]) * (1.5 / r)
    put("lora_unet", n, dict(**{"lora_down.weight": down, "lora_mid.weight": mid, "lora_up.weight": up}), 1.5, delta, "unet")
    # Full diff with a bias change on a linear.
    n, m = lin[6]
    o, i = m.weight.shape
    diff, diff_b = randn(o, i, scale=0.3 / i ** 0.5), randn(o, scale=0.1)
    if m.bias is None:
        diff_b = None
    put("lora_unet", n, dict(diff=diff, **({"diff_b": diff_b} if diff_b is not None else {})), None, diff, "unet", dbias=diff_b)
    # DoRA: a LoRA with dora_scale per output row (LyCORIS ≥ 3.2) and per input column.
    for idx, (n, m) in enumerate(te_lin[:2]):
        o, i = m.weight.shape
        down, up = randn(4, i, scale=1 / i ** 0.5), randn(o, 4, scale=0.5)
        w = m.weight.detach()
        d = up @ down * (2.0 / 4)
        calc = w + d
        if idx == 0:
            dora = calc.norm(dim=1, keepdim=True) * (1 + randn(o, 1, scale=0.2))
        else:
            dora = calc.norm(dim=0, keepdim=True) * (1 + randn(1, i, scale=0.2))
        put("lora_te", te_name(n), {"lora_down.weight": down, "lora_up.weight": up}, 2.0, d, "text_encoder", dora=dora)
    # A plain kohya LoRA on the rest of the text encoder's fc layers.
    for n, m in te_lin[2:4]:
        down, up = lora_pair(m, 2)
        put("lora_te", te_name(n), {"lora_down.weight": down, "lora_up.weight": up}, 1.0, up @ down * 0.5, "text_encoder")
    save_file(sd, str(path))
    return merges


def merged(pipe, merges, multiplier):
    """Base state dicts, and the pipe's weights changed by `merges` at `multiplier`
    (ComfyUI: W + m·ΔW; DoRA: W + m·(dora·(W+ΔW)/‖W+ΔW‖ − W), the norm over the axis
    dora_scale's shape names)."""
    saved = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
    with torch.no_grad():
        for (comp, name), (delta, dora, dbias) in merges.items():
            module = getattr(pipe, comp).get_submodule(name if comp == "unet" or not name.startswith("text_model.") or hasattr(pipe.text_encoder, "text_model") else name[len("text_model."):])
            w = module.weight
            delta = delta.reshape(w.shape)
            if dora is None:
                w += multiplier * delta
            else:
                calc = w + delta
                norm = calc.norm(dim=1, keepdim=True) if dora.shape[0] == w.shape[0] and dora.shape[1] == 1 else calc.norm(dim=0, keepdim=True)
                w += multiplier * (dora * calc / norm - w)
            if dbias is not None:
                module.bias += multiplier * dbias
    return saved


def restore(pipe, saved):
    for c, sd in saved.items():
        getattr(pipe, c).load_state_dict(sd)


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    sd1 = DiffusionPipeline.from_pretrained(str(GOLDEN / "sd1"), local_files_only=True)
    sdxl = DiffusionPipeline.from_pretrained(str(GOLDEN / "sdxl"), local_files_only=True)
    tensors, cases = {}, []

    def case(cid, pipe, model, loras, seed, steps=4, guidance=5.0, batch=1, width=64, height=48,
             prompt="a photo of a cat, highly detailed", negative_prompt="blurry"):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
        with torch.no_grad():
            images = pipe(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=guidance,
                          width=width, height=height, generator=gens, num_images_per_prompt=batch, output_type="np").images
        u8 = (images * 255).round().astype(np.uint8)
        tensors[f"case.{cid}"] = torch.from_numpy(u8)
        cases.append(dict(id=cid, model=model, loras=loras, seed=seed, steps=steps, guidance=guidance, batch=batch,
                          width=width, height=height, prompt=prompt, negative_prompt=negative_prompt))
        print(cid, u8.shape, round(float(u8.mean()), 2), np.unique(u8).size)

    kohya_file(sd1, OUT / "sd1_kohya.safetensors")
    peft_file(sd1, OUT / "sd1_peft.safetensors")
    case("sd1_none", sd1, "sd1", [], seed=3)
    sd1.load_lora_weights(str(OUT), weight_name="sd1_kohya.safetensors", adapter_name="kohya")
    sd1.set_adapters(["kohya"], adapter_weights=[1.0])
    case("sd1_kohya", sd1, "sd1", [["sd1_kohya.safetensors", 1.0]], seed=3)
    sd1.load_lora_weights(str(OUT), weight_name="sd1_peft.safetensors", adapter_name="peft")
    sd1.set_adapters(["peft"], adapter_weights=[0.7])
    case("sd1_peft", sd1, "sd1", [["sd1_peft.safetensors", 0.7]], seed=3)
    sd1.set_adapters(["kohya", "peft"], adapter_weights=[0.8, -0.5])
    case("sd1_kohya_and_peft", sd1, "sd1", [["sd1_kohya.safetensors", 0.8], ["sd1_peft.safetensors", -0.5]], seed=9, batch=2)
    sd1.unload_lora_weights()
    case("sd1_unloaded", sd1, "sd1", [], seed=3)
    assert torch.equal(tensors["case.sd1_unloaded"], tensors["case.sd1_none"])

    merges = lycoris_file(sd1, OUT / "sd1_lycoris.safetensors")
    saved = merged(sd1, merges, 0.75)
    case("sd1_lycoris", sd1, "sd1", [["sd1_lycoris.safetensors", 0.75]], seed=5)
    restore(sd1, saved)

    sdxl_kohya_file(sdxl, OUT / "sdxl_kohya.safetensors")
    sdxl.load_lora_weights(str(OUT), weight_name="sdxl_kohya.safetensors", adapter_name="kohya")
    sdxl.set_adapters(["kohya"], adapter_weights=[0.9])
    case("sdxl_kohya", sdxl, "sdxl", [["sdxl_kohya.safetensors", 0.9]], seed=4, width=64, height=64)

    # The studio's end-to-end test applies one to its tiny model (golden/turbo); no image.
    turbo = DiffusionPipeline.from_pretrained(str(GOLDEN / "turbo"), local_files_only=True)
    kohya_file(turbo, OUT / "turbo_kohya.safetensors")

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    sys.exit(main())
