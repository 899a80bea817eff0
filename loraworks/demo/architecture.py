"""The demo model's architecture: SD1's module layout at a size a 2-core CPU can train.

Same classes and module names as Stable Diffusion 1.x (so the engine, manager and generation
code treat it like any SD1 model), with narrow channels: 64×64 pictures, 16×16×4 latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from loraworks.demo.data import CAPTION_WORDS
from loraworks.demo.vocab import BOS_ID, EOS_ID, write_tokenizer

TEXT_HIDDEN = 768
"""SD1's text width: the engine and the manager tell SD1 from SD2/SDXL by it (768/1024/2048)."""
LATENT_SIZE = 16
SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
)
"""SD1's training noise schedule, so the usual SD samplers and the LCM scheduler apply."""


def make_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )


def make_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=2,  # diffusers' name for the number of heads in SD1 configs
    )


def make_text_encoder() -> CLIPTextModel:
    """2 layers, 768 wide, used frozen at its seeded random weights: distinct caption words
    give distinct states the UNet learns to read, and training a 768-wide encoder would cost
    several times the UNet per step on a CPU."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=600,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=TEXT_HIDDEN,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
        )
    )


def make_tokenizer(folder: Path) -> CLIPTokenizer:
    """Our own vocabulary: the caption words as whole tokens (incl. the star trigger word)."""
    return CLIPTokenizer.from_pretrained(str(write_tokenizer(folder, CAPTION_WORDS)))


def make_noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


@dataclass
class ParamCounts:
    vae: int
    unet: int
    text_encoder: int


def count_params() -> ParamCounts:
    def n(m):
        return sum(p.numel() for p in m.parameters())

    return ParamCounts(n(make_vae()), n(make_unet()), n(make_text_encoder()))
