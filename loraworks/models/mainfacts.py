"""What a main model needs before it is loaded: prediction type, native size and memory per
precision, read from its configs and safetensors headers (no tensor is read).

A diffusers folder says all of it in its configs; a single-file checkpoint carries no config,
so its prediction type and native size are the published architecture's for its base (the
same template the loader uses) — an SD2 file trained for v-prediction at 768 and one for
epsilon at 512 look the same from their tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loraworks.lora.files import SAFETENSORS_SUFFIXES
from loraworks.models.errors import ModelError
from loraworks.models.records import ModelRecord
from loraworks.models.safefiles import read_header
from loraworks.models.singlefile import TEXT_ENCODERS, UNET, VAE, template

#: bytes per parameter of each precision the product loads in
PRECISIONS = {"float32": 4, "float16": 2, "bfloat16": 2}
#: the parts of a pipeline that are loaded (a single file's key prefixes for them)
_FOLDER_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class MainModelFacts:
    prediction_type: str
    native_size: int  # pixels, square
    parameters: int  # of the loaded parts (UNet, VAE, text encoders)

    def memory(self) -> dict[str, int]:
        """Bytes of the loaded weights per precision."""
        return {name: self.parameters * size for name, size in PRECISIONS.items()}


def main_model_facts(record: ModelRecord) -> MainModelFacts:
    """The facts of an installed main model; `ModelError` when its files cannot tell."""
    path = Path(record.path)
    if record.format == "diffusers":
        return _folder_facts(path)
    if record.format == "checkpoint":
        return _file_facts(path, record.base or "sd1")
    raise ModelError(f"'{record.name}': no facts for format '{record.format}'")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable config ({exc})") from None
    return data if isinstance(data, dict) else {}


def _pixels(unet: dict, vae: dict) -> int:
    return int(unet.get("sample_size", 64)) * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)


def _count(path: Path, prefixes: tuple[str, ...] = ("",)) -> int:
    """Parameters of the tensors in a safetensors file whose names start with `prefixes`."""
    tensors = read_header(path).tensors
    return sum(_numel(i.shape) for k, i in tensors.items() if k.startswith(prefixes))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _folder_facts(folder: Path) -> MainModelFacts:
    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    parameters = 0
    for part in _FOLDER_PARTS:
        files = sorted((folder / part).glob("*.safetensors")) if (folder / part).is_dir() else []
        plain = [f for f in files if ".fp16." not in f.name]  # one copy of a variant's weights
        parameters += sum(_count(f) for f in plain or files)
    unet, vae = _json(folder / "unet" / "config.json"), _json(folder / "vae" / "config.json")
    return MainModelFacts(
        prediction_type=str(scheduler.get("prediction_type", "epsilon")),
        native_size=_pixels(unet, vae),
        parameters=parameters,
    )


def _file_facts(path: Path, base: str) -> MainModelFacts:
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        raise ModelError(f"{path.name}: a pickle checkpoint has no header to count it from")
    cfg = template(base)
    loaded = (UNET, VAE, *(prefix for prefix, _ in TEXT_ENCODERS[base].values()))
    return MainModelFacts(
        prediction_type=str(cfg["scheduler"].get("prediction_type", "epsilon")),
        native_size=_pixels(cfg["unet"], cfg["vae"]),
        parameters=_count(path, loaded),
    )
