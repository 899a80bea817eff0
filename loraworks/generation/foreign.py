"""Settings read from PNGs that other tools made (docs/interop.md): A1111's infotext
(`parameters`, also written by Forge, SD.Next, Fooocus' A1111 mode and Civitai), InvokeAI's
`invokeai_metadata` JSON and ComfyUI's `prompt` graph (API format: node id → `class_type` and
`inputs`, a link being `[node id, output index]`).

Each reader turns one layout into `ForeignSettings`: the numbers we can use, references to
models (names and the hashes the tool wrote, found among the records by `matching.py`), and
every setting we have no counterpart for, listed in `unmapped` as a sentence — nothing is
dropped silently. Reading is pure: no records, no files besides the PNG.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from PIL import Image

from loraworks.generation.errors import GenerationError, PromptSyntaxError
from loraworks.generation.infotext import (
    InfotextError,
    parse_hash_list,
    parse_infotext,
    scheduler_from_a1111,
)
from loraworks.generation.prompt import parse_prompt
from loraworks.generation.request import MAX_SEED
from loraworks.generation.schedulers import SCHEDULERS
from loraworks.lora import Strength, with_components

A1111_CHUNK = "parameters"
INVOKEAI_CHUNK = "invokeai_metadata"
COMFYUI_CHUNK = "prompt"
#: a graph or metadata JSON larger than this is refused unread
MAX_JSON_CHARS = 1 << 20


class RecallError(GenerationError):
    """A PNG whose settings cannot be read or used; the message says what is missing."""


@dataclass(frozen=True)
class ForeignRef:
    """A model as another tool named it: a name and the hashes it wrote (any kind)."""

    name: str
    hashes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ForeignLoRA:
    ref: ForeignRef
    weight: Strength


@dataclass
class ForeignSettings:
    source: str  # "A1111", "InvokeAI", "ComfyUI"
    prompt: str = ""
    negative_prompt: str | None = None
    steps: int | None = None
    cfg: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    model: ForeignRef | None = None
    loras: list[ForeignLoRA] = field(default_factory=list)
    embeddings: list[ForeignRef] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


def png_text(path: Path) -> dict[str, str]:
    """The PNG's text chunks; an unreadable file is a `RecallError`."""
    try:
        with Image.open(path) as image:
            image.load()
            return dict(getattr(image, "text", {}) or {})
    except (OSError, ValueError, SyntaxError) as exc:
        raise RecallError(f"{path}: not a readable PNG ({exc})") from None


def read_foreign(chunks: dict[str, str], label: str) -> ForeignSettings:
    """The settings of the first layout found: InvokeAI, ComfyUI, then A1111's infotext
    (InvokeAI and ComfyUI images rarely carry `parameters`; when they do it is a copy)."""
    if INVOKEAI_CHUNK in chunks:
        return read_invokeai(_json(chunks[INVOKEAI_CHUNK], label, "InvokeAI metadata"))
    if COMFYUI_CHUNK in chunks:
        return read_comfyui(_json(chunks[COMFYUI_CHUNK], label, "ComfyUI prompt graph"))
    if A1111_CHUNK in chunks:
        try:
            return read_a1111(chunks[A1111_CHUNK])
        except InfotextError as exc:
            raise RecallError(f"{label}: unreadable A1111 infotext ({exc})") from None
    raise RecallError(
        f"{label}: no settings found (no loraworks recipe, A1111 'parameters', InvokeAI "
        "'invokeai_metadata' or ComfyUI 'prompt' text chunk)"
    )


def _json(text: str, label: str, what: str) -> dict[str, Any]:
    if len(text) > MAX_JSON_CHARS:
        raise RecallError(f"{label}: {what} of {len(text)} characters; refused")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RecallError(f"{label}: damaged {what} ({exc})") from None
    if not isinstance(data, dict):
        raise RecallError(f"{label}: {what} is not a JSON object")
    return data


