"""Writing a `LoRA` back to a file: kohya/A1111 ``.safetensors``, a diffusers file, a PEFT folder.

* **kohya**: ``lora_unet_<flattened path>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  (``lora_te_`` for SD1/SD2's text encoder, ``lora_te1_``/``lora_te2_`` for SDXL's), norm
  layers as ``.w_norm``/``.b_norm``. UNet paths: SD1/SD2 with diffusers names (as kohya
  writes them), SDXL with the original sgm names (``input_blocks_4_1_…``, ``middle_block_…``,
  ``output_blocks_…``) as sd-scripts writes SDXL files and A1111, Forge and ComfyUI expect
  (`keys.diffusers_to_sgm`). Metadata: the given entries, then ``ss_network_module``,
  ``ss_network_dim`` and ``ss_network_alpha`` (``Dynamic`` when the layers differ, as kohya
  writes it), ``ss_base_model_version``, and ``sshs_model_hash`` / ``sshs_legacy_hash``
  computed as kohya's ``precalculate_safetensors_hashes`` does (sha256 of the tensor bytes
  of the file saved without metadata; legacy: of 64 KiB at offset 1 MiB of those bytes), so
  that A1111's ``Lora hashes`` name the new file, not its source.
* **diffusers**: ``<component>.<path>.lora_A.weight`` / ``lora_B.weight`` with the PEFT
  config per component in the ``lora_adapter_metadata`` header entry (``r``, ``lora_alpha``,
  ``rank_pattern``, ``alpha_pattern`` for layers that differ), as diffusers'
  ``save_lora_weights`` writes it.
* **peft**: a folder with ``unet/``, ``text_encoder/``, ``text_encoder_2/`` sub-folders, each
  ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``) and
  ``adapter_config.json``, as a pipeline's ``save_pretrained`` writes PEFT adapters.

Text-encoder paths are written with the ``text_model.`` level real files name. diffusers and
PEFT carry plain LoRA layers only (no Tucker middle factor, no sparse part); anything else is
refused with a pointer to ``resize``, which turns every linear kind into LoRA/LoCon layers.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save, save_file

from ..keys import SDXL_UNET, diffusers_to_sgm, flatten
from ..layers import Layer, LoRALayer, NormLayer
from ..model import LoRA
from .atomic import atomic_output
from .errors import UnsupportedKind

Tensor = torch.Tensor
Format = Literal["kohya", "diffusers", "peft"]
FORMATS: tuple[Format, ...] = ("kohya", "diffusers", "peft")

_TE_PREFIX = {"text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
_BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
#: metadata of a source that would be wrong for a new file
STALE_METADATA = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")


def file_path(target: str) -> tuple[str, str]:
    """(component, module path as files name it): text encoders with ``text_model.``."""
    comp, _, path = target.partition(".")
    if comp.startswith("text_encoder") and not path.startswith("text_model."):
        path = "text_model." + path
    return comp, path


def alpha_for(layer: LoRALayer) -> Tensor:
    """An alpha tensor whose value/rank is exactly the layer's scale: float32 (what kohya
    writes) when one exists — the layer's own alpha first — else float64 (rsLoRA's α/√r, say,
    has no float32 α with α/r equal to it; readers take the value as a Python float)."""
    r, s = layer.rank, layer.scale
    for dtype in (torch.float32, torch.float64):
        guess = torch.tensor(s * r, dtype=dtype)
        lo = hi = guess
        candidates = [layer.alpha] if layer.alpha else []
        for _ in range(4):
            candidates += [float(lo), float(hi)]
            lo, hi = torch.nextafter(lo, lo - abs(lo) - 1), torch.nextafter(hi, hi + abs(hi) + 1)
        for cand in candidates:
            stored = torch.tensor(cand, dtype=dtype)
            if float(stored) == cand and cand / r == s:
                return stored
    return torch.tensor(s * r, dtype=torch.float64)


def _plain(target: str, layer: Layer, to: str) -> LoRALayer:
    if isinstance(layer, LoRALayer) and layer.mid is None and layer.sparse is None:
        return layer
    what = "LoRA layer with a Tucker or sparse part" if layer.kind == "lora" else layer.kind
    raise UnsupportedKind(
        f"{target}: a {what} cannot be written as {to}; "
        "`loraworks lora resize` turns it into a plain LoRA first"
    )


# --- kohya -------------------------------------------------------------------------------------


def kohya_state_dict(lora: LoRA) -> dict[str, Tensor]:
    sd: dict[str, Tensor] = {}
    for target, layer in lora.layers.items():
        comp, path = file_path(target)
        if comp == "unet":
            prefix = "lora_unet_"
            if lora.base == "sdxl":
                path = diffusers_to_sgm(path, SDXL_UNET)
        elif lora.base == "sdxl" and comp == "text_encoder":
            prefix = "lora_te1_"
        else:
            prefix = _TE_PREFIX[comp]
        key = prefix + flatten(path)
        if isinstance(layer, LoRALayer) and layer.sparse is None:
            for leaf, t in layer.tensors().items():
                sd[f"{key}.{leaf}"] = t.contiguous()
            sd[f"{key}.alpha"] = alpha_for(layer)
        elif isinstance(layer, NormLayer) or (layer.kind == "full" and layer.sparse is None):
            for leaf, t in layer.tensors().items():
                sd[f"{key}.{leaf}"] = t.contiguous()
        else:
            raise UnsupportedKind(
                f"{target}: a {layer.kind} layer cannot be written as kohya LoRA; "
                "`loraworks lora resize` turns it into a LoRA first"
            )
    return sd


def kohya_hashes(sd: dict[str, Tensor]) -> dict[str, str]:
    """kohya's ``sshs_model_hash`` / ``sshs_legacy_hash`` of these tensors."""
    data = save(sd)
    n = int.from_bytes(data[:8], "little")
    return {
        "sshs_model_hash": hashlib.sha256(data[8 + n :]).hexdigest(),
        "sshs_legacy_hash": hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8],
    }


