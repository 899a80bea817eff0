"""Helpers every demo trainer shares: thread limit, learning-rate curve, EMA, checkpoints, logs.

Training runs for an hour or more on a shared 2-core machine, so every trainer saves a
checkpoint regularly and resumes from it when started again with the same output folder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraworks.demo.lora_layers import LoRASet

THREADS = 1
"""One thread: on a shared, busy 2-core machine two OpenMP threads wait on each other and ran a
VAE step 10x slower (8-14 s) than one thread did (0.8 s)."""


def setup_torch(seed: int) -> torch.Generator:
    """Limit threads (the machine is shared) and return the seeded generator for the run."""
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100, floor: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to `floor`·peak at `total` steps."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of parameters (with the usual warm-up of the decay)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float = 0.999) -> None:
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for p, s in zip(params, self.shadow, strict=True):
            p.copy_(s)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically so that a kill during the save never loses the previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.exists() else None


def resume(
    path: Path,
    opt: torch.optim.Optimizer,
    modules: dict[str, Any],
    g: torch.Generator | None = None,
) -> dict:
    """Every trainer's restart: the checkpoint at `path` loaded back into `modules` (each by its
    key there), the optimiser and, when given, the generator; `{}` without a checkpoint. The
    loop goes on at `state.get("step", 0)`."""
    state = load_checkpoint(path)
    if state is None:
        return {}
    for key, module in modules.items():
        module.load_state_dict(state[key])
    opt.load_state_dict(state["opt"])
    if g is not None:
        g.set_state(state["rng"])
    return state


@dataclass
class StepLog:
    """Prints `step N loss L lr X s/step T` every `every` steps, averaged over them."""

    name: str
    every: int = 25
    _loss: float = 0.0
    _count: int = 0
    _t0: float = 0.0

    def add(self, step: int, loss: float, lr: float) -> None:
        if self._count == 0:
            self._t0 = time.perf_counter()
        self._loss += loss
        self._count += 1
        if self._count == self.every:
            dt = (time.perf_counter() - self._t0) / self.every
            print(
                f"{self.name} step {step + 1} loss {self._loss / self._count:.4f} "
                f"lr {lr:.2e} s/step {dt:.3f}",
                flush=True,
            )
            self._loss, self._count = 0.0, 0


def min_snr_weights(
    timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float = 5.0
) -> torch.Tensor:
    """Min-SNR-γ loss weights for the epsilon objective (Hang et al. 2023): min(SNR, γ)/SNR."""
    a = alphas_cumprod[timesteps]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's length (77), as the SD pipelines pad prompts."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior means × the VAE scaling factor: what the UNet is trained to denoise."""
    latents = torch.cat([vae.encode(b).latent_dist.mean for b in images.split(256)])
    return latents * vae.config.scaling_factor


def training_noise(shape: torch.Size, g: torch.Generator, offset_noise: float) -> torch.Tensor:
    """Gaussian noise plus, with `offset_noise`, a random per-channel constant: without it the
    last timesteps still leak the picture's mean (SD's schedule never reaches pure noise), a
    model learns to read the background from it, and at sampling time, which starts from pure
    noise, draws a background the noise suggests instead of the one asked for."""
    noise = torch.randn(shape, generator=g)
    if offset_noise:
        noise = noise + offset_noise * torch.randn(*shape[:2], 1, 1, generator=g)
    return noise


def epsilon_loss(
    unet,
    latents: torch.Tensor,
    encoder_states: torch.Tensor,
    scheduler,
    g,
    offset_noise: float = 0.0,
) -> torch.Tensor:
    """SD's training objective: predict the added noise at a random timestep, min-SNR weighted
    (`offset_noise`: see `training_noise`)."""
    noise = training_noise(latents.shape, g, offset_noise)
    acp = scheduler.alphas_cumprod
    t = torch.randint(0, len(acp), (len(latents),), generator=g)
    noisy = scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_states).sample
    per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
    return (min_snr_weights(t, acp) * per_sample).mean()


@dataclass
class Components:
    """A demo diffusers folder loaded for training (fp32, frozen)."""

    vae: object
    unet: object
    text_encoder: object
    tokenizer: object


def load_components(folder: Path) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    parts = Components(
        vae=AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet", dtype=torch.float32),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=torch.float32),
        tokenizer=CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
    )
    for model in (parts.vae, parts.unet, parts.text_encoder):
        model.requires_grad_(False).eval()
    return parts


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


@dataclass
class AdapterTrainConfig:
    """What both adapter trainers (`train_lora`, `train_lcm`) take."""

    base: Path
    out: Path
    steps: int = 500
    rank: int = 8
    alpha: float = 8.0
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 100


def train_adapters(
    cfg: AdapterTrainConfig,
    adapters: dict[str, LoRASet],
    loss: Callable[[], torch.Tensor],
    g: torch.Generator,
    name: str,
) -> None:
    """The loop both adapter trainers run: AdamW over the adapters' parameters, cosine learning
    rate with a 50-step warm-up, `loss()` per step (it draws its batch from `g`), and every
    `checkpoint_every` steps a checkpoint `out/<name>.pt` (adapters by their key in `adapters`,
    optimiser, RNG, step) that a rerun with the same `out` resumes from."""
    params = [p for adapter in adapters.values() for p in adapter.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ckpt = cfg.out / f"{name}.pt"
    start = resume(ckpt, opt, adapters, g).get("step", 0)
    log = StepLog(name)
    for step in range(start, cfg.steps):
        lr = cosine_lr(step, cfg.steps, cfg.lr, warmup=50)
        set_lr(opt, lr)
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        log.add(step, value.item(), lr)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            weights = {key: adapter.state_dict(torch.float32) for key, adapter in adapters.items()}
            save_checkpoint(
                ckpt, {**weights, "opt": opt.state_dict(), "rng": g.get_state(), "step": step + 1}
            )
