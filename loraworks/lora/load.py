"""`load_lora`: read a file, folder or state dict once into a reusable `LoRA`."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import LoRAFormatError, SafetensorsHeaderError
from .formats import Converted, diffusers, kohya, peft
from .layers import Layer, layer_from_leaves
from .model import LoRA
from .probe import probe_base

#: safetensors headers larger than this are refused before parsing, for LoRAs and main models
#: alike (real LoRA headers are well under 1 MiB; a big kohya ``ss_tag_frequency`` or a
#: checkpoint's few thousand tensor entries stay far below this)
MAX_HEADER_BYTES = 64 * 1024 * 1024
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pth")
DIFFUSERS_WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
PEFT_WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_COMPONENT_DIRS = ("unet", "text_encoder", "text_encoder_2")


def read_safetensors_header(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """Return (header length, parsed header) after checking the length against the file.

    The one safetensors header reader (the model manager uses it too), so every file gets the
    same cap and checks before anything parses it; raises `SafetensorsHeaderError`.
    """
    path = Path(path)
    size = path.stat().st_size

    def refuse(reason: str, too_large: bool = False) -> SafetensorsHeaderError:
        return SafetensorsHeaderError(
            f"{path.name}: not a valid safetensors file ({reason})", too_large
        )

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsHeaderError(f"{path.name}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise refuse(
                f"header of {n} bytes in a {size}-byte file: the header claims more than the "
                f"file holds or the {MAX_HEADER_BYTES // 2**20} MiB limit allows; refusing to "
                "parse it",
                too_large=True,
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise refuse(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise refuse("header is not a JSON object")
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise refuse("__metadata__ is not an object")
            continue
        try:
            start, end = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise refuse(f"malformed entry for tensor {key!r}") from None
        if not (0 <= start <= end <= data_len) or any(s < 0 for s in shape):
            raise refuse(f"tensor {key!r} lies outside the file (truncated or corrupt)")
    return n, header


def header_metadata(header: dict[str, Any]) -> dict[str, str]:
    """The ``__metadata__`` table of a parsed header, as the strings the format promises."""
    return {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    _, header = read_safetensors_header(path)
    metadata = header_metadata(header)
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise LoRAFormatError(f"{Path(path).name}: cannot read tensors ({e})") from None
    return sd, metadata


def read_pickle(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``.bin/.pt/.ckpt/.pth`` through ``torch.load(weights_only=True)`` only (no code runs)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise LoRAFormatError(
            f"{Path(path).name}: refused to load this pickle file: it is not a plain tensor file "
            f"that torch.load(weights_only=True) accepts ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Convert it to .safetensors."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise LoRAFormatError(f"{Path(path).name}: does not contain a state dict")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(sd) != len(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise LoRAFormatError(f"{Path(path).name}: non-tensor entries {bad}")
    return sd, {}


def read_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        return read_pickle(p)
    return read_safetensors(p)


def _read_config(folder: Path) -> dict | None:
    cfg = folder / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise LoRAFormatError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LoRAFormatError(f"{cfg}: not a JSON object")
    return data


def _weights_in(folder: Path, names) -> Path | None:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


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
    in ``unet/``, ``text_encoder/``, ``text_encoder_2/`` sub-folders; or ``(state_dict,
    metadata)`` / a bare state dict. ``base`` overrides the probe (e.g. for a LoRA that carries
    no evidence of its base). Raises `LoRAFormatError` for anything it cannot read.
    """
    metadata: dict[str, str] = {}
    src_name: str | None = None
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[0], dict):
        sd, metadata = dict(source[0]), dict(source[1] or {})
        conv = convert_keys(sd, metadata, peft_configs=None)
    elif isinstance(source, dict):
        sd = dict(source)
        conv = convert_keys(sd, {}, peft_configs=None)
    else:
        p = Path(source)
        src_name = p.name
        if not p.exists():
            raise LoRAFormatError(f"{p}: no such file or folder")
        if p.is_dir():
            conv, metadata = _load_folder(p)
        else:
            sd, metadata = read_file(p)
            cfg = _read_config(p.parent) if p.name in PEFT_WEIGHT_NAMES else None
            conv = convert_keys(sd, metadata, peft_configs={None: cfg} if cfg else None)
    if name is None and src_name is not None:
        name = Path(src_name).stem if Path(src_name).suffix else src_name
    return build(
        conv, metadata, base=base, name=name, source=None if src_name is None else str(source)
    )


