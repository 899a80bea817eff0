"""`loraworks demo`: the README's first image.

Until the trained demo model ships, this draws with a tiny random-weight SD1-architecture
model and says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    root: Path = typer.Option(
        Path(os.environ.get("LORAWORKS_ROOT", "~/loraworks")), help="models root"
    ),
) -> None:
    """Generate a first image with the bundled demo model."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from loraworks.demo.vocab import BOS_ID, EOS_ID, write_tokenizer

    typer.echo("NOTE: the trained demo model is not shipped yet; drawing with random weights.")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        sample_size=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    te = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=600,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_tokenizer(Path(tmp))))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    image = pipe(
        "a red circle on a white background",
        num_inference_steps=4,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    out = root.expanduser() / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo.png"
    image.save(path)
    typer.echo(f"wrote {path}")
