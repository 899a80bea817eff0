"""A1111's infotext: the `parameters` PNG text chunk that A1111, Forge, SD.Next, Civitai and
most PNG-info readers read (docs/interop.md). Every PNG carries one beside our JSON recipe.

Layout (A1111's `create_infotext`)::

    <prompt, with <lora:name:weight> tags>
    Negative prompt: <negative prompt>           (only when there is one)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768,
    Model hash: 0123456789, Model: name, Lora hashes: "a: 0123456789ab, b: …", Version: …

The last line is `key: value` pairs joined by ", "; a value holding ',', ':' or a line break
is written as a JSON string (A1111's `quote`). `parse_infotext` reads this layout back, from
any tool that writes it, into text fields; `A1111_SAMPLERS`/`scheduler_from_a1111` map
sampler names both ways.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import loraworks
from loraworks.generation.errors import GenerationError
from loraworks.generation.prompt import format_lora_tag
from loraworks.generation.windows import in_step_numbers, steps_run

if TYPE_CHECKING:  # recipe.py writes the chunk with `format_infotext`
    from loraworks.generation.recipe import Recipe

PARAMETERS_CHUNK = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
#: longer infotexts are refused unread (A1111's are a few KiB)
MAX_INFOTEXT_CHARS = 65536

#: our scheduler -> A1111's sampler and `Schedule type` (1.9+ names). "Uniform" is the model's
#: own sigma spacing (k-diffusion's `get_sigmas`), what our non-Karras schedulers use; DDIM,
#: LCM and TCD take no schedule there ("Automatic").
A1111_SAMPLERS: dict[str, tuple[str, str]] = {
    "euler": ("Euler", "Uniform"),
    "euler_a": ("Euler a", "Uniform"),
    "dpmpp_2m": ("DPM++ 2M", "Uniform"),
    "dpmpp_2m_karras": ("DPM++ 2M", "Karras"),
    "ddim": ("DDIM", "Automatic"),
    "lcm": ("LCM", "Automatic"),
    "tcd": ("TCD", "Automatic"),
}

# Schedule types that mean "the model's own spacing" for A1111's samplers; `None` is an
# infotext without one (A1111 before 1.9, where "DPM++ 2M" was not Karras).
_PLAIN = {None, "Uniform", "Normal", "Automatic"}
_FROM_A1111: dict[str, dict[str | None, str]] = {
    "Euler": dict.fromkeys(_PLAIN, "euler"),
    "Euler a": dict.fromkeys(_PLAIN, "euler_a"),
    "DPM++ 2M": {
        None: "dpmpp_2m",
        "Uniform": "dpmpp_2m",
        "Normal": "dpmpp_2m",
        "Automatic": "dpmpp_2m_karras",  # A1111 1.9+: DPM++ 2M's own schedule is Karras
        "Karras": "dpmpp_2m_karras",
    },
    "DPM++ 2M Karras": {None: "dpmpp_2m_karras", "Karras": "dpmpp_2m_karras"},
    "DDIM": dict.fromkeys((*_PLAIN, "DDIM"), "ddim"),
    "LCM": dict.fromkeys((*_PLAIN, "SGM Uniform"), "lcm"),
    "TCD": dict.fromkeys((*_PLAIN, "SGM Uniform"), "tcd"),
}


def scheduler_from_a1111(sampler: str, schedule: str | None) -> str | None:
    """Our scheduler for A1111's sampler and schedule type; None when we have none like it."""
    return _FROM_A1111.get(sampler.strip(), {}).get(schedule.strip() if schedule else None)


class InfotextError(GenerationError):
    """An infotext that cannot be read (the message says where)."""


@dataclass(frozen=True)
class Infotext:
    """An infotext's parts as text; `params` in the order written."""

    prompt: str
    negative_prompt: str
    params: dict[str, str] = field(default_factory=dict)


def quote(value: object) -> str:
    """A1111's `quote`: plain unless the text holds ',', ':' or a line break."""
    text = str(value)
    if not any(c in text for c in ",:\n"):
        return text
    return json.dumps(text, ensure_ascii=False)


