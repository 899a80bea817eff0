"""Fixed inputs and one forward pass per component, so every reference and every engine run
is measured on exactly the same numbers."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from loraworks.demo.vocab import BOS_ID, EOS_ID

Outputs = dict[str, torch.Tensor]

_TOKENS = [BOS_ID, 5, 17, 42, 99, 311, EOS_ID]


@torch.no_grad()
def forward_all(components: Mapping[str, torch.nn.Module]) -> Outputs:
    """UNet noise prediction and text-encoder hidden states (plus projection for CLIP-G)."""
    g = torch.Generator().manual_seed(1234)
    unet = components["unet"]
    dtype = unet.dtype
    cfg = unet.config
    # 16x16, not 8x8: at 8x8 the deepest SD1/SD2 level is 1x1 and its GroupNorm (2 channels a
    # group) normalises two numbers, which made fp32 rounding swamp the LoRA's effect
    sample = torch.randn(1, 4, 16, 16, generator=g).to(dtype)
    context = torch.randn(1, len(_TOKENS), cfg.cross_attention_dim, generator=g).to(dtype)
    kwargs = {}
    if cfg.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 1280, generator=g).to(dtype),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).to(dtype),
        }
    out: Outputs = {
        "unet": unet(sample, torch.tensor([500]), encoder_hidden_states=context, **kwargs).sample
    }
    ids = torch.tensor([_TOKENS])
    out["text_encoder"] = components["text_encoder"](ids).last_hidden_state
    if components.get("text_encoder_2") is not None:
        o = components["text_encoder_2"](ids)
        out["text_encoder_2"] = torch.cat([o.last_hidden_state.flatten(), o.text_embeds.flatten()])
    return {k: v.float() for k, v in out.items()}


def relative_errors(ours: Outputs, ref: Outputs, unpatched: Outputs) -> dict[str, float]:
    """max|ours − ref| / max|ref − unpatched| for every component the LoRA changes."""
    errors = {}
    for name, r in ref.items():
        effect = (r - unpatched[name]).abs().max().item()
        if effect > 0:
            errors[name] = (ours[name] - r).abs().max().item() / effect
    return errors


def effects(ref: Outputs, unpatched: Outputs) -> dict[str, float]:
    """How much the LoRA moves each output, relative to the output's own size."""
    return {k: ((ref[k] - unpatched[k]).abs().max() / unpatched[k].abs().max()).item() for k in ref}
