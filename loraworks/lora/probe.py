"""Which base model (sd1 / sd2 / sdxl) a LoRA is for — from tensor shapes, in any key order.

Evidence, strongest first; each piece narrows a candidate set and all pieces are intersected,
so the answer never depends on the order of keys in the file:

1. *Widths* (decisive): the input width of ``attn2.to_k`` / ``attn2.to_v`` (cross-attention:
   768 → sd1, 1024 → sd2, 2048 → sdxl); the text-encoder hidden width (``text_encoder`` 768 →
   sd1 or sdxl's CLIP-L, 1024 → sd2; any ``text_encoder_2`` layer → sdxl, 1280 wide).
2. *Structure* (facts of the architectures): ``add_embedding`` (SDXL's text_time embedding) or a
   ``transformer_blocks`` index ≥ 2 → sdxl; a 4th UNet level (``down_blocks.3`` /
   ``up_blocks.3``) or attention at ``down_blocks.0`` → sd1/sd2. Softer layout hints, used
   only when they agree with the rest: a 1×1-conv ``proj_in``/``proj_out`` → sd1 (SD2 and SDXL
   use linear projections); kohya sgm UNet names (``input_blocks``…) → sdxl (kohya writes
   SD1/SD2 with diffusers names).
3. *Metadata* (a hint only, used when 1–2 leave a choice): ``ss_base_model_version``, ``ss_v2``,
   ``modelspec.architecture``.

If the evidence contradicts itself, or there is no evidence at all, `LoRAFormatError` says what
was seen. When evidence narrows the choice to two bases that the tensors both fit (e.g. a
CLIP-L-only LoRA: sd1 or sdxl; an IA³ file on attention outputs: sd1 or sd2) the LoRA gets the
first of ``PREFERENCE`` as ``base``, both in `LoRA.compatible_bases` (it applies to either
without `LoRABaseMismatch`) and a warning; ``load_lora(..., base=...)`` overrides.

Model-name hints: ``base_model_name_or_path`` of a PEFT config is read like metadata.
"""

from __future__ import annotations

import re

from .bases import BASES, CROSS_ATTENTION_WIDTHS, TEXT_ENCODER_2_WIDTH, TEXT_ENCODER_WIDTHS
from .errors import LoRAFormatError
from .layers import Layer

ALL = frozenset(BASES)
#: which base an ambiguous LoRA is taken as (it still applies to every base it fits)
PREFERENCE = ("sd1", "sdxl", "sd2")

_TE_SQUARE = re.compile(r"self_attn\.(q|k|v|out)_proj$")
_TE_NORM = re.compile(r"(layer_norm1|layer_norm2|final_layer_norm)$")


def _te_width(path: str, layer: Layer) -> int | None:
    """The CLIP hidden width a text-encoder layer reveals (either side of q/k/v/out_proj, fc1's
    input, fc2's output, a layer norm's size)."""
    if _TE_SQUARE.search(path):
        return layer.in_features() or layer.out_features()
    if path.endswith("mlp.fc1"):
        return layer.in_features()
    if path.endswith("mlp.fc2") or _TE_NORM.search(path):
        return layer.out_features()
    return None


_PROJ = re.compile(r"\.attentions\.\d+\.proj_(in|out)$")


def name_hint(name: str | None) -> str | None:
    """A base from a model name such as ``stabilityai/stable-diffusion-xl-base-1.0``."""
    n = (name or "").lower()
    if "xl" in n and ("stable-diffusion" in n or "sdxl" in n or "sd_xl" in n):
        return "sdxl"
    if re.search(r"stable-diffusion-2|sd-?2[._-]?[01]|sd_v2|v2-1", n):
        return "sd2"
    if re.search(r"stable-diffusion-v1|sd-?1[._-]?5|sd_v1|v1-5", n):
        return "sd1"
    return None


def metadata_hint(metadata: dict[str, str]) -> str | None:
    v = (metadata.get("ss_base_model_version") or "").lower()
    if v.startswith("sdxl"):
        return "sdxl"
    if v.startswith("sd_v2") or v.startswith("sd_2"):
        return "sd2"
    if v.startswith("sd_v1") or v.startswith("sd_1"):
        return "sd1"
    arch = (metadata.get("modelspec.architecture") or "").lower()
    if "stable-diffusion-xl" in arch:
        return "sdxl"
    if "stable-diffusion-v2" in arch:
        return "sd2"
    if "stable-diffusion-v1" in arch:
        return "sd1"
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "sd2"
    return None


