"""A1111 prompt syntax for LoRAs: `<lora:name>`, `<lora:name:weight>` and
`<lora:name:te_weight:unet_weight>`. Tags are cut out of the text the encoder sees."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from loraworks.generation.errors import PromptSyntaxError
from loraworks.generation.request import ComponentWeights, LoRASpec

_OPEN = "<lora:"
_SPACES = re.compile(r"\s+")
_DANGLING_COMMAS = re.compile(r"^[\s,]+|[\s,]+$|(?<=,)[\s,]*,")


@dataclass(frozen=True)
class ParsedPrompt:
    text: str  # what the text encoder gets
    loras: list[LoRASpec]


def _number(token: str, tag: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PromptSyntaxError(f"{tag}: weight {token!r} is not a number")
    return value


def _spec(body: str) -> LoRASpec:
    tag = f"{_OPEN}{body}>"
    name, *weights = (part.strip() for part in body.split(":"))
    if not name:
        raise PromptSyntaxError(f"{tag}: missing LoRA name (write <lora:name:0.8>)")
    if len(weights) > 2:
        raise PromptSyntaxError(f"{tag}: at most two weights (<lora:name:te_weight:unet_weight>)")
    numbers = [_number(w, tag) for w in weights]
    if not numbers:
        return LoRASpec(name=name)
    if len(numbers) == 1:
        return LoRASpec(name=name, weight=numbers[0])
    te, unet = numbers
    return LoRASpec(
        name=name, weight=ComponentWeights(unet=unet, text_encoder=te, text_encoder_2=te)
    )


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Split `prompt` into encoder text and the LoRAs its tags name (in order)."""
    pieces: list[str] = []
    loras: list[LoRASpec] = []
    pos = 0
    while (start := prompt.find(_OPEN, pos)) != -1:
        end = prompt.find(">", start)
        nested = prompt.find("<", start + 1)
        if end == -1 or (nested != -1 and nested < end):
            snippet = prompt[start : start + 40]
            raise PromptSyntaxError(f"unclosed tag {snippet!r}: add '>' after the weight")
        pieces.append(prompt[pos:start])
        loras.append(_spec(prompt[start + len(_OPEN) : end]))
        pos = end + 1
    pieces.append(prompt[pos:])
    text = _SPACES.sub(" ", " ".join(pieces))
    if loras:
        text = _DANGLING_COMMAS.sub("", text)
    return ParsedPrompt(text=text.strip(), loras=loras)


def parse_lora_option(text: str) -> LoRASpec:
    """A `--lora` command-line value: the inside of a tag, `name[:weight[:unet_weight]]`."""
    return _spec(text.strip())