# --- shared checks --------------------------------------------------------------------------


def _int(value: object, what: str, out: ForeignSettings, low: int, high: int) -> int | None:
    """`value` as a whole number in [low, high], else None with the reason listed."""
    try:
        number = int(str(value).strip())
    except ValueError:
        out.unmapped.append(f"{what} {value!r} is not a whole number; left unset")
        return None
    if not low <= number <= high:
        out.unmapped.append(f"{what} {number} is outside {low}–{high}; left unset")
        return None
    return number


def _float(value: object, what: str, out: ForeignSettings) -> float | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 50.0:
        out.unmapped.append(f"{what} {value!r} is not a number from 0 to 50; left unset")
        return None
    return number


def _size(width: object, height: object, out: ForeignSettings) -> None:
    w = _int(width, "width", out, 64, 4096)
    h = _int(height, "height", out, 64, 4096)
    if w is None or h is None:
        return
    if w % 8 or h % 8:
        out.unmapped.append(f"size {w}x{h} is not a multiple of 8; left unset")
        return
    out.width, out.height = w, h


def _scheduler(ours: str | None, theirs: str, out: ForeignSettings) -> None:
    if ours is None or ours not in SCHEDULERS:
        out.unmapped.append(f"sampler {theirs} has no counterpart here; the default is used")
        return
    out.scheduler = ours


def _stem(file_name: str) -> str:
    """`sd15/foo.safetensors` or `sd15\\foo.ckpt` -> `foo` (the name a record gets)."""
    last = PureWindowsPath(PurePosixPath(file_name).name).name
    return last.rsplit(".", 1)[0] if re.search(r"\.(safetensors|ckpt|pt|bin|pth)$", last) else last


def _strength(value: object, name: str, out: ForeignSettings) -> float | None:
    """A LoRA weight another tool wrote: any finite number (sliders go to ±8 and beyond)."""
    try:
        number = float(str(value).strip())
    except ValueError:
        number = float("nan")
    if number != number or abs(number) == float("inf"):
        out.unmapped.append(f"LoRA '{name}': weight {value!r} is not a number; dropped")
        return None
    return number


def _weight(unet: float, te: float) -> Strength:
    if unet == te:
        return unet
    return {"unet": unet, "text_encoder": te, "text_encoder_2": te}


# --- A1111 ----------------------------------------------------------------------------------

_TAG = re.compile(r"<(\w+):([^<>]*)>")
_A1111_USED = {
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "Lora hashes",
    "TI hashes",
    "Version",
}


def _a1111_prompt(text: str, out: ForeignSettings, lora_hashes: dict[str, str]) -> str:
    """`text` without its extra-network tags; `<lora:>`/`<lyco:>` tags become LoRAs (with the
    hash `Lora hashes` gives their name), others are listed."""
    kept: list[str] = []
    pos = 0
    for tag in _TAG.finditer(text):
        kept.append(text[pos : tag.start()])
        pos = tag.end()
        kind = tag.group(1).lower()
        if kind not in ("lora", "lyco"):
            out.unmapped.append(f"{tag.group(0)}: {kind} networks are not supported; dropped")
            continue
        try:
            spec = parse_prompt(f"<lora:{tag.group(2)}>").loras[0]
        except PromptSyntaxError as exc:
            out.unmapped.append(f"{tag.group(0)}: {exc}; dropped")
            continue
        alias = spec.name.replace(":", "").replace(",", "")
        found = (lora_hashes[alias],) if alias in lora_hashes else ()
        # A1111: a bare tag is 1, also one with only options (<lora:x:lbw=OUTD>)
        weight = 1.0 if spec.weight is None else with_components(spec.weight, 1.0)
        out.loras.append(ForeignLoRA(ForeignRef(spec.name, found), weight))
    kept.append(text[pos:])
    return re.sub(r"\s*,(\s*,)+", ",", " ".join("".join(kept).split())).strip(" ,")


