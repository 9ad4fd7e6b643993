#!/usr/bin/env python3
"""Makes the engine's reference files: tiny random Stable Diffusion models in diffusers
layout, and diffusers' outputs for their components and for full pipelines.

    python -m venv /tmp/golden-venv && /tmp/golden-venv/bin/pip install -r tools/golden/requirements.txt
    /tmp/golden-venv/bin/python tools/golden/make.py          # writes crates/krya-engine/tests/golden/
    /tmp/golden-venv/bin/python tools/golden/make.py stream   # only the real-time frames
    /tmp/golden-venv/bin/python tools/golden/make.py configs  # only the scheduler-config cases

Each model's configs are deliberately unlike any preset (odd widths, per-block lists), so
the Rust engine must read them from the files. Pipelines use one torch CPU generator per
image, as a list, which the engine reproduces from the same seeds.
"""
import json
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import (AutoencoderKL, AutoencoderTiny, DiffusionPipeline, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LCMScheduler, LatentConsistencyModelImg2ImgPipeline, LatentConsistencyModelPipeline, PNDMScheduler, StableDiffusionImg2ImgPipeline,
                       StableDiffusionInpaintPipeline, StableDiffusionPipeline, StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

OUT = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden"
torch.set_num_threads(2)

CORPUS = """a photo of a cat sitting on a red sofa, highly detailed, studio lighting
portrait of an astronaut riding a horse on the moon, digital painting, trending
a watercolor landscape with mountains and a lake at sunset, soft colors
blurry, low quality, ugly, deformed hands, text, watermark, jpeg artifacts
cyberpunk city street at night with neon signs and rain, cinematic
""" * 3


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def make_tokenizer(path: Path, n_merges: int, pad_token: str):
    """A small CLIP-style BPE vocabulary learned from CORPUS."""
    bmap = bytes_to_unicode()
    words = Counter()
    for w in CORPUS.lower().replace(",", " ,").split():
        chars = [bmap[b] for b in w.encode()]
        chars[-1] += "</w>"
        words[tuple(chars)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new = Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    base = list(bmap.values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(str(path))
    return tok, len(vocab)


def text_encoder(vocab, hidden, layers, heads, inter, act, projection=None, eos=None):
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                         projection_dim=projection or hidden, eos_token_id=eos if eos is not None else 2)
    model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
    return model.eval()


def randomize(module, scale=1.0):
    """Default init leaves many layers near identity; spread the weights so every path matters."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in ** 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module


def tiny_vae(block_out, latent_channels, groups, scaling):
    n = len(block_out)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                        up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=block_out, layers_per_block=1,
                        latent_channels=latent_channels, norm_num_groups=groups, sample_size=32, scaling_factor=scaling)
    return randomize(vae).eval()


def save_model(path, pipe_cls, **components):
    pipe = pipe_cls(**components, **({"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
                                     if pipe_cls in (StableDiffusionPipeline, StableDiffusionInpaintPipeline, LatentConsistencyModelPipeline) else {}))
    if path.exists():
        shutil.rmtree(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    # References come from the pipeline as loaded from disk, as users (and the engine) load it:
    # an in-memory scheduler config omits defaults that `from_config` then does not carry
    # over (timestep_spacing), so the same files would give another image.
    return DiffusionPipeline.from_pretrained(str(path), local_files_only=True)


def models():
    """Builds every tiny model; returns {name: (pipeline, pipeline class)}."""
    torch.manual_seed(0)
    out = {}
    tok1, v1 = make_tokenizer(OUT / "_tok/sd1", 120, "<|endoftext|>")
    tok2, v2 = make_tokenizer(OUT / "_tok/sd2", 90, "!")

    # SD 1.x-like: quick GELU text encoder, conv projections, Euler (leading) from config.
    te = randomize(text_encoder(v1, 32, 2, 4, 37, "quick_gelu"))
    unet = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 48], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)).eval()
    vae = tiny_vae([16, 24, 24], 4, 8, 0.18215)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    out["sd1"] = save_model(OUT / "sd1", StableDiffusionPipeline, vae=vae, text_encoder=te, tokenizer=tok1, unet=unet, scheduler=sched)

    # SD 1.x inpainting UNet (9 input channels).
    unet9 = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=[32, 48], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)).eval()
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    out["inpaint"] = save_model(OUT / "inpaint", StableDiffusionInpaintPipeline, vae=vae, text_encoder=te, tokenizer=tok1, unet=unet9, scheduler=sched)

    # SD 2.x-like: exact GELU, linear projections, per-block heads, v-prediction DDIM, "!" padding.
    te2 = randomize(text_encoder(v2, 40, 3, 5, 72, "gelu"))
    unet2 = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=[24, 40], layers_per_block=[1, 2],
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=40, attention_head_dim=[2, 5], use_linear_projection=True, norm_num_groups=8)).eval()
    vae2 = tiny_vae([16, 32], 4, 8, 0.3)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    out["sd2v"] = save_model(OUT / "sd2v", StableDiffusionPipeline, vae=vae2, text_encoder=te2, tokenizer=tok2, unet=unet2, scheduler=sched)

    # Turbo-like: trailing Euler, meant for one step without guidance.
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing")
    out["turbo"] = save_model(OUT / "turbo", StableDiffusionPipeline, vae=vae2, text_encoder=te2, tokenizer=tok2, unet=unet2, scheduler=sched)

    # SDXL-like: two text encoders (the second with projection), text_time embedding, 3 latent channels.
    te_a = randomize(text_encoder(v1, 32, 2, 4, 48, "quick_gelu"))
    te_b = randomize(text_encoder(v1, 24, 3, 3, 40, "gelu", projection=20, eos=v1 - 1))
    unet_xl = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=56, attention_head_dim=[2, 4], transformer_layers_per_block=[1, 2], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=20 + 6 * 8,
        norm_num_groups=8)).eval()
    vae_xl = tiny_vae([16, 24], 3, 8, 0.13025)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    out["sdxl"] = save_model(OUT / "sdxl", StableDiffusionXLPipeline, vae=vae_xl, text_encoder=te_a, tokenizer=tok1,
                             text_encoder_2=te_b, tokenizer_2=tok1, unet=unet_xl, scheduler=sched)

    # SDXL inpainting UNet (9 channels: diffusers' SDXL inpainting needs 4 latent channels).
    unet_xl9 = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=56, attention_head_dim=[2, 4], transformer_layers_per_block=[1, 2], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=20 + 6 * 8,
        norm_num_groups=8)).eval()
    vae_xl4 = tiny_vae([16, 24], 4, 8, 0.13025)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    out["sdxl_inpaint"] = save_model(OUT / "sdxl_inpaint", StableDiffusionXLInpaintPipeline, vae=vae_xl4, text_encoder=te_a,
                                     tokenizer=tok1, text_encoder_2=te_b, tokenizer_2=tok1, unet=unet_xl9, scheduler=sched)

    # LCM-distilled: guidance embedded through time_cond_proj_dim, LCM scheduler.
    unet_lcm = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 48], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8, time_cond_proj_dim=12)).eval()
    sched = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=True)
    out["lcm"] = save_model(OUT / "lcm", LatentConsistencyModelPipeline, vae=vae, text_encoder=te, tokenizer=tok1, unet=unet_lcm, scheduler=sched)
    shutil.rmtree(OUT / "_tok")
    return out


SCHEDULERS = {
    "euler": lambda c: EulerDiscreteScheduler.from_config(c),
    "euler_a": lambda c: EulerAncestralDiscreteScheduler.from_config(c),
    "ddim": lambda c: DDIMScheduler.from_config(c),
    "dpmpp_2m": lambda c: DPMSolverMultistepScheduler.from_config(c, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=False),
    "dpmpp_2m_karras": lambda c: DPMSolverMultistepScheduler.from_config(c, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True),
    "lcm": lambda c: LCMScheduler.from_config(c),
    "pndm": lambda c: PNDMScheduler.from_config(c, skip_prk_steps=True),
}


def components(name, pipe, tensors):
    g = torch.Generator().manual_seed(7)
    prompts = ["a photo of a cat, highly detailed", "", "Portrait of an ASTRONAUT riding a horse!! 42 times"]
    for k, (tok, enc) in enumerate([(pipe.tokenizer, pipe.text_encoder), (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]):
        if enc is None:
            continue
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            o = enc(ids, output_hidden_states=True)
        tensors[f"{name}.te{k}.ids"] = ids.to(torch.int64)
        tensors[f"{name}.te{k}.last"] = o.last_hidden_state if hasattr(o, "last_hidden_state") and o.last_hidden_state is not None else o[0]
        tensors[f"{name}.te{k}.penultimate"] = o.hidden_states[-2]
        tensors[f"{name}.te{k}.pooled"] = o.text_embeds if hasattr(o, "text_embeds") else o.pooler_output
    unet = pipe.unet
    lc = unet.config.in_channels
    ctx_dim = unet.config.cross_attention_dim
    sample = torch.randn(2, lc, 8, 12, generator=g)
    ctx = torch.randn(2, 77, ctx_dim, generator=g)
    kw = {}
    if unet.config.addition_embed_type == "text_time":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 20, generator=g),
                                   "time_ids": torch.tensor([[64., 48., 0., 0., 64., 48.]] * 2)}
        tensors[f"{name}.unet.text_embeds"] = kw["added_cond_kwargs"]["text_embeds"]
        tensors[f"{name}.unet.time_ids"] = kw["added_cond_kwargs"]["time_ids"]
    if unet.config.time_cond_proj_dim:
        kw["timestep_cond"] = torch.randn(2, unet.config.time_cond_proj_dim, generator=g)
        tensors[f"{name}.unet.timestep_cond"] = kw["timestep_cond"]
    with torch.no_grad():
        out = unet(sample, 421.5, encoder_hidden_states=ctx, **kw).sample
    tensors[f"{name}.unet.sample"], tensors[f"{name}.unet.context"], tensors[f"{name}.unet.out"] = sample, ctx, out
    img = torch.rand(1, 3, 40, 56, generator=g) * 2 - 1
    with torch.no_grad():
        post = pipe.vae.encode(img).latent_dist
        lat = torch.randn(1, pipe.vae.config.latent_channels, 6, 10, generator=g)
        dec = pipe.vae.decode(lat).sample
    tensors[f"{name}.vae.image"], tensors[f"{name}.vae.mean"], tensors[f"{name}.vae.std"] = img, post.mean, post.std
    tensors[f"{name}.vae.latents"], tensors[f"{name}.vae.decoded"] = lat, dec


def init_image(w, h):
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(3)
    arr = np.stack([(x * 255 // w), (y * 255 // h), ((x + y) * 4) % 256], -1) + rng.integers(0, 40, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def mask_image(w, h):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: 3 * h // 4, w // 3: w - 4] = 255
    return Image.fromarray(m)


W, H = 64, 48


def run_case(pipes, tensors, cases, cid, model, mode="txt2img", scheduler=None, **p):
    """Runs one pipeline case: its images go to `tensors`, its parameters to `cases`."""
    w, h = W, H
    init, mask = Image.open(OUT / "init.png").convert("RGB"), Image.open(OUT / "mask.png").convert("L")
    pipe = pipes[model]
    original = pipe.scheduler
    if scheduler:
        pipe.scheduler = SCHEDULERS[scheduler](pipe.scheduler.config)
    batch = p.pop("batch", 1)
    seed = p.pop("seed", 0)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    kw = dict(prompt=p["prompt"], num_inference_steps=p["steps"], guidance_scale=p["guidance"], generator=gens,
              num_images_per_prompt=batch, output_type="np")
    if p.get("negative_prompt") is not None:
        kw["negative_prompt"] = p["negative_prompt"]
    if mode == "txt2img":
        kw.update(width=w, height=h)
        if p.get("init_noise"):
            vae_f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
            noise = torch.randn(batch, pipe.vae.config.latent_channels, h // vae_f, w // vae_f, generator=torch.Generator().manual_seed(99))
            kw["latents"] = noise
            np.save(OUT / f"{cid}.noise.npy", noise.numpy())
        call = pipe
    elif mode == "img2img":
        # A model's own img2img pipeline: LCM models have theirs (strength in the schedule).
        img2img = LatentConsistencyModelImg2ImgPipeline if isinstance(pipe, LatentConsistencyModelPipeline) else StableDiffusionImg2ImgPipeline
        call = img2img(**{k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        kw.update(image=init, strength=p["strength"])
    else:
        call = pipe if isinstance(pipe, (StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline)) else StableDiffusionInpaintPipeline(
            **{k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")},
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        kw.update(image=init, mask_image=mask, strength=p["strength"], width=w, height=h)
    with torch.no_grad():
        images = call(**kw).images
    u8 = (images * 255).round().astype(np.uint8)
    tensors[f"case.{cid}"] = torch.from_numpy(u8)
    cases.append(dict(id=cid, model=model, mode=mode, scheduler=scheduler, batch=batch, seed=seed, width=w, height=h, **p))
    pipe.scheduler = original
    print(cid, u8.shape, round(u8.mean(), 2), round(u8.std(), 2), np.unique(u8).size)


def run_cases(pipes, tensors):
    init_image(W, H).save(OUT / "init.png")
    mask_image(W, H).save(OUT / "mask.png")
    cases = []

    def case(cid, model, **p):
        run_case(pipes, tensors, cases, cid, model, **p)

    base = dict(prompt="a photo of a cat, highly detailed", negative_prompt="blurry, low quality")
    case("sd1_default", "sd1", steps=4, guidance=7.5, batch=2, seed=42, **base)
    for s in ["euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm", "pndm"]:
        case(f"sd1_{s}", "sd1", scheduler=s, steps=5, guidance=6.0, seed=7, **base)
    case("sd1_no_cfg", "sd1", steps=3, guidance=1.0, seed=3, prompt="a watercolor landscape", negative_prompt=None)
    case("sd1_init_noise", "sd1", steps=3, guidance=4.0, init_noise=True, batch=2, seed=0, **base)
    case("sd1_img2img", "sd1", mode="img2img", scheduler="euler_a", steps=5, guidance=5.0, strength=0.6, batch=2, seed=11, **base)
    case("sd1_img2img_dpm", "sd1", mode="img2img", scheduler="dpmpp_2m", steps=6, guidance=5.0, strength=0.5, seed=12, **base)
    case("sd1_img2img_pndm", "sd1", mode="img2img", scheduler="pndm", steps=6, guidance=5.0, strength=0.7, seed=18, **base)
    case("sd1_inpaint_blend", "sd1", mode="inpaint", scheduler="ddim", steps=5, guidance=5.0, strength=0.75, batch=2, seed=13, **base)
    case("sd1_inpaint_blend_euler_a", "sd1", mode="inpaint", scheduler="euler_a", steps=4, guidance=5.0, strength=0.75, batch=2, seed=19, **base)
    case("inpaint_unet", "inpaint", mode="inpaint", steps=4, guidance=5.0, strength=1.0, seed=14, **base)
    case("inpaint_unet_euler_a", "inpaint", mode="inpaint", scheduler="euler_a", steps=4, guidance=5.0, strength=0.8, batch=2, seed=15, **base)
    case("inpaint_unet_ddim_08", "inpaint", mode="inpaint", steps=4, guidance=5.0, strength=0.8, seed=16, **base)
    case("inpaint_unet_euler_a_1", "inpaint", mode="inpaint", scheduler="euler_a", steps=4, guidance=5.0, strength=1.0, seed=17, **base)
    case("sd2v_default", "sd2v", steps=4, guidance=7.0, seed=21, **base)
    case("sd2v_dpmpp_2m_karras", "sd2v", scheduler="dpmpp_2m_karras", steps=5, guidance=7.0, seed=22, **base)
    case("turbo_default", "turbo", steps=1, guidance=0.0, seed=31, prompt=base["prompt"], negative_prompt=None)
    case("turbo_euler_a_2", "turbo", scheduler="euler_a", steps=2, guidance=0.0, seed=32, prompt=base["prompt"], negative_prompt=None)
    case("sdxl_default", "sdxl", steps=3, guidance=5.0, seed=41, prompt=base["prompt"], negative_prompt=None)
    case("sdxl_negative_euler_a", "sdxl", scheduler="euler_a", steps=3, guidance=5.0, batch=2, seed=42, **base)
    case("sdxl_inpaint_unet", "sdxl_inpaint", mode="inpaint", steps=3, guidance=5.0, strength=1.0, seed=43, prompt=base["prompt"], negative_prompt=None)
    case("sdxl_inpaint_unet_euler_a", "sdxl_inpaint", mode="inpaint", scheduler="euler_a", steps=4, guidance=5.0, strength=0.8, batch=2, seed=44, **base)
    case("lcm_default", "lcm", steps=2, guidance=8.0, seed=51, prompt=base["prompt"], negative_prompt=None)
    case("lcm_4", "lcm", steps=4, guidance=3.0, batch=2, seed=52, prompt=base["prompt"], negative_prompt=None)
    case("lcm_img2img", "lcm", mode="img2img", steps=3, guidance=6.0, strength=0.5, batch=2, seed=53, prompt=base["prompt"], negative_prompt=None)
    return cases



# --- Scheduler configs as model repos ship them -------------------------------------------
# sd1's components under other scheduler files: SD 1.5's own (PNDM with skip_prk_steps, which
# once ran as Euler), and the DPM-Solver config diffusers saves (with "-Infinity" in it,
# which strict JSON refuses). Each model runs with its own scheduler (no override).

# runwayml/stable-diffusion-v1-5, scheduler/scheduler_config.json, verbatim.
SD15_SCHEDULER = """{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}
"""


def config_models():
    """{name: pipeline} of the models that differ from sd1 only in their scheduler files."""
    def sd15(d):
        (d / "scheduler_config.json").write_text(SD15_SCHEDULER)

    def dpm(d):
        DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    steps_offset=1).save_pretrained(str(d))
        assert "-Infinity" in (d / "scheduler_config.json").read_text()

    index = json.loads((OUT / "sd1/model_index.json").read_text())
    out = {}
    for name, cls, write in [("sd15", "PNDMScheduler", sd15), ("sd1_dpm", "DPMSolverMultistepScheduler", dpm)]:
        path = OUT / name
        if path.exists():
            shutil.rmtree(path)
        (path / "scheduler").mkdir(parents=True)
        for c in ["unet", "vae", "text_encoder", "tokenizer"]:
            os.symlink(f"../sd1/{c}", path / c)
        write(path / "scheduler")
        (path / "model_index.json").write_text(json.dumps(dict(index, scheduler=["diffusers", cls]), indent=2))
        out[name] = DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    return out


def config_cases(tensors, cases):
    pipes = config_models()
    base = dict(prompt="a photo of a cat, highly detailed", negative_prompt="blurry, low quality")
    run_case(pipes, tensors, cases, "sd15_default", "sd15", steps=6, guidance=7.5, batch=2, seed=71, **base)
    run_case(pipes, tensors, cases, "sd15_img2img", "sd15", mode="img2img", steps=6, guidance=5.0, strength=0.7, seed=72, **base)
    run_case(pipes, tensors, cases, "sd1_dpm_default", "sd1_dpm", steps=5, guidance=6.0, seed=73, **base)


def only_config_cases():
    """Adds (or remakes) the config cases in the committed reference files, leaving the rest."""
    from safetensors.torch import load_file
    ids = {"sd15_default", "sd15_img2img", "sd1_dpm_default"}
    tensors = {k: v for k, v in load_file(str(OUT / "reference.safetensors")).items() if k[len("case."):] not in ids}
    cases = [c for c in json.loads((OUT / "cases.json").read_text()) if c["id"] not in ids]
    config_cases(tensors, cases)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))


def main():
    if sys.argv[1:] == ["stream"]:
        # Only the real-time references, from the committed models.
        stream_reference()
        return
    if sys.argv[1:] == ["configs"]:
        only_config_cases()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    pipes = models()
    tensors = {}
    for name, pipe in pipes.items():
        components(name, pipe, tensors)
    cases = run_cases(pipes, tensors)
    checkpoint_case(tensors, cases)
    tiny_vae_reference(tensors)
    dedupe()
    config_cases(tensors, cases)
    stream_reference()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))
    (OUT / "VERSIONS").write_text(f"torch {torch.__version__}\ndiffusers {diffusers.__version__}\n"
                                  f"transformers {__import__('transformers').__version__}\n")



def tiny_vae_reference(tensors):
    """A TAESD-shaped AutoencoderTiny (diffusers layout, as madebyollin/taesd ships it)."""
    torch.manual_seed(9)
    taesd = randomize(AutoencoderTiny(encoder_block_out_channels=(16, 16, 16), decoder_block_out_channels=(16, 16, 16),
                                      num_encoder_blocks=(1, 2, 1), num_decoder_blocks=(1, 2, 1), latent_channels=4)).eval()
    path = OUT / "taesd"
    if path.exists():
        shutil.rmtree(path)
    taesd.save_pretrained(str(path), safe_serialization=True)
    taesd = AutoencoderTiny.from_pretrained(str(path)).eval()
    g = torch.Generator().manual_seed(10)
    img = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    lat = torch.randn(1, 4, 8, 12, generator=g) * 2
    with torch.no_grad():
        tensors["taesd.image"], tensors["taesd.encoded"] = img, taesd.encode(img).latents
        tensors["taesd.latents"], tensors["taesd.decoded"] = lat, taesd.decode(lat).sample


def schedule_len(steps, strength):
    """krya_engine::realtime::schedule_len: the shortest schedule that runs `steps` steps at `strength`."""
    n = max(steps, int(np.ceil(steps / strength)))
    while int(n * strength) < steps:
        n += 1
    while n > steps and int((n - 1) * strength) >= steps:
        n -= 1
    return n


def stream_reference():
    """Real-time frames (krya_engine::realtime::Stream): diffusers' text-to-image and img2img
    pipelines with vae=AutoencoderTiny, each frame with a freshly seeded generator, on models
    reloaded from disk. The turbo model gets its own TAESD (its VAE is 2x); LCM shares the
    4x one. A model folder's `taesd/` is where Krya looks for its tiny autoencoder first."""
    torch.manual_seed(12)
    taesd = randomize(AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                                      num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)).eval()
    path = OUT / "turbo" / "taesd"
    if path.exists():
        shutil.rmtree(path)
    taesd.save_pretrained(str(path), safe_serialization=True)
    link = OUT / "lcm" / "taesd"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink("../taesd", link)
    canvas = init_image(32, 24)
    canvas.save(OUT / "stream_canvas.png")
    tensors, cases = {}, []
    comps = ("text_encoder", "tokenizer", "unet", "scheduler")
    for cid, model, steps, strength, seed, prompt in [
        ("turbo_text", "turbo", 1, None, 5, "a lighthouse at dusk"),
        ("turbo_text_2", "turbo", 2, None, 6, "a lighthouse at dusk"),
        ("turbo_canvas_1_05", "turbo", 1, 0.5, 7, "a lighthouse at dusk"),
        ("turbo_canvas_2_07", "turbo", 2, 0.7, 8, "a red barn in a field"),
        ("turbo_canvas_4_03", "turbo", 4, 0.3, 9, "a red barn in a field"),
        ("lcm_text_2", "lcm", 2, None, 10, "a lighthouse at dusk"),
        ("lcm_canvas_2_06", "lcm", 2, 0.6, 11, "a red barn in a field"),
    ]:
        base = DiffusionPipeline.from_pretrained(str(OUT / model))
        tiny = AutoencoderTiny.from_pretrained(str(OUT / model / "taesd")).eval()
        parts = {k: v for k, v in base.components.items() if k in comps}
        lcm = isinstance(base, LatentConsistencyModelPipeline)
        guidance = 8.0 if lcm else 0.0
        kw = dict(prompt=prompt, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), output_type="np")
        if strength is None:
            call = (LatentConsistencyModelPipeline(vae=tiny, **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
                    if lcm else StableDiffusionPipeline(vae=tiny, **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False))
            kw.update(num_inference_steps=steps, width=32, height=24)
        else:
            img2img = LatentConsistencyModelImg2ImgPipeline if lcm else StableDiffusionImg2ImgPipeline
            call = img2img(vae=tiny, **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            kw.update(num_inference_steps=steps if lcm else schedule_len(steps, strength), image=canvas, strength=strength)
        with torch.no_grad():
            images = call(**kw).images
        u8 = (images[0] * 255).round().astype(np.uint8)
        tensors[f"stream.{cid}"] = torch.from_numpy(u8)
        cases.append(dict(id=cid, model=model, steps=steps, strength=strength, seed=seed, prompt=prompt, width=32, height=24))
        print(cid, u8.shape, round(u8.mean(), 2), round(u8.std(), 2), np.unique(u8).size)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "stream.safetensors"))
    (OUT / "stream_cases.json").write_text(json.dumps(cases, indent=1))


