"""Train the concept LoRA `demo-star`: teach the frozen base model what a "zkstar" is.

LoRA on the UNet attention projections and the text-encoder attention projections, trained on
the star pictures with SD's epsilon objective. A share of ordinary base pictures is mixed in
(a prior-preservation set) so that the LoRA changes stars and little else. Saved in kohya
format with the `ss_*` metadata trainers write, so the manager reads `zkstar` as the trigger.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from loraworks.demo.architecture import make_noise_scheduler
from loraworks.demo.data import STAR, TRIGGER, Label, make_set, to_tensor
from loraworks.demo.lora_layers import TEXT_ATTENTION, UNET_ALL, UNET_ATTENTION, inject, save_lora
from loraworks.demo.training import (
    AdapterTrainConfig,
    encode_latents,
    epsilon_loss,
    load_components,
    setup_torch,
    tokenize,
    train_adapters,
)


@dataclass
class LoRATrainConfig(AdapterTrainConfig):
    stars: int = 1000
    base_share: float = 0.25
    offset_noise: float = 0.2
    name: str = "demo-star"
    unet_layers: str = "attention"
    """`attention` (the classic kohya LoRA) or `all` (a LoCon: also feed-forward and resnets)."""

    def __post_init__(self) -> None:
        if self.unet_layers not in ("attention", "all"):
            raise ValueError(f"unet_layers must be 'attention' or 'all', not {self.unet_layers!r}")


def tag_frequency(labels: list[Label]) -> dict[str, dict[str, int]]:
    """kohya's `ss_tag_frequency` ({dataset: {tag: count}}): the trigger is on every caption."""
    tags = Counter()
    for label in labels:
        tags.update([TRIGGER, label.colour, f"{label.background} background"])
    return {TRIGGER: dict(tags)}


def kohya_metadata(cfg: LoRATrainConfig, labels: list[Label]) -> dict[str, object]:
    return {
        "ss_network_module": "networks.lora",
        "ss_network_args": json.dumps({"conv_dim": cfg.rank, "conv_alpha": cfg.alpha})
        if cfg.unet_layers == "all"
        else "{}",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha),
        "ss_base_model_version": "sd_v1",
        "ss_output_name": cfg.name,
        "ss_steps": str(cfg.steps),
        "ss_learning_rate": str(cfg.lr),
        "ss_seed": str(cfg.seed),
        "ss_num_train_images": str(len(labels)),
        "ss_tag_frequency": json.dumps(tag_frequency(labels)),
        "ss_training_comment": "loraworks train lora on the procedural zkstar set",
    }


def train_lora(cfg: LoRATrainConfig) -> Path:
    g = setup_torch(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    parts = load_components(cfg.base)
    stars = make_set(cfg.stars, cfg.seed + 10, (STAR,))
    prior = make_set(int(cfg.stars * cfg.base_share), cfg.seed + 11)
    latents = encode_latents(parts.vae, to_tensor(stars.images))
    prior_latents = encode_latents(parts.vae, to_tensor(prior.images))
    ids = tokenize(parts.tokenizer, stars.captions)
    prior_ids = tokenize(parts.tokenizer, prior.captions)
    all_latents = torch.cat([latents, prior_latents])
    all_ids = torch.cat([ids, prior_ids])

    if cfg.unet_layers == "all":
        unet_lora = inject(
            parts.unet, "lora_unet", UNET_ALL, cfg.rank, cfg.alpha, (nn.Linear, nn.Conv2d)
        )
    else:
        unet_lora = inject(parts.unet, "lora_unet", UNET_ATTENTION, cfg.rank, cfg.alpha)
    te_lora = inject(parts.text_encoder, "lora_te", TEXT_ATTENTION, cfg.rank, cfg.alpha)
    noise_sched = make_noise_scheduler()

    def loss() -> torch.Tensor:
        idx = torch.randint(len(all_latents), (cfg.batch,), generator=g)
        # the encoder runs once per distinct caption in the batch: it is 768 wide
        unique, inverse = torch.unique(all_ids[idx], dim=0, return_inverse=True)
        states = parts.text_encoder(unique)[0][inverse]
        return epsilon_loss(parts.unet, all_latents[idx], states, noise_sched, g, cfg.offset_noise)

    train_adapters(cfg, {"unet": unet_lora, "te": te_lora}, loss, g, "lora")
    path = save_lora(
        cfg.out / f"{cfg.name}.safetensors", [unet_lora, te_lora], kohya_metadata(cfg, stars.labels)
    )
    print(f"wrote {path}", flush=True)
    return path


if __name__ == "__main__":
    from loraworks.demo.train_commands import run_group

    run_group("lora")
