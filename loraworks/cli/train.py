"""`loraworks train base|lora|lcm-lora`: the trainers of the bundled demo weights."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="Train the demo model and its LoRAs (CPU).")


@app.callback()
def _group() -> None:
    """Train the demo model and its LoRAs (CPU); every trainer resumes from its output folder."""


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")


@app.command()
def base(
    out: Path = typer.Option(..., help="output folder (checkpoints; the model goes to out/model)"),
    vae_steps: int = typer.Option(840),
    unet_steps: int = typer.Option(6000),
    images: int = typer.Option(16000, help="pictures in the procedural training set"),
    batch: int = typer.Option(32),
    lr: float = typer.Option(1e-3),
    seed: int = typer.Option(0),
    checkpoint_every: int = typer.Option(250),
) -> None:
    """Train `demo-shapes` (VAE, then UNet + text encoder); resumes from `out`."""
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
    )
    typer.echo(f"model: {train_base(cfg)}")


def run_group(command: str) -> None:
    """Entry for `python -m loraworks.demo.train_*`: the same options as the CLI command."""
    typer.main.get_command(app)([command, *sys.argv[1:]])
