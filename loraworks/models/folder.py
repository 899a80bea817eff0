"""diffusers pipeline folders → pipelines, the model components read like single files.

diffusers' `from_pretrained(dtype=...)` already builds on the meta device and casts tensor by
tensor; what it does not do is keep the peak near the model's size when it casts: it reads
through safetensors' memory map, and every page a cast touches stays resident until the
component is done (an SD1.5 folder of fp32 files loaded in bfloat16 peaked at 5.4 GiB for a
2.0 GiB pipeline). So the UNet, VAE and text encoders are built here from their configs and
given their tensors by `LazyWeights`. Everything else (tokenizers, scheduler, a component of
another class or stored otherwise, e.g. sharded) diffusers loads as before.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraworks.models.assign import assign, empty, fit_text_keys
from loraworks.models.errors import ModelError
from loraworks.models.lazyweights import LazyWeights, stored_bytes
from loraworks.models.loadevents import LoadProgress, announced
from loraworks.models.originals import FileOriginals, storages

#: the model components read here, in load order (as for single files)
COMPONENTS = ("text_encoder", "text_encoder_2", "vae", "unet")
_CLASSES = {
    ("diffusers", "UNet2DConditionModel"),
    ("diffusers", "AutoencoderKL"),
    ("transformers", "CLIPTextModel"),
    ("transformers", "CLIPTextModelWithProjection"),
}
#: each library's weight file names, preferred first (as `from_pretrained` prefers them)
_FILES = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}


@dataclass(frozen=True)
class Component:
    """A model component of a pipeline folder that is read here."""

    name: str
    library: str
    class_name: str
    weights: Path


def model_components(folder: Path) -> list[Component]:
    """The components read here, in load order."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder.name}: unreadable model_index.json ({exc})") from None
    found: list[Component] = []
    for name in COMPONENTS:
        spec = index.get(name)
        if not isinstance(spec, list) or tuple(spec) not in _CLASSES:
            continue
        library, class_name = spec
        files = [folder / name / f for f in _FILES[library] if (folder / name / f).is_file()]
        if files:
            found.append(Component(name, library, class_name, files[0]))
    return found


def _build(
    component: Component, dtype: torch.dtype, originals: FileOriginals | None
) -> torch.nn.Module:
    folder = component.weights.parent
    cls = getattr(importlib.import_module(component.library), component.class_name)
    if component.library == "diffusers":
        model = empty(lambda: cls.from_config(cls.load_config(folder)))
    else:
        config = cls.config_class.from_pretrained(folder)
        model = empty(lambda: cls(config))
    weights = LazyWeights(component.weights)
    state = weights.take(list(weights.shapes), dtype)
    read = storages(state)
    if component.library == "diffusers":
        model._fix_state_dict_keys_on_load(state)  # attention names of older diffusers
    else:
        state = fit_text_keys(state, model)
        expected = model.state_dict()
        # transformers < 4.31 saved CLIP's position ids, a buffer the model now builds
        state = {k: v for k, v in state.items() if k in expected or not k.endswith("position_ids")}
    model = assign(model, state, f"{component.name} of {folder.parent.name}")
    if originals is not None:
        originals.add(component.name, weights, dtype, model, read)
    return model


def folder_bytes(folder: Path, dtype: torch.dtype) -> int:
    """The model components' weights in `dtype`, from their files' headers (`stored_bytes`);
    components diffusers loads itself are not counted."""
    return sum(stored_bytes(c.weights, dtype, lambda w: w.shapes) for c in model_components(folder))


def load_folder(
    cls,
    folder: Path,
    dtype: torch.dtype | None = None,
    progress: LoadProgress | None = None,
    originals: FileOriginals | None = None,
    **kwargs: Any,
):
    """`cls.from_pretrained(folder)`, offline, with the model components built here: each on
    the meta device, given its file's tensors cast to `dtype` (float32 when None) one at a
    time. `progress` hears of each component as it starts; `originals`, when given, notes
    where each weight came from."""
    dtype = dtype or torch.float32
    components = {c.name: c for c in model_components(folder)}
    parts = {name: _build(c, dtype, originals) for name, c in announced(components, progress)}
    return cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype, **parts, **kwargs)
