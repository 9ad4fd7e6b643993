#!/usr/bin/env python3
"""Makes LoRA training's reference: ten steps of diffusers + peft training the tiny SD 1.x
UNet (`golden/sd1`) from one LoRA init, on the same latents, text states, noise and
timesteps, with the recipe of diffusers' `train_text_to_image_lora.py` and kohya's options:
AdamW, a constant learning rate after a warm-up (`constant_with_warmup`: the first step's
rate is zero), gradients clipped to norm 1, min-SNR-γ weighting (γ = 5, ε-prediction), noise
offset, a batch of two with a timestep each.

    /var/tmp/golden-venv/bin/python tools/golden/train_lora.py   # writes crates/krya-engine/tests/golden/train/

Every random draw is exported (research note §10): `init.{layer}.down/up` (B non-zero, so
step one tests something), `step{k}.latents`, `.context`, `.noise`, `.offset_noise`,
`.timesteps`; and the reference: `alphas_cumprod`, `loss` per step, `grad0.{layer}.down/up`
(step one's gradients, before clipping) and `final.{layer}.down/up` after ten steps.
Then the same with the text encoder trained too (`reference_te.safetensors`, see
`text_encoder_too`), and on the tiny SDXL UNet with its added conditioning
(`reference_sdxl.safetensors`, see `sdxl`), and with the resnets' convolutions trained too
(LoCon, `reference_conv.safetensors`). Plain PyTorch, fp32, deterministic algorithms; no accelerate.
"""
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from peft import LoraConfig
from safetensors.torch import save_file

GOLDEN = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden"
OUT = GOLDEN / "train"
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

STEPS, BATCH, RANK, ALPHA = 10, 2, 4, 8.0
RECIPE = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, warmup=2, max_grad_norm=1.0,
              snr_gamma=5.0, noise_offset=0.05, rank=RANK, alpha=ALPHA, steps=STEPS, batch=BATCH,
              targets=["to_q", "to_k", "to_v", "to_out.0"])


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    unet_run(RECIPE["targets"], 11, "reference.safetensors")
    (OUT / "recipe.json").write_text(json.dumps(RECIPE, indent=1))
    text_encoder_too()
    sdxl()
    # LoCon: the resnets' 3×3 convolutions too (peft's Conv2d LoRA: A a k×k convolution with
    # the layer's stride and padding, B a 1×1 one).
    unet_run(RECIPE["targets"] + ["conv1", "conv2"], 14, "reference_conv.safetensors")


