"""Models built on the meta device and handed their weights, for single files and diffusers
folders alike.

Building a model allocates and randomly initialises every weight, only for a file to overwrite
it (22 s of the SD1.5 UNet's load, and a full-precision copy beside the file's). Here the
parameters have no memory until the file's tensors, already in the dtype asked for, become
them: no copy, no cast afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from loraworks.models.errors import ModelError

M = TypeVar("M", bound=torch.nn.Module)


def empty(factory: Callable[[], M]) -> M:
    """`factory()` with its parameters on the meta device. Buffers are built for real, so the
    ones no file holds (CLIP's `position_ids`) have their true values."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


def assign(model: M, state: dict[str, torch.Tensor], what: str) -> M:
    """`state`'s tensors become `model`'s own, as they are. Every weight the architecture
    expects must be there, in its shape, and nothing else."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise ModelError(
            f"the {what} does not match its architecture ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(reshaped)} wrongly shaped weights, "
            f"e.g. {example})"
        )
    model.load_state_dict(state, assign=True)
    return model.eval()


def fit_text_keys(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """transformers ≥5.6 `CLIPTextModel` has no `text_model.` level; files always do."""
    expected = set(model.state_dict())

    def fit(key: str) -> str:
        stripped = key.removeprefix("text_model.")
        return stripped if key not in expected and stripped in expected else key

    return {fit(k): v for k, v in state.items()}