def _hash_pairs(params: dict[str, str], key: str, out: ForeignSettings) -> list[tuple[str, str]]:
    if key not in params:
        return []
    try:
        return parse_hash_list(params[key], key)
    except InfotextError as exc:
        out.unmapped.append(f"{exc}; its hashes are not used")
        return []


def read_a1111(text: str) -> ForeignSettings:
    info = parse_infotext(text)
    out = ForeignSettings("A1111")
    p = info.params
    lora_hashes = dict(_hash_pairs(p, "Lora hashes", out))
    ti_hashes = _hash_pairs(p, "TI hashes", out)
    out.prompt = _a1111_prompt(info.prompt, out, lora_hashes)
    out.negative_prompt = info.negative_prompt or None
    if info.negative_prompt and _TAG.search(info.negative_prompt):
        out.unmapped.append("the negative prompt's <…> tags are not read (A1111 ignores them)")
    if "Steps" in p:
        out.steps = _int(p["Steps"], "Steps", out, 1, 1000)
    if "CFG scale" in p:
        out.cfg = _float(p["CFG scale"], "CFG scale", out)
    if "Seed" in p:
        out.seed = _int(p["Seed"], "Seed", out, 0, MAX_SEED)
    if "Size" in p:
        width, _, height = p["Size"].partition("x")
        _size(width, height, out)
    if "Sampler" in p:
        schedule = p.get("Schedule type")
        ours = scheduler_from_a1111(p["Sampler"], schedule)
        _scheduler(ours, p["Sampler"] + (f" ({schedule})" if schedule else ""), out)
    if "Model" in p or "Model hash" in p:
        hashes = (p["Model hash"],) if p.get("Model hash") else ()
        out.model = ForeignRef(p.get("Model", ""), hashes)
    out.embeddings = [ForeignRef(name, (digest,)) for name, digest in ti_hashes]
    out.unmapped += [
        f"{k}: {v} (no counterpart here)" for k, v in p.items() if k not in _A1111_USED
    ]
    return out


# --- InvokeAI -------------------------------------------------------------------------------

INVOKEAI_SCHEDULERS = {
    "euler": "euler",
    "euler_a": "euler_a",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_k": "dpmpp_2m_karras",
    "ddim": "ddim",
    "lcm": "lcm",
    "tcd": "tcd",
}
_INVOKEAI_USED = {
    "generation_mode",
    "positive_prompt",
    "negative_prompt",
    "width",
    "height",
    "seed",
    "cfg_scale",
    "steps",
    "scheduler",
    "model",
    "loras",
    "app_version",
    "rand_device",
}
#: settings InvokeAI writes with a value that changes nothing (no ControlNets, CFG rescale 0…)
_INVOKEAI_NEUTRAL: dict[str, tuple[object, ...]] = {
    "controlnets": ([],),
    "ipAdapters": ([],),
    "t2iAdapters": ([],),
    "cfg_rescale_multiplier": (0, 0.0),
    "clip_skip": (0,),
    "seamless_x": (False,),
    "seamless_y": (False,),
    "hrf_enabled": (False,),
}
# compel's weighting (`word+`, `(words)1.3`, `.and()`), which our prompts would read as text
_COMPEL = re.compile(r"[\w)][+-]+(?=[\s,.)]|$)|\)\d|\.(?:and|blend|swap)\(")


def _invokeai_ref(model: object) -> ForeignRef | None:
    """InvokeAI 4+: {key, hash, name, base, type}; 3.x: {model_name, base_model}."""
    if not isinstance(model, dict):
        return None
    name = model.get("name") or model.get("model_name")
    digest = model.get("hash")
    hashes = (digest.removeprefix("blake3:"), digest) if isinstance(digest, str) else ()
    return ForeignRef(str(name or ""), hashes) if name or hashes else None