def _load_folder(p: Path) -> tuple[Converted, dict[str, str]]:
    w = _weights_in(p, DIFFUSERS_WEIGHT_NAMES)
    if w is not None:
        sd, md = read_file(w)
        return convert_keys(sd, md, peft_configs=None), md
    w = _weights_in(p, PEFT_WEIGHT_NAMES)
    if w is not None:
        sd, md = read_file(w)
        return convert_keys(sd, md, peft_configs={None: _read_config(p)}), md
    parts: dict[str, tuple[dict, dict | None]] = {}
    md_all: dict[str, str] = {}
    for comp in _COMPONENT_DIRS:
        sub = p / comp
        w = _weights_in(sub, PEFT_WEIGHT_NAMES) if sub.is_dir() else None
        if w is not None:
            sd, md = read_file(w)
            md_all.update(md)
            parts[comp] = (sd, _read_config(sub))
    if not parts:
        raise LoRAFormatError(
            f"{p}: folder has no pytorch_lora_weights.safetensors, adapter_model.safetensors, or "
            "unet/ text_encoder/ adapter sub-folders"
        )
    return peft.convert_components(parts), md_all


def convert_keys(sd: dict, metadata: dict[str, str], peft_configs) -> Converted:
    """The one key-family converter that recognises `sd` (PEFT, kohya/LyCORIS, diffusers)."""
    if not sd:
        raise LoRAFormatError("the file holds no tensors")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise LoRAFormatError(f"non-tensor values for keys {bad[:5]}")
    if peft_configs is not None or peft.is_peft_format(sd):
        cfg = (peft_configs or {}).get(None)
        return peft.convert(sd, cfg, metadata)
    if kohya.is_kohya_format(sd):
        return kohya.convert(sd, metadata)
    if diffusers.is_diffusers_format(sd):
        return diffusers.convert(sd, metadata)
    shown = ", ".join(sorted(sd)[:6])
    raise LoRAFormatError(f"not a LoRA file we know (keys: {shown}{' …' if len(sd) > 6 else ''})")


#: leaves that are counts, flags or indices; every other leaf must hold floating-point weights
_NON_FLOAT_LEAVES = frozenset({"alpha", "on_input", "bias_indices", "bias_size"})


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
) -> LoRA:
    for target, leaves in conv.groups.items():
        for leaf, t in leaves.items():
            if not t.is_floating_point() and leaf not in _NON_FLOAT_LEAVES:
                raise LoRAFormatError(
                    f"refusing this LoRA: layer {conv.origin.get(target, target)!r} stores "
                    f"{leaf!r} as {t.dtype}, not as floating-point weights"
                )
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
        if base not in ("sd1", "sd2", "sdxl"):
            raise LoRAFormatError(f"unknown base {base!r} (sd1, sd2, sdxl)")
        found, compat, evidence, warnings = base, frozenset({base}), ["given by the caller"], []
    else:
        found, compat, evidence, warnings = probe_base(
            layers, metadata, sgm_names=conv.sgm_names, hint=conv.base_hint
        )
    return LoRA(
        layers=layers,
        base=found,
        format=conv.format,
        metadata=metadata,
        name=name,
        source=source,
        compatible_bases=compat,
        base_evidence=evidence,
        warnings=warnings,
        unet_names=conv.unet_names,
    )