def dedupe():
    """Models that share a component point at one copy (relative symlinks keep the repo small)."""
    shared = {"turbo": ("sd2v", ["unet", "vae", "text_encoder", "tokenizer"]),
              "sdxl_inpaint": ("sdxl", ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]),
              "inpaint": ("sd1", ["vae", "text_encoder", "tokenizer"]),
              "lcm": ("sd1", ["vae", "text_encoder", "tokenizer"])}
    for model, (source, comps) in shared.items():
        for c in comps:
            a, b = OUT / model / c, OUT / source / c
            same = all((a / f.name).read_bytes() == f.read_bytes() for f in b.iterdir())
            if same:
                shutil.rmtree(a)
                os.symlink(f"../{source}/{c}", a)


# --- Single-file (original / A1111 layout) checkpoint -------------------------------------
# Names follow diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py.

def unet_to_original(sd, layers_per_block, n_levels, up_has_attn):
    per = layers_per_block + 1
    out = {}
    for k, v in sd.items():
        n = k
        for a, b in [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                     ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]:
            if n.startswith(a):
                n = b + n[len(a):]
        parts = n.split(".")
        if parts[0] == "down_blocks":
            i, kind, j = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                n = f"input_blocks.{per * i + j + 1}.0.{rest}"
            elif kind == "attentions":
                n = f"input_blocks.{per * i + j + 1}.1.{rest}"
            else:  # downsamplers.0.conv.*
                n = f"input_blocks.{per * (i + 1)}.0.op.{'.'.join(parts[5:])}"
        elif parts[0] == "mid_block":
            kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            n = f"middle_block.{1 if kind == 'attentions' else 2 * j}.{rest}"
        elif parts[0] == "up_blocks":
            i, kind, j = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "resnets":
                n = f"output_blocks.{per * i + j}.0.{rest}"
            elif kind == "attentions":
                n = f"output_blocks.{per * i + j}.1.{rest}"
            else:
                n = f"output_blocks.{per * i + layers_per_block}.{2 if up_has_attn[i] else 1}.{rest}"
        if ".resnets." not in k:
            pass
        for a, b in [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
                     ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection.")]:
            if "resnets" in k:
                n = n.replace("." + a, "." + b)
        out["model.diffusion_model." + n] = v
    return out


def vae_to_original(sd, n_levels):
    out = {}
    for k, v in sd.items():
        n = k.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        parts = n.split(".")
        if len(parts) > 2 and parts[1] in ("down_blocks", "up_blocks"):
            i = int(parts[2])
            lvl = i if parts[1] == "down_blocks" else n_levels - 1 - i
            name = "down" if parts[1] == "down_blocks" else "up"
            if parts[3] == "resnets":
                n = f"{parts[0]}.{name}.{lvl}.block.{parts[4]}.{'.'.join(parts[5:])}"
            else:
                n = f"{parts[0]}.{name}.{lvl}.{'downsample' if name == 'down' else 'upsample'}.{'.'.join(parts[5:])}"
        elif len(parts) > 2 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                n = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{'.'.join(parts[4:])}"
            else:
                a = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}[parts[4]]
                rest = parts[-1]
                n = f"{parts[0]}.mid.attn_1.{a}.{rest}"
                if a != "norm" and rest == "weight":
                    v = v[:, :, None, None]  # linear -> 1x1 conv
        out["first_stage_model." + n] = v
    return out