def read_invokeai(data: dict[str, Any]) -> ForeignSettings:
    out = ForeignSettings("InvokeAI")
    out.prompt = str(data.get("positive_prompt") or "")
    out.negative_prompt = str(data.get("negative_prompt") or "") or None
    for label, text in (("prompt", out.prompt), ("negative prompt", out.negative_prompt or "")):
        if _COMPEL.search(text):
            out.unmapped.append(
                f"the {label} uses InvokeAI's weighting syntax (word+, (words)1.2, .and()); "
                "here it is read as A1111 syntax, so those weights are plain text"
            )
    mode = str(data.get("generation_mode", "txt2img"))
    if not mode.endswith("txt2img"):
        out.unmapped.append(f"generation mode {mode}: the input image is not in the PNG")
    if "width" in data or "height" in data:
        _size(data.get("width"), data.get("height"), out)
    if "seed" in data:
        out.seed = _int(data["seed"], "seed", out, 0, MAX_SEED)
    if "steps" in data:
        out.steps = _int(data["steps"], "steps", out, 1, 1000)
    if "cfg_scale" in data:
        out.cfg = _float(data["cfg_scale"], "cfg_scale", out)
    if "scheduler" in data:
        name = str(data["scheduler"])
        _scheduler(INVOKEAI_SCHEDULERS.get(name), name, out)
    out.model = _invokeai_ref(data.get("model"))
    for entry in data.get("loras") or []:
        ref = None
        if isinstance(entry, dict):
            ref = _invokeai_ref(entry.get("model") or entry.get("lora"))
        if ref is None:
            out.unmapped.append(f"LoRA entry {str(entry)[:80]} is not readable; dropped")
            continue
        weight = _strength(entry.get("weight", 1.0), ref.name, out)
        if weight is not None:
            out.loras.append(ForeignLoRA(ref, weight))
    for key, value in data.items():
        if key in _INVOKEAI_USED or value in _INVOKEAI_NEUTRAL.get(key, ()) or value is None:
            continue
        style = key in ("positive_style_prompt", "negative_style_prompt")
        if style and value in ("", out.prompt, out.negative_prompt):
            continue  # SDXL's second prompt, the same text: what we give both encoders
        out.unmapped.append(f"{key}: {str(value)[:80]} (no counterpart here)")
    return out


# --- ComfyUI --------------------------------------------------------------------------------

#: (sampler_name, scheduler) -> ours
COMFYUI_SAMPLERS = {
    ("euler", "normal"): "euler",
    ("euler_ancestral", "normal"): "euler_a",
    ("dpmpp_2m", "normal"): "dpmpp_2m",
    ("dpmpp_2m", "karras"): "dpmpp_2m_karras",
    ("ddim", "normal"): "ddim",
    ("ddim", "ddim_uniform"): "ddim",
    ("lcm", "normal"): "lcm",
    ("lcm", "sgm_uniform"): "lcm",
}
_SAMPLER_NODES = ("KSampler", "KSamplerAdvanced")
_CHECKPOINT_NODES = ("CheckpointLoaderSimple", "CheckpointLoader")
_LORA_NODES = ("LoraLoader", "LoraLoaderModelOnly")
#: the most nodes followed from the sampler back to the checkpoint (a loop is an error)
MAX_CHAIN = 256


class _Graph:
    def __init__(self, nodes: dict[str, Any]) -> None:
        self.nodes = {k: v for k, v in nodes.items() if isinstance(v, dict)}

    def node(self, link: object) -> tuple[str, dict[str, Any]] | None:
        """The node a `[id, output]` link points to."""
        if isinstance(link, list) and len(link) == 2 and str(link[0]) in self.nodes:
            node = self.nodes[str(link[0])]
            return node.get("class_type", ""), node.get("inputs") or {}
        return None


