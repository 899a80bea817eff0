"""The trainers' commands (`base`, `lora`, `lcm-lora`) and their runner: one set of options
for `loraworks train …` and for `python -m loraworks.demo.train_*`, kept here so that the
trainers never import the CLI that registers them."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Train the demo model and its LoRAs (CPU).")


@app.callback()
def _group() -> None:
    """Train the demo model and its LoRAs (CPU); every trainer resumes from its output folder."""


class UNetLayers(StrEnum):
    """Which UNet layers the concept LoRA adapts (typer refuses anything else, with the list)."""

    attention = "attention"
    all = "all"


@app.command()
def base(
    out: Path = typer.Option(..., help="output folder (checkpoints; the model goes to out/model)"),
    vae_steps: int = typer.Option(840),
    unet_steps: int = typer.Option(4000),
    images: int = typer.Option(16000, help="pictures in the procedural training set"),
    batch: int = typer.Option(16),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(250),
    decoder_steps: int = typer.Option(1500, help="decoder fine-tuning steps (fixed latents)"),
    offset_noise: float = typer.Option(0.2, help="per-channel noise offset (see epsilon_loss)"),
    stage: str = typer.Option("all", help="all | decoder (alongside the UNet) | export"),
) -> None:
    """Train `demo-shapes` (VAE, UNet, decoder fine-tune, export); resumes from `out`."""
    from loraworks.demo.train_base import BaseTrainConfig, train_base

    cfg = BaseTrainConfig(
        out=out,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        images=images,
        batch=batch,
        lr=lr,
        seed=seed,
        checkpoint_every=checkpoint_every,
        decoder_steps=decoder_steps,
        offset_noise=offset_noise,
    )
    typer.echo(f"model: {train_base(cfg, stage)}")


def run_group(command: str) -> None:
    """Entry for `python -m loraworks.demo.train_*`: the same options as the CLI command."""
    typer.main.get_command(app)([command, *sys.argv[1:]])


@app.command()
def lora(
    base: Path = typer.Option(..., help="the base model's diffusers folder"),
    out: Path = typer.Option(..., help="output folder (checkpoint and the .safetensors)"),
    steps: int = typer.Option(500),
    rank: int = typer.Option(8),
    alpha: float = typer.Option(8.0),
    batch: int = typer.Option(16),
    lr: float = typer.Option(1e-3),
    stars: int = typer.Option(1000, help="star pictures in the training set"),
    base_share: float = typer.Option(0.25, help="ordinary pictures mixed in, per star picture"),
    unet_layers: UNetLayers = typer.Option(UNetLayers.attention, help="all: a LoCon"),
    seed: int = typer.Option(0),
) -> None:
    """Train the concept LoRA `demo-star` (kohya format); resumes from `out`."""
    from loraworks.demo.train_lora import LoRATrainConfig, train_lora

    cfg = LoRATrainConfig(
        base=base,
        out=out,
        steps=steps,
        rank=rank,
        alpha=alpha,
        batch=batch,
        lr=lr,
        stars=stars,
        base_share=base_share,
        unet_layers=unet_layers.value,
        seed=seed,
    )
    typer.echo(f"LoRA: {train_lora(cfg)}")


@app.command("lcm-lora")
def lcm_lora(
    base: Path = typer.Option(..., help="the teacher: the base model's diffusers folder"),
    out: Path = typer.Option(..., help="output folder (checkpoint and the LoRA folder)"),
    steps: int = typer.Option(2000),
    rank: int = typer.Option(8),
    alpha: float = typer.Option(8.0),
    batch: int = typer.Option(16),
    lr: float = typer.Option(1e-3),
    w_min: float = typer.Option(3.0, help="smallest teacher guidance scale"),
    w_max: float = typer.Option(7.0, help="largest teacher guidance scale"),
    images: int = typer.Option(2000, help="pictures whose latents are distilled on"),
    offset_noise: float = typer.Option(0.0, help="as the base model was trained with"),
    seed: int = typer.Option(0),
) -> None:
    """Distil the LCM-LoRA `demo-lcm` from the base model; resumes from `out`."""
    from loraworks.demo.train_lcm import LCMTrainConfig, train_lcm

    cfg = LCMTrainConfig(
        base=base,
        out=out,
        steps=steps,
        rank=rank,
        alpha=alpha,
        batch=batch,
        lr=lr,
        w_min=w_min,
        w_max=w_max,
        images=images,
        offset_noise=offset_noise,
        seed=seed,
    )
    typer.echo(f"LCM-LoRA: {train_lcm(cfg)}")
