"""Facts of the SD1/SD2/SDXL architectures that the engine and the model manager both use.

Each is defined here once: the base names, the pipeline parts a LoRA patches, and the widths
that tell the bases apart (the UNet's cross-attention input width is the text encoder output
it reads: CLIP-L 768 for SD1, OpenCLIP-H 1024 for SD2, CLIP-L + CLIP-G concatenated, 2048, for
SDXL).
"""

from __future__ import annotations

from typing import Literal

BaseName = Literal["sd1", "sd2", "sdxl"]
BASES: tuple[BaseName, ...] = ("sd1", "sd2", "sdxl")

#: the pipeline parts a LoRA patches, as diffusers names them (also the sub-folders PEFT
#: adapters of a pipeline are saved in, and the component prefixes of diffusers LoRA keys)
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
Component = Literal["unet", "text_encoder", "text_encoder_2"]

#: UNet cross-attention input width (``attn2.to_k`` in features) → base
CROSS_ATTENTION_WIDTHS: dict[int, BaseName] = {768: "sd1", 1024: "sd2", 2048: "sdxl"}

#: hidden width of the first text encoder → the bases it belongs to (SDXL's CLIP-L is SD1's)
TEXT_ENCODER_WIDTHS: dict[int, frozenset[BaseName]] = {
    768: frozenset({"sd1", "sdxl"}),
    1024: frozenset({"sd2"}),
}
#: SDXL's second text encoder (OpenCLIP bigG) hidden width
TEXT_ENCODER_2_WIDTH = 1280


def base_of_cross_attention(width: int | None) -> BaseName | None:
    """The base whose UNet reads a context of `width`, or None for no SD1/SD2/SDXL UNet."""
    return CROSS_ATTENTION_WIDTHS.get(width) if isinstance(width, int) else None