def _comfy_text(graph: _Graph, link: object, what: str, out: ForeignSettings) -> str | None:
    found = graph.node(link)
    if found is None:
        return None
    kind, inputs = found
    if kind != "CLIPTextEncode" or not isinstance(inputs.get("text"), str):
        out.unmapped.append(f"the {what} comes from a {kind or 'missing'} node; not read")
        return None
    return inputs["text"]


def _comfy_models(graph: _Graph, link: object, out: ForeignSettings) -> None:
    """Follow the sampler's `model` input back through LoRA loaders to the checkpoint."""
    chain: list[ForeignLoRA] = []
    for _ in range(MAX_CHAIN):
        found = graph.node(link)
        if found is None:
            out.unmapped.append("the sampler's model comes from no node; model not read")
            break
        kind, inputs = found
        if kind in _CHECKPOINT_NODES:
            out.model = ForeignRef(_stem(str(inputs.get("ckpt_name", ""))))
            break
        if kind in _LORA_NODES:
            name = _stem(str(inputs.get("lora_name", "")))
            unet = _strength(inputs.get("strength_model", 1.0), name, out)
            te = 0.0
            if kind == "LoraLoader":
                te = _strength(inputs.get("strength_clip", 1.0), name, out)
            if unet is not None and te is not None:
                chain.append(ForeignLoRA(ForeignRef(name), _weight(unet, te)))
            link = inputs.get("model")
            continue
        out.unmapped.append(f"{kind} between the checkpoint and the sampler; not applied")
        link = inputs.get("model")
    else:
        raise RecallError(f"ComfyUI graph: no checkpoint within {MAX_CHAIN} nodes (a loop?)")
    out.loras = list(reversed(chain))  # checkpoint first, as they are applied


def read_comfyui(data: dict[str, Any]) -> ForeignSettings:
    out = ForeignSettings("ComfyUI")
    graph = _Graph(data)
    samplers = sorted(
        ((k, n) for k, n in graph.nodes.items() if n.get("class_type") in _SAMPLER_NODES),
        key=lambda item: int(item[0]) if item[0].isdigit() else 0,
    )
    if not samplers:
        raise RecallError("ComfyUI graph without a KSampler; nothing to recall")
    if len(samplers) > 1:
        others = ", ".join(k for k, _ in samplers[1:])
        out.unmapped.append(f"further sampler nodes ({others}, e.g. a hires pass) are not read")
    kind, inputs = samplers[0][1]["class_type"], samplers[0][1].get("inputs") or {}
    seed = inputs.get("seed", inputs.get("noise_seed"))
    if seed is not None:
        out.seed = _int(seed, "seed", out, 0, MAX_SEED)
    if "steps" in inputs:
        out.steps = _int(inputs["steps"], "steps", out, 1, 1000)
    if "cfg" in inputs:
        out.cfg = _float(inputs["cfg"], "cfg", out)
    sampler, schedule = str(inputs.get("sampler_name", "")), str(inputs.get("scheduler", ""))
    _scheduler(COMFYUI_SAMPLERS.get((sampler, schedule)), f"{sampler} ({schedule})", out)
    if str(inputs.get("denoise", 1)) not in ("1", "1.0"):
        out.unmapped.append(f"denoise {inputs['denoise']}: the input image is not in the PNG")
    if kind == "KSamplerAdvanced":
        out.unmapped.append("KSamplerAdvanced's start/end steps and noise settings are not read")
    out.prompt = _comfy_text(graph, inputs.get("positive"), "prompt", out) or ""
    out.negative_prompt = _comfy_text(graph, inputs.get("negative"), "negative prompt", out) or None
    latent = graph.node(inputs.get("latent_image"))
    if latent is not None and latent[0] in ("EmptyLatentImage", "EmptySD3LatentImage"):
        _size(latent[1].get("width"), latent[1].get("height"), out)
    else:
        out.unmapped.append("the latent is no Empty Latent Image (img2img?); size not read")
    _comfy_models(graph, inputs.get("model"), out)
    return out