def kohya_metadata(lora: LoRA, sd: dict[str, Tensor]) -> dict[str, str]:
    lo = [layer for layer in lora.layers.values() if isinstance(layer, LoRALayer)]
    ranks = {layer.rank for layer in lo}
    alphas = {float(alpha_for(layer)) for layer in lo}
    meta = {k: v for k, v in lora.metadata.items() if k not in STALE_METADATA}
    only_lora = all(isinstance(layer, LoRALayer) for layer in lora.layers.values())
    meta["ss_network_module"] = "networks.lora" if only_lora else "lycoris.kohya"
    meta["ss_network_dim"] = str(ranks.pop()) if len(ranks) == 1 else "Dynamic"
    meta["ss_network_alpha"] = f"{alphas.pop():g}" if len(alphas) == 1 else "Dynamic"
    meta["ss_base_model_version"] = _BASE_VERSION[lora.base]
    meta["ss_v2"] = str(lora.base == "sd2")
    meta.update(kohya_hashes(sd))
    return meta


def save_kohya(lora: LoRA, path: Path, force: bool = False) -> Path:
    sd = kohya_state_dict(lora)
    meta = kohya_metadata(lora, sd)
    with atomic_output(path, force) as tmp:
        _save(sd, tmp, meta)
    return path


def _save(sd: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    """One file write: the single place every tool writes tensors (tests break it here)."""
    save_file(sd, str(path), metadata=meta)


# --- diffusers / PEFT ---------------------------------------------------------------------------


def _peft_parts(lora: LoRA, to: str, key: Callable[[str, str], str]):
    """Per component: its state dict and PEFT LoraConfig fields (``r``/``lora_alpha`` the
    most common, patterns for the layers that differ)."""
    grouped: dict[str, dict[str, LoRALayer]] = {}
    for target, layer in lora.layers.items():
        comp, path = file_path(target)
        grouped.setdefault(comp, {})[path] = _plain(target, layer, to)
    out = {}
    for comp, layers in grouped.items():
        sd: dict[str, Tensor] = {}
        for path, ly in layers.items():
            sd[key(comp, path) + ".lora_A.weight"] = ly.down.contiguous()
            sd[key(comp, path) + ".lora_B.weight"] = ly.up.contiguous()
            if ly.up_bias is not None:
                sd[key(comp, path) + ".lora_B.bias"] = ly.up_bias.contiguous()
        ranks = {p: ly.rank for p, ly in layers.items()}
        alphas = {p: float(alpha_for(ly)) for p, ly in layers.items()}
        r = Counter(ranks.values()).most_common(1)[0][0]
        a = Counter(alphas.values()).most_common(1)[0][0]
        out[comp] = (
            sd,
            {
                "peft_type": "LORA",
                "r": r,
                "lora_alpha": a,
                "rank_pattern": {p: v for p, v in ranks.items() if v != r},
                "alpha_pattern": {p: v for p, v in alphas.items() if v != a},
                "target_modules": sorted({p.rsplit(".", 1)[-1] for p in layers}),
                "use_rslora": False,
                "use_dora": False,
                "lora_bias": any(ly.up_bias is not None for ly in layers.values()),
            },
        )
    return out


def save_diffusers(lora: LoRA, path: Path, force: bool = False) -> Path:
    parts = _peft_parts(lora, "diffusers", lambda comp, p: f"{comp}.{p}")
    sd = {k: v for part, _ in parts.values() for k, v in part.items()}
    adapter = {f"{comp}.{k}": v for comp, (_, cfg) in parts.items() for k, v in cfg.items()}
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(adapter)}
    with atomic_output(path, force) as tmp:
        _save(sd, tmp, meta)
    return path


def save_peft(lora: LoRA, folder: Path, force: bool = False) -> Path:
    parts = _peft_parts(lora, "PEFT", lambda comp, p: f"base_model.model.{p}")
    with atomic_output(folder, force) as tmp:
        tmp.mkdir()
        for comp, (sd, cfg) in parts.items():
            (tmp / comp).mkdir()
            _save(sd, tmp / comp / "adapter_model.safetensors", {"format": "pt"})
            (tmp / comp / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    return folder


SAVERS: dict[str, Callable[[LoRA, Path, bool], Path]] = {
    "kohya": save_kohya,
    "diffusers": save_diffusers,
    "peft": save_peft,
}


def save_lora(lora: LoRA, path: Path, to: Format = "kohya", force: bool = False) -> Path:
    """Write ``lora`` in format ``to`` at ``path`` (a file; a folder for ``peft``), atomically."""
    if to not in SAVERS:
        raise UnsupportedKind(f"unknown output format {to!r} ({', '.join(FORMATS)})")
    if not lora.layers:
        raise UnsupportedKind("the result has no layers (every ΔW was zero); nothing written")
    return SAVERS[to](lora, Path(path), force)
