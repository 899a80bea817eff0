"""Distil the LCM-LoRA `demo-lcm` from the base model (latent consistency distillation).

As in the LCM-LoRA paper and diffusers' `train_lcm_distill_lora_sd` example: the frozen base
model is the teacher; one step of a DDIM solver on a 50-step skip schedule, with classifier-
free guidance at a random scale w, gives the target point; the student (base + LoRA) must map
both points of that step to the same clean latent under LCMScheduler's boundary conditions
(c_skip, c_out with timestep scaling 10, sigma_data 0.5). The target network is the student
itself without gradients, as the LCM-LoRA paper does. Saved like the published LCM-LoRAs:
a folder holding `pytorch_lora_weights.safetensors` with kohya-prefixed diffusers names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from loraworks.demo.architecture import make_noise_scheduler
from loraworks.demo.data import make_set, to_tensor
from loraworks.demo.lora_layers import UNET_ALL, inject, save_lora
from loraworks.demo.training import (
    AdapterTrainConfig,
    encode_latents,
    load_components,
    setup_torch,
    tokenize,
    train_adapters,
    training_noise,
)

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class LCMTrainConfig(AdapterTrainConfig):
    steps: int = 2000
    w_min: float = 3.0
    w_max: float = 7.0
    ddim_steps: int = 50
    huber_c: float = 0.001
    images: int = 2000
    offset_noise: float = 0.0
    name: str = "demo-lcm"


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0):
    """c_skip, c_out of `LCMScheduler.get_scalings_for_boundary_condition_discrete`."""
    scaled = t.float() * scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


@dataclass
class DDIMSkipSolver:
    """The 50-step skip schedule (t = 19, 39, …, 999) and one DDIM step back along it."""

    timesteps: torch.Tensor
    step_ratio: int
    alphas_cumprod: torch.Tensor

    @classmethod
    def make(cls, alphas_cumprod: torch.Tensor, ddim_steps: int) -> DDIMSkipSolver:
        ratio = len(alphas_cumprod) // ddim_steps
        timesteps = torch.arange(1, ddim_steps + 1) * ratio - 1
        return cls(timesteps=timesteps, step_ratio=ratio, alphas_cumprod=alphas_cumprod)

    def previous(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.step_ratio).clamp(min=0)

    def x0(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - (1 - a).sqrt() * eps) / a.sqrt()

    def step(self, x0: torch.Tensor, eps: torch.Tensor, t_prev: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t_prev].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps


def consistency_loss(
    unet, lora, solver: DDIMSkipSolver, latents, cond, uncond, cfg: LCMTrainConfig, g
) -> torch.Tensor:
    """One LCD step: student at t_n vs the student (no grad) at the teacher's DDIM point t_{n-k}."""
    b = len(latents)
    t = solver.timesteps[torch.randint(len(solver.timesteps), (b,), generator=g)]
    t_prev = solver.previous(t)
    noise = training_noise(latents.shape, g, cfg.offset_noise)
    a = solver.alphas_cumprod[t].view(-1, 1, 1, 1)
    x = a.sqrt() * latents + (1 - a).sqrt() * noise
    w = (torch.rand(b, generator=g) * (cfg.w_max - cfg.w_min) + cfg.w_min).view(-1, 1, 1, 1)

    c_skip, c_out = boundary_scalings(t)
    eps = unet(x, t, cond).sample
    prediction = c_skip * x + c_out * solver.x0(x, eps, t)

    with torch.no_grad():
        lora.set_scale(0.0)
        eps_c, eps_u = unet(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, uncond])
        ).sample.chunk(2)
        lora.set_scale(1.0)
        eps_g = eps_u + w * (eps_c - eps_u)
        x_prev = solver.step(solver.x0(x, eps_g, t), eps_g, t_prev)
        c_skip_p, c_out_p = boundary_scalings(t_prev)
        eps_p = unet(x_prev, t_prev, cond).sample
        target = c_skip_p * x_prev + c_out_p * solver.x0(x_prev, eps_p, t_prev)

    err = F.mse_loss(prediction, target, reduction="none")
    return (torch.sqrt(err + cfg.huber_c**2) - cfg.huber_c).mean()


def train_lcm(cfg: LCMTrainConfig) -> Path:
    g = setup_torch(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    parts = load_components(cfg.base)
    shapes = make_set(cfg.images, cfg.seed + 20)
    latents = encode_latents(parts.vae, to_tensor(shapes.images))
    captions = sorted(set(shapes.captions))
    caption_index = torch.tensor([captions.index(c) for c in shapes.captions])
    with torch.no_grad():
        embeds = parts.text_encoder(tokenize(parts.tokenizer, [*captions, ""]))[0]
    cond_table, uncond = embeds[:-1], embeds[-1:]

    lora = inject(parts.unet, "lora_unet", UNET_ALL, cfg.rank, cfg.alpha, (nn.Linear, nn.Conv2d))
    solver = DDIMSkipSolver.make(make_noise_scheduler().alphas_cumprod, cfg.ddim_steps)

    def loss() -> torch.Tensor:
        idx = torch.randint(len(latents), (cfg.batch,), generator=g)
        cond = cond_table[caption_index[idx]]
        return consistency_loss(
            parts.unet, lora, solver, latents[idx], cond, uncond.expand_as(cond), cfg, g
        )

    train_adapters(cfg, {"lora": lora}, loss, g, "lcm")
    folder = cfg.out / cfg.name
    save_lora(folder / WEIGHTS_NAME, [lora], {"format": "pt"})
    print(f"wrote {folder}", flush=True)
    return folder


if __name__ == "__main__":
    from loraworks.demo.train_commands import run_group

    run_group("lcm-lora")
