"""`GenerateRequest`: the one request shape shared by the CLI, the API queue and tests.

Fields a preset or the config may fill are left `None` here, so that "unset" stays
distinguishable from "set to the default" until `presets.resolve_settings` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from loraworks.generation.schedulers import SchedulerName, Spacing, takes_spacing
from loraworks.lora import Strength, normalise_strength
from loraworks.models.fewstep import PresetName

MAX_PROMPT_CHARS = 4000
MAX_SIDE = 4096
MAX_BATCH = 64
MAX_SEED = 2**32 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _checked_weight(value: object, info: ValidationInfo) -> object:
    """The engine's own check at the boundary: a bad weight is refused before the request is
    accepted (a 4xx, one CLI line), and its one form travels unchanged to the patcher."""
    if value is None:
        return None
    return normalise_strength(value, info.data.get("name") or "LoRA")


#: a LoRA's weight in a request or a recipe: a number, or {"unet": …, "text_encoder": …,
#: "text_encoder_2": …} (a component left out is not patched); the model's `name` labels errors
LoRAWeight = Annotated[Strength, BeforeValidator(_checked_weight)]


class LoRASpec(_Strict):
    """One LoRA of the stack: a record name or key and its weight (None: preset/default)."""

    name: str = Field(min_length=1)
    weight: LoRAWeight | None = None


class GenerateRequest(_Strict):
    model: str = Field(min_length=1, description="main model record name or key")
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    width: int | None = Field(None, ge=64, le=MAX_SIDE)
    height: int | None = Field(None, ge=64, le=MAX_SIDE)
    steps: int | None = Field(None, ge=1, le=1000)
    cfg: float | None = Field(None, ge=0.0, le=50.0)
    scheduler: SchedulerName | None = None
    spacing: Spacing | None = Field(
        None, description="timestep spacing of euler, euler_a, ddim, dpm++ (None: preset/model)"
    )
    eta: float | None = Field(None, ge=0.0, le=1.0, description="TCD's gamma, DDIM's eta")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="image i gets seed + i")
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    loras: list[LoRASpec] = Field(default_factory=list)
    init_image: Path | None = None
    strength: float | None = Field(None, gt=0.0, le=1.0)
    preset: PresetName | None = Field(None, description="a few-step family's config preset")
    append_trigger_words: bool = False

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value}; try {value // 8 * 8})")
        return value

    @model_validator(mode="after")
    def _spacing_fits_the_scheduler(self) -> GenerateRequest:
        if self.spacing and self.scheduler and not takes_spacing(self.scheduler):
            raise ValueError(
                f"scheduler {self.scheduler} takes no timestep spacing (it steps along its own "
                "distillation schedule); spacing applies to euler, euler_a, ddim and dpm++"
            )
        return self

    @model_validator(mode="after")
    def _img2img_fields(self) -> GenerateRequest:
        if self.strength is not None and self.init_image is None:
            raise ValueError("strength only applies with an init_image (img2img)")
        return self  # whether the init image exists is `check_request`'s to say (after the
        # server has refused paths outside the root, so that it answers the same for those)