def unet_run(targets, seed, out_name):
    unet = UNet2DConditionModel.from_pretrained(str(GOLDEN / "sd1/unet")).train()
    noise_scheduler = DDPMScheduler.from_pretrained(str(GOLDEN / "sd1/scheduler"))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    data = {}
    lora = {}
    for name, m in unet.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            with torch.no_grad():
                a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            data[f"init.{name}.down"], data[f"init.{name}.up"] = a.detach().clone(), b.detach().clone()
            lora[name] = (a, b)
    params = [p for p in unet.parameters() if p.requires_grad]
    assert len(params) == 2 * len(lora)
    opt = torch.optim.AdamW(params, lr=RECIPE["lr"], betas=RECIPE["betas"], weight_decay=RECIPE["weight_decay"], eps=RECIPE["eps"])
    sched = get_scheduler("constant_with_warmup", optimizer=opt, num_warmup_steps=RECIPE["warmup"])
    cross = unet.config.cross_attention_dim
    losses = []
    for step in range(STEPS):
        latents = torch.randn(BATCH, 4, 8, 8, generator=g)
        context = torch.randn(BATCH, 5, cross, generator=g)
        noise = torch.randn(BATCH, 4, 8, 8, generator=g)
        offset_noise = torch.randn(BATCH, 4, 1, 1, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH,), generator=g)
        for k, v in dict(latents=latents, context=context, noise=noise, offset_noise=offset_noise,
                         timesteps=timesteps.to(torch.int64)).items():
            data[f"step{step}.{k}"] = v
        noise = noise + RECIPE["noise_offset"] * offset_noise
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy, timesteps, context).sample
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.stack([snr, RECIPE["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3]) * weights
        loss = loss.mean()
        loss.backward()
        if step == 0:
            for name, (a, b) in lora.items():
                data[f"grad0.{name}.down"], data[f"grad0.{name}.up"] = a.grad.clone(), b.grad.clone()
        torch.nn.utils.clip_grad_norm_(params, RECIPE["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        print(step, loss.item())
    for name, (a, b) in lora.items():
        data[f"final.{name}.down"], data[f"final.{name}.up"] = a.detach().clone(), b.detach().clone()
    data["alphas_cumprod"] = noise_scheduler.alphas_cumprod.float()
    data["loss"] = torch.tensor(losses, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in data.items()}, str(OUT / out_name))


TE_RECIPE = dict(RECIPE, te_lr=5e-4, te_targets=["q_proj", "k_proj", "v_proj", "out_proj"], tokens=77)


def te_name(name):
    """transformers' module name as Krya names the layer (`text_model.encoder.layers.0…`)."""
    name = name.removeprefix("text_model.")
    return f"text_model.{name}"


def text_encoder_too():
    """The same recipe with a LoRA on the text encoder as well (diffusers' `--train_text_encoder`:
    its own learning rate, one optimiser, the gradients of both clipped together): each step's
    text states come from the text encoder with its LoRA, on random token ids. Writes
    `reference_te.safetensors` (`te_init.*`, `te_final.*` for the text encoder's layers,
    `step{k}.ids`) and `recipe_te.json`."""
    from peft import inject_adapter_in_model
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(str(GOLDEN / "sd1/unet")).train()
    te = CLIPTextModel.from_pretrained(str(GOLDEN / "sd1/text_encoder")).train()
    noise_scheduler = DDPMScheduler.from_pretrained(str(GOLDEN / "sd1/scheduler"))
    unet.requires_grad_(False)
    te.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False, target_modules=RECIPE["targets"]))
    te = inject_adapter_in_model(
        LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False, target_modules=TE_RECIPE["te_targets"]), te)
    g = torch.Generator().manual_seed(12)
    data = {}
    lora, te_lora = {}, {}
    for model, prefix, out, rename in ((unet, "init", lora, str), (te, "te_init", te_lora, te_name)):
        for name, m in model.named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                with torch.no_grad():
                    a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                    b.copy_(torch.randn(b.shape, generator=g) * 0.1)
                a.requires_grad_(True)
                b.requires_grad_(True)
                key = rename(name)
                data[f"{prefix}.{key}.down"], data[f"{prefix}.{key}.up"] = a.detach().clone(), b.detach().clone()
                out[key] = (a, b)
    unet_params = [p for ab in lora.values() for p in ab]
    te_params = [p for ab in te_lora.values() for p in ab]
    assert len(te_lora) == 4 * te.config.num_hidden_layers
    opt = torch.optim.AdamW([{"params": unet_params}, {"params": te_params, "lr": TE_RECIPE["te_lr"]}],
                            lr=RECIPE["lr"], betas=RECIPE["betas"], weight_decay=RECIPE["weight_decay"], eps=RECIPE["eps"])
    sched = get_scheduler("constant_with_warmup", optimizer=opt, num_warmup_steps=RECIPE["warmup"])
    losses = []
    for step in range(STEPS):
        latents = torch.randn(BATCH, 4, 8, 8, generator=g)
        ids = torch.randint(0, te.config.vocab_size, (BATCH, TE_RECIPE["tokens"]), generator=g)
        noise = torch.randn(BATCH, 4, 8, 8, generator=g)
        offset_noise = torch.randn(BATCH, 4, 1, 1, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH,), generator=g)
        for k, v in dict(latents=latents, ids=ids.to(torch.int64), noise=noise, offset_noise=offset_noise,
                         timesteps=timesteps.to(torch.int64)).items():
            data[f"step{step}.{k}"] = v
        context = te(ids).last_hidden_state
        noise = noise + RECIPE["noise_offset"] * offset_noise
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy, timesteps, context).sample
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.stack([snr, RECIPE["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        loss = (F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3]) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet_params + te_params, RECIPE["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        print("te", step, loss.item())
    for prefix, layers in (("final", lora), ("te_final", te_lora)):
        for name, (a, b) in layers.items():
            data[f"{prefix}.{name}.down"], data[f"{prefix}.{name}.up"] = a.detach().clone(), b.detach().clone()
    data["loss"] = torch.tensor(losses, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in data.items()}, str(OUT / "reference_te.safetensors"))
    (OUT / "recipe_te.json").write_text(json.dumps(TE_RECIPE, indent=1))


def sdxl():
    """The same recipe on the tiny SDXL UNet (`golden/sdxl`), with its added conditioning
    (`text_embeds`, the pooled text state, and `time_ids`: original size, crop corner, target
    size) as diffusers' `train_text_to_image_lora_sdxl.py` passes it. Writes
    `reference_sdxl.safetensors` (`step{k}.pooled`, `.time_ids` besides the others)."""
    unet = UNet2DConditionModel.from_pretrained(str(GOLDEN / "sdxl/unet")).train()
    noise_scheduler = DDPMScheduler.from_pretrained(str(GOLDEN / "sdxl/scheduler"))
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights=False, target_modules=RECIPE["targets"]))
    g = torch.Generator().manual_seed(13)
    data, lora = {}, {}
    for name, m in unet.named_modules():
        if hasattr(m, "lora_A") and "default" in m.lora_A:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            with torch.no_grad():
                a.copy_(torch.randn(a.shape, generator=g) / a.shape[1] ** 0.5)
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            data[f"init.{name}.down"], data[f"init.{name}.up"] = a.detach().clone(), b.detach().clone()
            lora[name] = (a, b)
    params = [p for ab in lora.values() for p in ab]
    opt = torch.optim.AdamW(params, lr=RECIPE["lr"], betas=RECIPE["betas"], weight_decay=RECIPE["weight_decay"], eps=RECIPE["eps"])
    sched = get_scheduler("constant_with_warmup", optimizer=opt, num_warmup_steps=RECIPE["warmup"])
    c = unet.config
    pooled_dim = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    losses = []
    for step in range(STEPS):
        ch = c.in_channels
        latents = torch.randn(BATCH, ch, 8, 8, generator=g)
        context = torch.randn(BATCH, 5, c.cross_attention_dim, generator=g)
        pooled = torch.randn(BATCH, pooled_dim, generator=g)
        time_ids = torch.randint(0, 128, (BATCH, 6), generator=g).float()
        noise = torch.randn(BATCH, ch, 8, 8, generator=g)
        offset_noise = torch.randn(BATCH, ch, 1, 1, generator=g)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (BATCH,), generator=g)
        for k, v in dict(latents=latents, context=context, pooled=pooled, time_ids=time_ids, noise=noise,
                         offset_noise=offset_noise, timesteps=timesteps.to(torch.int64)).items():
            data[f"step{step}.{k}"] = v
        noise = noise + RECIPE["noise_offset"] * offset_noise
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        pred = unet(noisy, timesteps, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        snr = compute_snr(noise_scheduler, timesteps)
        weights = torch.stack([snr, RECIPE["snr_gamma"] * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
        loss = (F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3]) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, RECIPE["max_grad_norm"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        print("sdxl", step, loss.item())
    for name, (a, b) in lora.items():
        data[f"final.{name}.down"], data[f"final.{name}.up"] = a.detach().clone(), b.detach().clone()
    data["alphas_cumprod"] = noise_scheduler.alphas_cumprod.float()
    data["loss"] = torch.tensor(losses, dtype=torch.float64)
    save_file({k: v.contiguous() for k, v in data.items()}, str(OUT / "reference_sdxl.safetensors"))


if __name__ == "__main__":
    main()