def hash_list(pairs: list[tuple[str, str]]) -> str:
    """`name: hash, …` as A1111 writes `Lora hashes`/`TI hashes` (':' and ',' dropped from
    names so that the list reads back)."""
    return ", ".join(f"{name.replace(':', '').replace(',', '')}: {h}" for name, h in pairs)


def _number(value: float) -> str:
    return f"{value:g}"


def format_infotext(r: Recipe) -> str:
    """The infotext of a recipe: what A1111 would have written for the same image."""
    run = steps_run(r.steps, r.strength or 1.0, r.init_image is not None)  # windows: step numbers
    tags = [format_lora_tag(lora.name, in_step_numbers(lora.weight, run)) for lora in r.loras]
    prompt = ", ".join(part for part in (r.prompt, *tags) if part)
    sampler, schedule = A1111_SAMPLERS.get(r.scheduler, (r.scheduler, "Automatic"))
    params: dict[str, object] = {
        "Steps": r.steps,
        "Sampler": sampler,
        "Schedule type": schedule,
        "CFG scale": _number(r.cfg),
        "Seed": r.seed,
        "Size": f"{r.width}x{r.height}",
        "Model hash": r.model.hashes.get("AutoV2"),
        "Model": r.model.name,
        "Denoising strength": None if r.strength is None else _number(r.strength),
    }
    lora_hashes = [
        (lora.name, lora.hashes["AutoV3"]) for lora in r.loras if "AutoV3" in lora.hashes
    ]
    if lora_hashes:
        params["Lora hashes"] = hash_list(lora_hashes)
    ti_hashes = [(e.name, e.hashes["SHA256"][:12]) for e in r.embeddings if "SHA256" in e.hashes]
    if ti_hashes:
        params["TI hashes"] = hash_list(ti_hashes)
    params["Version"] = f"loraworks-{loraworks.__version__}"
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\n{NEGATIVE_PREFIX} {r.negative_prompt}" if r.negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


# --- reading --------------------------------------------------------------------------------

_KEY = re.compile(r"\s*([A-Za-z][\w \-/+().]*?):\s*")


def _params(line: str) -> dict[str, str] | None:
    """The `key: value, …` pairs of `line`, or None when it is not wholly such a line."""
    out: dict[str, str] = {}
    pos = 0
    decoder = json.JSONDecoder()
    while pos < len(line):
        key = _KEY.match(line, pos)
        if key is None:
            return None
        pos = key.end()
        if line.startswith('"', pos):
            try:
                value, pos = decoder.raw_decode(line, pos)
            except json.JSONDecodeError:
                return None
            if not isinstance(value, str):
                return None
        else:
            end = line.find(",", pos)
            end = len(line) if end == -1 else end
            value, pos = line[pos:end].strip(), end
        out[key.group(1).strip()] = value
        rest = line[pos:].lstrip()
        if rest and not rest.startswith(","):
            return None
        pos = len(line) - len(rest) + 1 if rest else len(line)
    return out


def parse_infotext(text: str) -> Infotext:
    """The prompt, negative prompt and parameters of an A1111-layout infotext. The last line
    is the parameters when it reads as at least three `key: value` pairs (A1111's rule);
    otherwise the text is all prompt."""
    if len(text) > MAX_INFOTEXT_CHARS:
        raise InfotextError(f"infotext of {len(text)} characters (at most {MAX_INFOTEXT_CHARS})")
    if "\0" in text:
        raise InfotextError("infotext holds a NUL character; not an A1111 infotext")
    lines = text.strip().split("\n")
    params = _params(lines[-1]) if lines else None
    if params is not None and len(params) >= 3:
        lines = lines[:-1]
    else:
        params = {}
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith(NEGATIVE_PREFIX) and not negative:
            negative.append(line[len(NEGATIVE_PREFIX) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    return Infotext("\n".join(prompt).strip(), "\n".join(negative).strip(), params)


def parse_hash_list(text: str, label: str) -> list[tuple[str, str]]:
    """`name: hash, …` (`Lora hashes`, `TI hashes`) as (name, hash) pairs."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, digest = item.rpartition(":")
        if not sep or not name.strip() or not re.fullmatch(r"[0-9a-fA-F]{8,64}", digest.strip()):
            raise InfotextError(f"{label}: {item!r} is not 'name: hash'")
        pairs.append((name.strip(), digest.strip().lower()))
    return pairs
