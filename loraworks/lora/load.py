"""`load_lora`: read a file, folder or state dict once into a reusable `LoRA`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .bases import BASES, COMPONENTS
from .errors import LoRAFormatError
from .files import (
    DIFFUSERS_WEIGHT_NAMES,
    PEFT_WEIGHT_NAMES,
    WeightFile,
    read_peft_config,
    read_weights,
)
from .formats import Converted, diffusers, kohya, peft
from .layers import Layer, layer_from_leaves
from .model import LoRA
from .probe import probe_base


def load_lora(
    source: Any,
    *,
    base: str | None = None,
    name: str | None = None,
) -> LoRA:
    """Read a LoRA once.

    ``source``: a ``.safetensors`` (or ``.bin/.pt/.ckpt/.pth``, ``weights_only`` only) file; a
    diffusers folder (``pytorch_lora_weights.safetensors``); a PEFT folder
    (``adapter_model.safetensors`` + ``adapter_config.json``), or a folder with PEFT adapters
    in ``unet/``, ``text_encoder/``, ``text_encoder_2/`` sub-folders; a `WeightFile` already
    read by `files.read_weights` (the model manager reads each file once); or ``(state_dict,
    metadata)`` / a bare state dict. ``base`` overrides the probe (e.g. for a LoRA that carries
    no evidence of its base). Raises `LoRAFormatError` for anything it cannot read.
    """
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], dict):
        sd, metadata = dict(source[0]), dict(source[1] or {})
        return build(convert_keys(sd, metadata), metadata, base=base, name=name)
    if isinstance(source, dict):
        return build(convert_keys(dict(source), {}), {}, base=base, name=name)
    if isinstance(source, WeightFile):
        path, files = source.path, [source]
        conv = _convert_file(source)
    else:
        path = Path(source)
        if not path.exists():
            raise LoRAFormatError(f"{path}: no such file or folder")
        if path.is_dir():
            conv, files = _load_folder(path)
        else:
            files = [read_weights(path)]
            conv = _convert_file(files[0])
    metadata = {k: v for f in files for k, v in f.metadata.items()}
    notes = [
        f"{f.path.name}: {len(f.ignored)} entries that are not tensors were left out "
        f"({', '.join(f.ignored[:5])}{' …' if len(f.ignored) > 5 else ''})"
        for f in files
        if f.ignored
    ]
    if name is None:
        name = path.stem if path.suffix else path.name
    return build(conv, metadata, base=base, name=name, source=str(path), notes=notes)


def _convert_file(f: WeightFile) -> Converted:
    """A single weight file: a PEFT adapter's when it is named so and has its config beside."""
    cfg = read_peft_config(f.path.parent) if f.path.name in PEFT_WEIGHT_NAMES else None
    return convert_keys(f.tensors, f.metadata, peft_folder=cfg is not None, peft_config=cfg)