def clip_vocab_tokenizer(path: Path):
    """transformers' CLIPTokenizer on CLIP's own merges (the engine bundles the same file)."""
    merges_file = Path(__file__).resolve().parents[2] / "crates/krya-engine/assets/clip_merges.txt"
    merges = merges_file.read_text().splitlines()[1:]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + [m.replace(" ", "", 1) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    shutil.copy(merges_file, path / "merges.txt")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), pad_token="<|endoftext|>", model_max_length=77)
    return tok, len(vocab)


def make_checkpoint():
    """An SD1-layout checkpoint whose sizes the engine must read from shapes alone (heads and
    groups follow the presets: 64 channels per head at this context width, 32 groups)."""
    torch.manual_seed(5)
    tmp = OUT / "_ckpt_folder"
    tok, vocab = clip_vocab_tokenizer(OUT / "_ckpt_tok")
    te = randomize(text_encoder(vocab, 16, 2, 1, 24, "quick_gelu"))
    unet = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=16, attention_head_dim=1, norm_num_groups=32)).eval()
    vae = tiny_vae([32, 64], 4, 32, 0.18215)
    for m in (te, unet, vae):  # fp16-representable, so the fp16 file holds the same values
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.half().float())
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                                   timestep_spacing="leading")
    pipe = save_model(tmp, StableDiffusionPipeline, vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched)
    ckpt = {}
    ckpt.update(unet_to_original(unet.state_dict(), 1, 2, [False, True]))
    ckpt.update(vae_to_original(vae.state_dict(), 2))
    # Hub checkpoints name CLIP's tensors `text_model.*` (transformers 5 drops the prefix).
    ckpt.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
                 for k, v in te.state_dict().items()})
    save_file({k: v.half().contiguous() for k, v in ckpt.items()}, str(OUT / "sd1_checkpoint.safetensors"))
    return pipe, tmp


