"""Telling what a file or folder is: model type, base (SD1/SD2/SDXL), format, few-step
family (`fewstep`).

LoRAs are parsed by the engine (`loraworks.lora.load_lora`); main models and VAEs are read
from their tensor shapes and configs here. Nothing is loaded that can run code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraworks import embeddings, lora
from loraworks.lora.bases import CROSS_ATTENTION_WIDTHS
from loraworks.lora.files import (
    DIFFUSERS_WEIGHT_NAMES,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHT_NAMES,
    WEIGHT_SUFFIXES,
    is_pickle,
    load_pickle,
    pickle_weights,
)
from loraworks.models.autohashes import auto_hashes
from loraworks.models.errors import ModelError, UnsafeFileError
from loraworks.models.fewstep import FewStepFacts, detect_fewstep
from loraworks.models.hashing import digest_file, hash_file, hash_files, hash_folder
from loraworks.models.progress import ProgressCallback
from loraworks.models.records import BaseName, BundledEmbedding, ModelType
from loraworks.models.safefiles import model_errors, read_header, read_weights

LORA_WEIGHT_NAMES = DIFFUSERS_WEIGHT_NAMES + PEFT_WEIGHT_NAMES
LDM_UNET_PREFIX = "model.diffusion_model."


@dataclass
class Probe:
    """What a model source is, and the content hash that identifies it."""

    type: ModelType
    base: BaseName
    format: str
    hash: str
    weights: Path  # the file (or folder) whose content the hash covers
    #: a LoRA's few-step family and the step count its name or metadata states
    fewstep: FewStepFacts = field(default_factory=FewStepFacts)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: main-model bases the tensors fit; a LoRA's come from the engine, others fit their own
    compatible_bases: list[BaseName] = field(default_factory=list)
    #: a LoRA's layers by kind (the engine's `LoRA.kinds`)
    layer_kinds: dict[str, int] = field(default_factory=dict)
    #: how the engine decided a LoRA's base, and what it warned about (`LoRA.base_evidence`,
    #: `LoRA.warnings`): shown by `models show` and the API
    base_evidence: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: an embedding's vector count, and its trigger when no sidecar names one (its name)
    vectors: int | None = None
    triggers: list[str] = field(default_factory=list)
    #: the embeddings a LoRA file carries (``bundle_emb.*``)
    bundled_embeddings: list[BundledEmbedding] = field(default_factory=list)
    #: A1111/Civitai hashes (`autohashes.auto_hashes`), read in the same pass as `hash`
    hashes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.compatible_bases:
            self.compatible_bases = [self.base]


def is_lora_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in LORA_WEIGHT_NAMES)


def is_main_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file()


def is_weight_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in WEIGHT_SUFFIXES


def lora_weights_file(folder: Path) -> Path:
    return next(folder / n for n in LORA_WEIGHT_NAMES if (folder / n).is_file())


def content_hash(path: Path, progress: ProgressCallback | None = None) -> str:
    """The hash that identifies a model: of the weights file for diffusers LoRA folders (so a
    folder and its bare file are the same content), of weights + `adapter_config.json` for
    PEFT folders (alpha lives there), of every file for pipelines."""
    if is_main_folder(path):
        return hash_folder(path, progress)
    if is_lora_folder(path):
        weights = lora_weights_file(path)
        config = path / PEFT_CONFIG_NAME
        if weights.name in PEFT_WEIGHT_NAMES and config.is_file():
            return hash_files([weights, config], progress=progress)
        return hash_file(weights, progress)
    return hash_file(path, progress)


def single_file(path: Path) -> Path | None:
    """The one file A1111 could load for `path`, whose hashes it knows: the file itself, a
    diffusers LoRA folder's weights file (the content hash covers it alone); None for other
    folders."""
    if is_lora_folder(path):
        weights = lora_weights_file(path)
        peft = weights.name in PEFT_WEIGHT_NAMES and (path / PEFT_CONFIG_NAME).is_file()
        return None if peft else weights
    return None if path.is_dir() else path


def content_hashes(
    path: Path,
    kind: ModelType,
    metadata: dict[str, Any],
    progress: ProgressCallback | None = None,
) -> tuple[str, dict[str, str]]:
    """`content_hash(path)` and, in the same read, the A1111/Civitai hashes of what A1111 can
    load as one file (`single_file`); none for other folders."""
    target = single_file(path)
    if target is None:
        return content_hash(path, progress), {}
    safetensors = target.suffix.lower() == ".safetensors"
    digests = digest_file(target, progress, sha256=True, after_header=safetensors)
    return digests.content, auto_hashes(kind, digests, metadata, safetensors)


def probe(
    path: Path, expect: ModelType | None = None, progress: ProgressCallback | None = None
) -> Probe:
    """Identify `path`; `expect` narrows the guess (the drop folders know what they hold);
    `progress` hears the bytes hashed."""
    if not path.exists():
        raise ModelError(f"{path}: no such file or folder")
    if is_main_folder(path):
        return _probe_main_folder(path, progress)
    if is_lora_folder(path):
        return _probe_lora_folder(path, progress)
    if path.is_dir():
        raise ModelError(
            f"{path.name}: a folder that is neither a diffusers model (model_index.json) nor a "
            f"LoRA ({' / '.join(LORA_WEIGHT_NAMES)})"
        )
    if not path.is_file():
        raise ModelError(
            f"{path.name}: not a regular file (a FIFO, socket or device); refusing to read it"
        )
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelError(
            f"{path.name}: unsupported file type '{path.suffix}' "
            f"(expected one of {', '.join(WEIGHT_SUFFIXES)})"
        )
    if is_pickle(path):  # no header: the tensors are read once, here
        with model_errors():
            tree = load_pickle(path)
        flat = embeddings.flatten(tree)
        if embeddings.is_embedding({k: tuple(t.shape) for k, t in flat.items()}):
            return _probe_embedding(path, expect, progress)
        with model_errors():
            weights: lora.WeightFile | None = pickle_weights(path, tree)
        shapes = {k: tuple(t.shape) for k, t in weights.tensors.items()}
        metadata: dict[str, str] = {}
        header = None
    else:
        header = read_header(path)
        weights = None
        shapes = {k: info.shape for k, info in header.tensors.items()}
        metadata = header.metadata
    if any(k.startswith(LDM_UNET_PREFIX) for k in shapes):
        if expect in ("lora", "embedding"):
            what = "LoRA" if expect == "lora" else "textual-inversion embedding"
            raise ModelError(
                f"{path.name}: a full model checkpoint, not a {what} (put it in "
                "autoimport/main or install it as a main model)"
            )
        digest, hashes = content_hashes(path, "main", metadata, progress)
        return Probe(
            type="main",
            base=_base_from_checkpoint(path.name, shapes),
            format="checkpoint",
            hash=digest,
            weights=path,
            metadata=metadata,
            hashes=hashes,
        )
    if embeddings.is_embedding(shapes):
        return _probe_embedding(path, expect, progress)
    if expect == "embedding":
        raise ModelError(
            f"{path.name}: not a textual-inversion embedding (no string_to_param, emb_params, "
            "clip_l + clip_g or single token vector); LoRAs go in autoimport/lora, main models "
            "in autoimport/main"
        )
    if expect != "lora" and _looks_like_vae(shapes):
        digest, hashes = content_hashes(path, "vae", metadata, progress)
        return Probe(
            type="vae",
            base="sdxl" if re.search(r"xl", path.name, re.IGNORECASE) else "sd1",
            format="checkpoint",
            hash=digest,
            weights=path,
            metadata=metadata,
            hashes=hashes,
        )
    parsed = _load_with_engine(weights or read_weights(path, header), path.name)
    found = _lora_probe(parsed, path, path, path.stem, progress=progress)
    if embeddings.is_bundle_format(shapes):
        _add_bundled(found, path)
    return found


# --- embeddings -----------------------------------------------------------------------------


def _read_embeddings(path: Path, read: Any) -> Any:
    """`read(path)` with the embedding reader's refusals as the manager's errors."""
    try:
        return read(path)
    except embeddings.EmbeddingFileError as exc:
        raise (UnsafeFileError if exc.unsafe else ModelError)(str(exc)) from None
    except embeddings.EmbeddingError as exc:
        raise ModelError(f"{path.name}: not a usable embedding ({exc})") from None


def _probe_embedding(
    path: Path, expect: ModelType | None, progress: ProgressCallback | None
) -> Probe:
    if expect not in (None, "embedding"):
        raise ModelError(
            f"{path.name}: a textual-inversion embedding, not a {expect} (put it in "
            "autoimport/embedding or install it as an embedding)"
        )
    found = _read_embeddings(path, embeddings.read_embedding)
    digest, hashes = content_hashes(path, "embedding", {}, progress)
    return Probe(
        type="embedding",
        base=found.base,
        compatible_bases=list(found.compatible_bases),
        format=found.format,
        hash=digest,
        hashes=hashes,
        weights=path,
        vectors=found.count,
        triggers=[embeddings.default_name(path)],
    )


def _add_bundled(found: Probe, path: Path) -> None:
    """List the embeddings a LoRA file carries with its record; an unusable one is a warning
    on the LoRA (the LoRA itself still works)."""
    try:
        bundled = _read_embeddings(path, embeddings.read_bundled)
    except ModelError as exc:
        found.warnings.append(f"its bundled embeddings cannot be used: {exc}")
        return
    found.bundled_embeddings = [
        BundledEmbedding(name=e.name, base=e.base, vectors=e.count) for e in bundled
    ]


# --- LoRAs ----------------------------------------------------------------------------------


def _load_with_engine(source: Any, label: str) -> lora.LoRA:
    """The engine's parse of a LoRA; its refusals as the manager's errors (an unsafe pickle or
    header stays an `UnsafeFileError`)."""
    try:
        with model_errors():
            return lora.load_lora(source)
    except ModelError:
        raise
    except lora.LoRAError as exc:
        raise ModelError(f"{label}: not a usable LoRA ({exc})") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"{label}: cannot be read as a LoRA ({exc or type(exc).__name__})"
        ) from None


def _probe_lora_folder(folder: Path, progress: ProgressCallback | None) -> Probe:
    weights = lora_weights_file(folder)
    # The record names the container (what the user installed): a diffusers or PEFT folder.
    container = "peft" if weights.name in PEFT_WEIGHT_NAMES else "diffusers"
    parsed = _load_with_engine(folder, folder.name)
    return _lora_probe(parsed, folder, weights, folder.name, container, progress)


def _lora_probe(
    parsed: lora.LoRA,
    source: Path,
    weights: Path,
    name: str,
    container: str | None = None,
    progress: ProgressCallback | None = None,
) -> Probe:
    metadata = dict(parsed.metadata or {})
    digest, hashes = content_hashes(source, "lora", metadata, progress)
    return Probe(
        type="lora",
        base=parsed.base,
        compatible_bases=sorted(parsed.compatible_bases),
        layer_kinds=dict(sorted(parsed.kinds.items())),
        format=container or parsed.format,
        hash=digest,
        hashes=hashes,
        weights=weights,
        fewstep=detect_fewstep(list(parsed.layers), metadata, name),
        metadata=metadata,
        base_evidence=list(parsed.base_evidence),
        warnings=list(parsed.warnings),
    )


# --- main models and VAEs -------------------------------------------------------------------


def _base_from_context_dim(dim: int, label: str) -> BaseName:
    try:
        return CROSS_ATTENTION_WIDTHS[dim]
    except KeyError:
        raise ModelError(
            f"{label}: cross-attention width {dim} is not SD1 (768), SD2 (1024) or SDXL (2048)"
        ) from None


def _require_txt2img(label: str, in_channels: int) -> None:
    if in_channels != 4:
        raise ModelError(
            f"{label}: its UNet takes {in_channels} input channels (an inpainting or other "
            f"special-purpose model); only text-to-image SD models (4 channels) are supported"
        )


def _base_from_checkpoint(label: str, shapes: dict[str, tuple[int, ...]]) -> BaseName:
    conv_in = shapes.get(LDM_UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        _require_txt2img(label, conv_in[1])
    for key, shape in shapes.items():
        if key.startswith(LDM_UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return _base_from_context_dim(shape[1], label)
    raise ModelError(f"{label}: a UNet checkpoint without cross-attention; not SD1/SD2/SDXL")


def _looks_like_vae(shapes: dict[str, tuple[int, ...]]) -> bool:
    keys = [k.removeprefix("first_stage_model.") for k in shapes]
    return (
        any(k.startswith("encoder.") for k in keys)
        and any(k.startswith("decoder.") for k in keys)
        and any(k.startswith(("quant_conv", "post_quant_conv")) for k in keys)
    )


def _probe_main_folder(folder: Path, progress: ProgressCallback | None) -> Probe:
    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{folder.name}: unreadable diffusers model config ({exc})") from None
    pipeline = index.get("_class_name", "")
    _require_txt2img(folder.name, int(unet.get("in_channels", 4)))
    if "XL" in pipeline:
        base: BaseName = "sdxl"
    else:
        base = _base_from_context_dim(int(unet.get("cross_attention_dim", 0)), folder.name)
    for weights in folder.rglob("*"):
        if weights.is_file() and is_pickle(weights):
            read_weights(weights)  # refuse folders whose pickles are not plain weights
    metadata = {"pipeline": pipeline} if pipeline else {}
    return Probe(
        type="main",
        base=base,
        format="diffusers",
        hash=content_hash(folder, progress),
        weights=folder,
        metadata=metadata,
    )
