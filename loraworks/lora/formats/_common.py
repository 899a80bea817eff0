"""Shared by the diffusers and PEFT converters: leaf names (the layer kinds' ``spellings``),
component routing, PEFT configs."""

from __future__ import annotations

import re
from typing import Any

from .. import boundedjson
from ..bases import COMPONENTS
from ..errors import LoRAFormatError
from ..files import MAX_CONFIG_BYTES
from ..layers import Convention, Tensor, leaf_heads, spellings

# Old diffusers attention-processor LoRA: "<attn>.processor.to_q_lora.down.weight".
_PROC_UNET = {
    "to_q_lora": "to_q",
    "to_k_lora": "to_k",
    "to_v_lora": "to_v",
    "to_out_lora": "to_out.0",
}
_PROC_TE = {
    "to_q_lora": "q_proj",
    "to_k_lora": "k_proj",
    "to_v_lora": "v_proj",
    "to_out_lora": "out_proj",
}
_PROC_LEAF = {"down.weight": "lora_down.weight", "up.weight": "lora_up.weight"}

_UNET_HEADS = ("down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "time_embedding",
               "add_embedding", "conv_norm_out", "encoder_hid_proj")  # fmt: skip
_TE_HEADS = ("text_model", "encoder", "embeddings", "final_layer_norm", "text_projection")


def split_leaf(key: str) -> tuple[str, str] | None:
    """``a.b.to_q.lora_A.weight`` → (``a.b.to_q``, ``lora_down.weight``); None if no leaf.

    The adapter name PEFT may leave in keys (``lora_A.default.weight``) is dropped.
    """
    parts = key.split(".")
    leaf_map, heads = spellings(), leaf_heads()
    for i, p in enumerate(parts):
        if p == "processor" and i + 1 < len(parts) and parts[i + 1] in _PROC_UNET:
            leaf = ".".join(parts[i + 2 :])
            if leaf in _PROC_LEAF:
                return ".".join(parts[:i]) + "\x00" + parts[i + 1], _PROC_LEAF[leaf]
        if p in _PROC_UNET and i + 1 < len(parts) and ".".join(parts[i + 1 :]) in _PROC_LEAF:
            # "self_attn.to_q_lora.down.weight" (old diffusers text-encoder LoRA)
            return ".".join(parts[:i]) + "\x00" + p, _PROC_LEAF[".".join(parts[i + 1 :])]
        if p in heads and i > 0:
            rest = parts[i:]
            leaf = ".".join(rest)
            if leaf not in leaf_map and len(rest) >= 2:
                # drop an adapter name: lora_A.<name>.weight / hada_w1_a.<name> / ia3_l.<name>
                trial = ".".join([rest[0], *rest[2:]])
                if trial in leaf_map:
                    leaf = trial
            if leaf in leaf_map:
                return ".".join(parts[:i]), leaf_map[leaf]
    return None


def finish_module_path(path: str, component: str) -> str:
    """Resolve the old attention-processor marker left by `split_leaf`."""
    if "\x00" not in path:
        return path
    attn, proc = path.split("\x00")
    table = _PROC_TE if component.startswith("text_encoder") else _PROC_UNET
    return f"{attn}.{table[proc]}"


def component_of_module(path: str) -> str | None:
    head = path.split(".", 1)[0]
    if head in _UNET_HEADS:
        return "unet"
    if head in _TE_HEADS:
        return "text_encoder"
    return None


def te_width(leaves: dict[str, Tensor]) -> int | None:
    for k in ("lora_down.weight", "hada_w1_b"):
        if k in leaves and leaves[k].dim() == 2:
            return int(leaves[k].shape[1])
    return None


# --- PEFT configs -------------------------------------------------------------------------


def _pattern_value(patterns: dict | None, module: str):
    """PEFT ``get_pattern_key``: first pattern p with ``re.match(rf"(.*\\.)?({p})$", module)``."""
    for p, v in (patterns or {}).items():
        try:
            if re.match(rf"(.*\.)?({p})$", module):
                return v
        except re.error:
            if module == p or module.endswith("." + p):
                return v
    return None


def _is_feedforward(cfg: dict, module: str) -> bool | None:
    ff = cfg.get("feedforward_modules")
    if ff is None:
        return None
    if isinstance(ff, str):
        return bool(re.fullmatch(ff, module))
    return any(module.endswith(t) for t in ff)


def peft_convention(cfg: dict[str, Any] | None, module: str) -> Convention:
    """The `Convention` PEFT used for ``module`` under config ``cfg`` (None → defaults)."""
    if not cfg:
        return Convention(producer="peft")
    peft_type = str(cfg.get("peft_type") or "LORA").upper()
    r = _pattern_value(cfg.get("rank_pattern"), module) or cfg.get("r")
    alpha_key = "lora_alpha" if peft_type == "LORA" else "alpha"
    alpha = _pattern_value(cfg.get("alpha_pattern"), module)
    if alpha is None:
        alpha = cfg.get(alpha_key, cfg.get("lora_alpha") if alpha_key == "alpha" else None)
    return Convention(
        producer="peft",
        alpha=float(alpha) if alpha is not None else None,
        rank=int(r) if r is not None else None,
        rslora=bool(cfg.get("use_rslora", False)),
        feedforward=_is_feedforward(cfg, module) if peft_type == "IA3" else None,
        **(_oft_options(cfg) if peft_type == "OFT" else {}),
    )


def _oft_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """PEFT OFTConfig's rotation settings, with its defaults for keys an older config lacks."""
    neumann = bool(cfg.get("use_cayley_neumann", True))
    return {
        "oft_neumann_terms": int(cfg.get("num_cayley_neumann_terms", 5)) if neumann else None,
        "oft_coft_eps": float(cfg.get("eps", 6e-5)) if cfg.get("coft") else None,
        "oft_block_share": bool(cfg.get("block_share", False)),
    }


def diffusers_metadata_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """Per-component configs from diffusers' ``lora_adapter_metadata`` header entry."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = boundedjson.loads(raw, MAX_CONFIG_BYTES)
    except ValueError as e:
        raise LoRAFormatError(f"lora_adapter_metadata is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise LoRAFormatError("lora_adapter_metadata is not a JSON object")
    out: dict[str, dict] = {}
    for key, value in data.items():
        comp, _, field = key.partition(".")
        if comp in COMPONENTS and field:
            out.setdefault(comp, {})[field] = value
        elif comp and not field:
            out.setdefault("*", {})[comp] = value  # un-prefixed: applies to every component
    if "*" in out:
        shared = out.pop("*")
        for comp in COMPONENTS:
            out[comp] = {**shared, **out.get(comp, {})}
    return out
