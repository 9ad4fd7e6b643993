#!/usr/bin/env python3
"""Makes InstructPix2Pix's reference files: a tiny random UNet with 8 input channels (4
noisy latents + 4 image latents) beside the tiny SD 1.x model's VAE, text encoder and
tokenizer (`golden/sd1`, linked), and diffusers' `StableDiffusionInstructPix2PixPipeline`
outputs for it.

    /var/tmp/golden-venv/bin/python tools/golden/pix2pix.py   # writes crates/krya-engine/tests/golden/pix2pix/

Cases: the defaults (guidance 7.5, image guidance 1.5), a negative prompt with stronger
image guidance and two images per prompt on DDIM, and no guidance (guidance 1: one UNet
pass per step). Files: the model folder, `cases.json`, and `reference.safetensors` with
`case.{id}` (u8 `[batch, h, w, 3]`).
"""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).parent))
from make import randomize  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden"
OUT = GOLDEN / "pix2pix"
torch.set_num_threads(2)


def main():
    sd1 = DiffusionPipeline.from_pretrained(str(GOLDEN / "sd1"), local_files_only=True)
    torch.manual_seed(21)
    unet = randomize(UNet2DConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=[32, 48], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)).eval()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=sd1.vae, text_encoder=sd1.text_encoder, tokenizer=sd1.tokenizer, unet=unet, scheduler=sd1.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if OUT.exists():
        shutil.rmtree(OUT)
    pipe.save_pretrained(str(OUT), safe_serialization=True)
    for c in ["vae", "text_encoder", "tokenizer"]:
        shutil.rmtree(OUT / c)
        os.symlink(f"../sd1/{c}", OUT / c)
    pipe = DiffusionPipeline.from_pretrained(str(OUT), local_files_only=True)

    image = Image.open(GOLDEN / "init.png").convert("RGB")
    tensors, cases = {}, []

    def case(cid, steps, guidance, image_guidance, seed, batch=1, negative_prompt=None, scheduler=None):
        original = pipe.scheduler
        if scheduler == "ddim":
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
        kw = dict(prompt="make it winter", image=image, num_inference_steps=steps, guidance_scale=guidance,
                  image_guidance_scale=image_guidance, generator=gens, num_images_per_prompt=batch, output_type="np")
        if negative_prompt is not None:
            kw["negative_prompt"] = negative_prompt
        with torch.no_grad():
            images = pipe(**kw).images
        pipe.scheduler = original
        u8 = (images * 255).round().astype(np.uint8)
        tensors[f"case.{cid}"] = torch.from_numpy(u8)
        cases.append(dict(id=cid, prompt=kw["prompt"], negative_prompt=negative_prompt, steps=steps, guidance=guidance,
                          image_guidance=image_guidance, seed=seed, batch=batch, scheduler=scheduler))
        print(cid, u8.shape, round(float(u8.mean()), 2), np.unique(u8).size)

    case("pix2pix_default", 4, 7.5, 1.5, seed=5)
    case("pix2pix_ddim_negative", 5, 5.0, 2.5, seed=8, batch=2, negative_prompt="blurry", scheduler="ddim")
    case("pix2pix_no_cfg", 3, 1.0, 1.5, seed=3)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