def _weights_in(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _load_folder(p: Path) -> tuple[Converted, list[WeightFile]]:
    w = _weights_in(p, DIFFUSERS_WEIGHT_NAMES)
    if w is not None:
        f = read_weights(w)
        return convert_keys(f.tensors, f.metadata), [f]
    w = _weights_in(p, PEFT_WEIGHT_NAMES)
    if w is not None:
        f = read_weights(w)
        return convert_keys(f.tensors, f.metadata, True, read_peft_config(p)), [f]
    parts: dict[str, tuple[dict, dict | None]] = {}
    files: list[WeightFile] = []
    for comp in COMPONENTS:
        sub = p / comp
        w = _weights_in(sub, PEFT_WEIGHT_NAMES) if sub.is_dir() else None
        if w is not None:
            files.append(read_weights(w))
            parts[comp] = (files[-1].tensors, read_peft_config(sub))
    if not parts:
        raise LoRAFormatError(
            f"{p}: folder has no pytorch_lora_weights.safetensors, adapter_model.safetensors, or "
            "unet/ text_encoder/ adapter sub-folders"
        )
    return peft.convert_components(parts), files


def convert_keys(
    sd: dict,
    metadata: dict[str, str],
    peft_folder: bool = False,
    peft_config: dict | None = None,
) -> Converted:
    """The one key-family converter that recognises `sd` (PEFT, kohya/LyCORIS, diffusers).
    ``peft_folder``: the tensors come from a PEFT adapter folder (with ``peft_config``, or
    PEFT's defaults when it has none), whatever their keys look like."""
    if not sd:
        raise LoRAFormatError("the file holds no tensors")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise LoRAFormatError(f"non-tensor values for keys {bad[:5]}")
    if peft_folder or peft.is_peft_format(sd):
        return peft.convert(sd, peft_config, metadata)
    if kohya.is_kohya_format(sd):
        return kohya.convert(sd, metadata)
    if diffusers.is_diffusers_format(sd):
        return diffusers.convert(sd, metadata)
    shown = ", ".join(sorted(sd)[:6])
    raise LoRAFormatError(f"not a LoRA file we know (keys: {shown}{' …' if len(sd) > 6 else ''})")


def _max_abs(groups: dict[str, dict[str, torch.Tensor]]) -> dict[tuple[str, str], float]:
    """max|x| of every floating-point leaf, keyed (target, leaf), in one host round trip.

    One ``aminmax`` per tensor (it propagates NaN; ~30x faster than ``isfinite().all()`` on fp16
    CPU tensors) and a single ``tolist`` at the end: a non-finite result means NaN/Inf in the
    tensor. The layers keep the numbers for their overflow bound, so patching never reads their
    tensors again for it (on a GPU that was two syncs per layer).
    """
    by_device: dict[torch.device, tuple[list[tuple[str, str]], list[torch.Tensor]]] = {}
    for target, leaves in groups.items():
        for leaf, t in leaves.items():
            if t.is_floating_point() and t.numel():
                keys, ends = by_device.setdefault(t.device, ([], []))
                keys.append((target, leaf))
                ends.extend(torch.aminmax(t.reshape(-1)))
    out: dict[tuple[str, str], float] = {}
    for keys, ends in by_device.values():  # one round trip per device (a state dict may mix)
        flat = torch.stack(ends).tolist()
        for k, lo, hi in zip(keys, flat[0::2], flat[1::2], strict=True):
            out[k] = max(-lo, hi) if math.isfinite(lo) and math.isfinite(hi) else math.nan
    return out


def build(
    conv: Converted,
    metadata: dict[str, str],
    *,
    base: str | None = None,
    name: str | None = None,
    source: str | None = None,
    notes: list[str] | None = None,
) -> LoRA:
    """Typed layers from a converter's groups, checked, with their base and format decided."""
    max_abs = _max_abs(conv.groups)
    layers: dict[str, Layer] = {}
    for target, leaves in conv.groups.items():
        label = conv.origin.get(target, target)
        measured = {leaf: max_abs[target, leaf] for leaf in leaves if (target, leaf) in max_abs}
        for leaf, m in measured.items():
            if not math.isfinite(m):
                raise LoRAFormatError(
                    f"refusing this LoRA: layer {label!r} has NaN/Inf values in {leaf!r}"
                )
        convention = conv.conventions.get(target, conv.default)
        layer = layer_from_leaves(leaves, convention, label)
        layer.max_abs = measured
        layers[target] = layer
    if not layers:
        raise LoRAFormatError("the file holds no LoRA layers")
    for target, layer in layers.items():
        s = getattr(layer, "scale", 1.0)
        if not math.isfinite(s):
            raise LoRAFormatError(f"refusing this LoRA: layer {target!r} has a non-finite scale")
    if base is not None:
        if base not in BASES:
            raise LoRAFormatError(f"unknown base {base!r} ({', '.join(BASES)})")
        found, compat, evidence, warnings = base, frozenset({base}), ["given by the caller"], []
    else:
        found, compat, evidence, warnings = probe_base(
            layers, metadata, sgm_names=conv.sgm_names, hint=conv.base_hint
        )
    return LoRA(
        layers=layers,
        base=found,
        format=_format(conv, layers),
        metadata=metadata,
        name=name,
        source=source,
        compatible_bases=compat,
        base_evidence=evidence,
        warnings=[*(notes or []), *warnings],
        unet_names=conv.unet_names,
    )


def _format(conv: Converted, layers: dict[str, Layer]) -> str:
    """The key family's label, or — for a kohya-style file — the label its layer kinds imply
    (the first kind, in the order of the file, that implies one)."""
    if conv.format_from_kinds:
        implied = (layer.format for layer in layers.values())
        return next((f for f in implied if f is not None), conv.format)
    return conv.format