def probe_base(
    layers: dict[str, Layer],
    metadata: dict[str, str] | None = None,
    sgm_names: bool = False,
    hint: str | None = None,
) -> tuple[str, frozenset[str], list[str], list[str]]:
    """Return (base, compatible bases, evidence lines, warnings). ``hint`` (e.g. from a PEFT
    config's ``base_model_name_or_path``) counts like metadata."""
    metadata = metadata or {}
    decisive: list[tuple[str, frozenset[str]]] = []
    structural: list[tuple[str, frozenset[str]]] = []
    soft: list[tuple[str, frozenset[str]]] = []  # layout hints: used only if consistent

    def add(bucket, what: str, bases) -> None:
        bucket.append((what, frozenset(bases)))

    te_widths: dict[str, set[int]] = {}
    for key in sorted(layers):
        layer = layers[key]
        comp, _, path = key.partition(".")
        if comp == "unet":
            if path.endswith(("attn2.to_k", "attn2.to_v")):
                w = layer.in_features()
                if w in CROSS_ATTENTION_WIDTHS:
                    found = CROSS_ATTENTION_WIDTHS[w]
                    add(decisive, f"cross-attention width {w} ({path})", {found})
                elif w is not None:
                    raise LoRAFormatError(
                        f"cross-attention width {w} at {path} fits no SD1/SD2/SDXL model"
                    )
            if path.startswith("add_embedding."):
                add(structural, f"add_embedding ({path})", {"sdxl"})
            idx = _transformer_index(path)
            if idx is not None and idx >= 2:
                add(structural, f"transformer_blocks index {idx} ({path})", {"sdxl"})
            if path.startswith(("down_blocks.3.", "up_blocks.3.", "down_blocks.0.attentions.")):
                add(structural, f"4-level UNet layout ({path})", {"sd1", "sd2"})
            if _PROJ.search(path):
                conv = layer.is_conv()
                if conv is True:
                    add(soft, f"1x1 conv proj ({path})", {"sd1"})
                elif conv is False:
                    add(soft, f"linear proj ({path})", {"sd2", "sdxl"})
        elif comp in ("text_encoder", "text_encoder_2"):
            w = _te_width(path, layer)
            if w is not None:
                te_widths.setdefault(comp, set()).add(w)
    te1 = te_widths.get("text_encoder", set())
    te2 = te_widths.get("text_encoder_2", set())
    for w in sorted(te1):
        bases = TEXT_ENCODER_WIDTHS.get(w)
        if bases is None:
            raise LoRAFormatError(f"text encoder width {w} fits no SD1/SD2/SDXL text encoder")
        add(decisive, f"text_encoder width {w}", bases)
    if any(k.startswith("text_encoder_2.") for k in layers):
        if te2 - {TEXT_ENCODER_2_WIDTH}:
            raise LoRAFormatError(
                f"text_encoder_2 width {sorted(te2)} is not SDXL's {TEXT_ENCODER_2_WIDTH}"
            )
        add(decisive, "text_encoder_2 (CLIP-G) layers", {"sdxl"})
    if sgm_names:
        add(soft, "kohya sgm UNet names (input_blocks/middle_block/output_blocks)", {"sdxl"})

    cands = ALL
    evidence: list[str] = []
    for tier in (decisive, structural):
        for what, bases in _dedupe(tier):
            new = cands & bases
            if not new:
                raise LoRAFormatError(
                    "the LoRA contradicts itself about its base model: "
                    + "; ".join([*evidence, f"{what} → {'/'.join(sorted(bases))}"])
                )
            cands = new
            evidence.append(f"{what} → {'/'.join(sorted(bases))}")
    for what, bases in _dedupe(soft):  # hints about layout: used only when they do not contradict
        if cands & bases and len(cands) > 1:
            cands = cands & bases
            evidence.append(f"{what} → {'/'.join(sorted(bases))}")

    warnings: list[str] = []
    hint = metadata_hint(metadata) or hint
    if hint is not None:
        if hint in cands:
            if len(cands) > 1:
                evidence.append(f"metadata says {hint}")
        else:
            warnings.append(
                f"metadata says {hint} but the tensors say {'/'.join(sorted(cands))}; "
                "trusting the tensors"
            )
    if len(cands) == 1:
        (base,) = cands
        return base, cands, evidence, warnings
    if hint in cands:
        return hint, cands, evidence, warnings
    if cands != ALL:
        base = next(b for b in PREFERENCE if b in cands)
        warnings.append(
            f"the tensors fit {'/'.join(sorted(cands))} (it applies to either); recorded as {base}"
        )
        return base, cands, [*evidence, f"ambiguous: taken as {base}"], warnings
    raise LoRAFormatError(
        "cannot tell the base model of this LoRA (no cross-attention or text-encoder layer, no "
        "decisive structure, no metadata); candidates: "
        + "/".join(sorted(cands))
        + (f"; seen: {'; '.join(evidence)}" if evidence else "")
    )


def _transformer_index(path: str) -> int | None:
    m = re.search(r"\.transformer_blocks\.(\d+)\.", path)
    return int(m.group(1)) if m else None


def _dedupe(items):
    seen: dict[frozenset, str] = {}
    for what, bases in items:
        seen.setdefault(bases, what)  # first (sorted) example of each kind of evidence
    return [(what, bases) for bases, what in seen.items()]