def checkpoint_case(tensors, cases):
    pipe, folder = make_checkpoint()
    # The bundled CLIP vocabulary against transformers' tokenizer, both pad tokens.
    prompts = ["a photo of a cat, highly detailed", "", "Ein Kätzchen im Schnee — 4K!! (masterpiece:1.2) <|endoftext|> don't",
               "a " * 100]
    for pad, key in [("<|endoftext|>", "eot"), ("!", "bang")]:
        tok = CLIPTokenizer(str(OUT / "_ckpt_tok/vocab.json"), str(OUT / "_ckpt_tok/merges.txt"), pad_token=pad, model_max_length=77)
        ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        tensors[f"clip_tokenizer.{key}"] = ids.to(torch.int64)
    (OUT / "clip_tokenizer_prompts.json").write_text(json.dumps(prompts, ensure_ascii=False))
    kw = dict(prompt="a photo of a cat, highly detailed", negative_prompt="blurry, low quality", num_inference_steps=3,
              guidance_scale=5.0, width=64, height=48, output_type="np")
    with torch.no_grad():
        images = pipe(generator=[torch.Generator().manual_seed(61)], **kw).images
        # diffusers' own single-file loader reads the checkpoint (offline, with the folder's
        # configs) and must give the folder's image: the conversion above is checked by it.
        single = StableDiffusionPipeline.from_single_file(str(OUT / "sd1_checkpoint.safetensors"), config=str(folder),
                                                          safety_checker=None, local_files_only=True)
        again = single(generator=[torch.Generator().manual_seed(61)], **kw).images
        assert np.abs(again - images).max() < 1e-6, "from_single_file disagrees with the folder"
    u8 = (images * 255).round().astype(np.uint8)
    tensors["case.ckpt_sd1"] = torch.from_numpy(u8)
    cases.append(dict(id="ckpt_sd1", model="sd1_checkpoint.safetensors", mode="txt2img", scheduler=None, batch=1, seed=61,
                      width=64, height=48, steps=3, guidance=5.0, prompt=kw["prompt"], negative_prompt=kw["negative_prompt"]))
    shutil.rmtree(folder)
    shutil.rmtree(OUT / "_ckpt_tok")


if __name__ == "__main__":
    sys.exit(main())
