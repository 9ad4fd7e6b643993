#!/usr/bin/env python3
"""Makes BLIP captioning's reference files: a tiny random `BlipForConditionalGeneration`
(ViT + BERT decoder with cross-attention, transformers' layout and names) with a hand-written
WordPiece vocabulary, and transformers' outputs for it.

    /var/tmp/golden-venv/bin/python tools/golden/blip.py   # writes crates/krya-engine/tests/golden/caption/

Files: `model.safetensors`, `config.json`, `vocab.txt` (the model folder), `cases.json`
(per case: greedy tokens of `generate` and their decoded text, unconditional and from a
prompt) and `reference.safetensors` (`pixel_values` of the golden init image as the
processor makes them, `image_embeds`, and the logits of the first decoding step).
"""
import json
import shutil
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

GOLDEN = Path(__file__).resolve().parents[2] / "crates/krya-engine/tests/golden"
OUT = GOLDEN / "caption"
torch.set_num_threads(2)

WORDS = ("a the of in on with and photo photography picture painting cat dog red blue green sofa "
         "sitting standing man woman street night city house tree sky water boat field flower "
         "bird car table room window light dark white black small large old young two three . , ' s").split()
PIECES = ["##s", "##ing", "##ed", "##er", "##ly", "##y", "##es", "##n", "##t", "##a", "##e", "##o"]


def vocab():
    # Ids 1-99 (BERT's unused slots) hold made-up syllables, so every caption reads as words.
    syllables = [c + v + e for e in ("", "n") for c in "bdfgklmnprstvz" for v in "aeiou"][:99]
    assert len(syllables) == 99
    toks = ["[PAD]"] + syllables + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    toks += WORDS + PIECES
    toks += ["[DEC]", "[ENC]"]
    return toks


def randomize(model):
    g = torch.Generator().manual_seed(77)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            elif "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    toks = vocab()
    (OUT / "vocab.txt").write_text("\n".join(toks) + "\n")
    tokenizer = BertTokenizer(str(OUT / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    bos = toks.index("[DEC]")
    cfg = BlipConfig(
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=48, patch_size=8, layer_norm_eps=1e-5),
        text_config=dict(vocab_size=len(toks), hidden_size=32, encoder_hidden_size=48, intermediate_size=80,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=40,
                         bos_token_id=bos, sep_token_id=102, pad_token_id=0))
    torch.manual_seed(0)
    model = randomize(BlipForConditionalGeneration(cfg)).eval()
    model.save_pretrained(str(OUT), safe_serialization=True)
    model = BlipForConditionalGeneration.from_pretrained(str(OUT)).eval()
    processor = BlipProcessor(BlipImageProcessor(size={"height": 48, "width": 48}), tokenizer)
    image = Image.open(GOLDEN / "init.png").convert("RGB")
    pixel_values = processor(images=image, return_tensors="pt").pixel_values

    tensors = {"pixel_values": pixel_values}
    with torch.no_grad():
        embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
        tensors["image_embeds"] = embeds
        first = model.text_decoder(input_ids=torch.tensor([[bos]]), encoder_hidden_states=embeds).logits
        tensors["first_logits"] = first[0, -1]
    cases = []
    for cid, prompt, kw in [("unconditional", None, {}), ("prompt", "a photo of", {}), ("short", None, {"max_new_tokens": 6})]:
        inputs = processor(images=image, text=prompt, return_tensors="pt") if prompt else {"pixel_values": pixel_values}
        with torch.no_grad():
            out = model.generate(**inputs, **kw)
        ids = out[0].tolist()
        text = processor.decode(out[0], skip_special_tokens=True)
        cases.append(dict(id=cid, prompt=prompt, max_new_tokens=kw.get("max_new_tokens"), tokens=ids, text=text))
        print(cid, ids, repr(text))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "reference.safetensors"))
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
