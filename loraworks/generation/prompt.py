"""A1111 prompt syntax for LoRAs: `<lora:name>`, `<lora:name:weight>`,
`<lora:name:te_weight:unet_weight>` and the named form `<lora:name:unet=0.8:te=0.5>`; `<lyco:…>`
(the LyCORIS extension's tag, still in many shared prompts) means the same. Tags are cut out of
the text the encoder sees.

Weights follow A1111 (`extra_networks_lora.py`): te = `te=` or the first number; unet = `unet=`,
else the second number, else te; te is 1 when only `unet=` is given. A tag with no number is
the record's default weight (our rule for a LoRA picked without one). `dyn=` (a rank cut-off
for dynamic LoRAs) is refused by name: the engine has no such cut-off.

The LoRA Block Weight extension's options ride on the same tag: `lbw=PRESET` or
`lbw=v1,v2,…` (block weights), `start=`/`stop=` (the steps the LoRA is active in: `5` is a step
number, `0.5` a fraction of the denoising), e.g. `<lora:name:0.8:lbw=OUTD:stop=0.6>`. They
become the weight's options (`loraworks.lora.strength`); a tag with options and no number
keeps the default weight."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from loraworks.generation.errors import PromptSyntaxError
from loraworks.generation.request import LoRASpec
from loraworks.lora import LoRAError, Strength, normalise_strength

_OPEN = re.compile(r"<(lora|lyco):")
_SPACES = re.compile(r"\s+")
_DANGLING_COMMAS = re.compile(r"^[\s,]+|[\s,]+$|(?<=,)[\s,]*,")
_SPACE_BEFORE_COMMA = re.compile(r"\s+,")


@dataclass(frozen=True)
class ParsedPrompt:
    text: str  # what the text encoder gets
    loras: list[LoRASpec]


def _number(token: str, shown: str) -> float:
    try:
        value = float(token)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PromptSyntaxError(f"{shown}: weight {token!r} is not a number")
    return value


def _spec(body: str, shown: str, form: str) -> LoRASpec:
    """The LoRA named by `body` (`name[:weight…]`). Errors quote `shown`, what the user typed,
    and write the syntax as `form` does (`<lora:{}>` in a prompt, `--lora {}` on the CLI)."""
    name, *parts = (part.strip() for part in body.split(":"))
    if not name:
        raise PromptSyntaxError(f"{shown}: missing LoRA name (write {form.format('name:0.8')})")
    named: dict[str, float] = {}
    options: dict[str, object] = {}
    positional: list[float] = []
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            positional.append(_number(part, shown))
            continue
        key = key.strip()
        if key == "dyn":
            raise PromptSyntaxError(f"{shown}: dyn= (a dynamic-rank cut-off) is not supported")
        if key == "step":  # the extension's step=5-10: start=5:stop=10
            first, dash, last = (v.strip() for v in value.partition("-"))
            if not (dash and first.isdigit() and last.isdigit()) or {"start", "stop"} & set(
                options
            ):
                raise PromptSyntaxError(
                    f"{shown}: step= takes two step numbers, e.g. step=5-10 (not with start=/stop=)"
                )
            options.update(start=int(first), stop=int(last))
            continue
        if key not in ("te", "unet", *_OPTIONS) or key in named or _OPTIONS.get(key) in options:
            raise PromptSyntaxError(
                f"{shown}: unknown or repeated {key}= (use te=, unet=, lbw=, start=, stop= "
                "and step=)"
            )
        if key in _OPTIONS:
            options[_OPTIONS[key]] = _option(key, value.strip(), shown)
        else:
            named[key] = _number(value.strip(), shown)
    if len(positional) > 2:
        example = form.format("name:te_weight:unet_weight")
        raise PromptSyntaxError(f"{shown}: at most two weights ({example})")
    if not positional and not named:
        return LoRASpec(name=name, weight=_checked(options, shown) if options else None)
    te = named.get("te", positional[0] if positional else 1.0)
    unet = named.get("unet", positional[1] if len(positional) > 1 else te)
    if te == unet and not options:
        return LoRASpec(name=name, weight=te)
    weight = {"unet": unet, "text_encoder": te, "text_encoder_2": te, **options}
    return LoRASpec(name=name, weight=_checked(weight, shown))


#: tag option → weight option
_OPTIONS = {"lbw": "block_weights", "start": "start", "stop": "stop"}


def _option(key: str, value: str, shown: str) -> object:
    """`lbw=` stays text (a preset name or a vector); a window end is a step number when it
    is all digits, else a fraction."""
    if key == "lbw":
        return value
    return int(value) if value.isdigit() else _number(value, shown)


def _checked(weight: dict, shown: str) -> Strength:
    """The weight's one check, its errors quoting the tag as typed."""
    try:
        return normalise_strength(weight, shown)
    except LoRAError as exc:
        raise PromptSyntaxError(str(exc)) from None


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Split `prompt` into encoder text and the LoRAs its tags name (in order)."""
    pieces: list[str] = []
    loras: list[LoRASpec] = []
    pos = 0
    while (match := _OPEN.search(prompt, pos)) is not None:
        start = match.start()
        end = prompt.find(">", start)
        nested = prompt.find("<", start + 1)
        if end == -1 or (nested != -1 and nested < end):
            snippet = prompt[start : start + 40]
            raise PromptSyntaxError(f"unclosed tag {snippet!r}: add '>' after the weight")
        pieces.append(prompt[pos:start])
        body = prompt[match.end() : end]
        loras.append(_spec(body, f"{match.group(0)}{body}>", "<lora:{}>"))
        pos = end + 1
    pieces.append(prompt[pos:])
    text = _SPACES.sub(" ", " ".join(pieces))
    if loras:  # "a cat <lora:x:1>, b" leaves "a cat , b"
        text = _DANGLING_COMMAS.sub("", _SPACE_BEFORE_COMMA.sub(",", text))
    return ParsedPrompt(text=text.strip(), loras=loras)


def parse_lora_option(text: str) -> LoRASpec:
    """A `--lora` command-line value: the inside of a tag, `name[:weight[:unet_weight]]`;
    errors quote it as typed."""
    return _spec(text.strip(), f"--lora {text}", "--lora {}")


def _number_text(value: float) -> str:
    """`value` as short as it reads back exactly (0.8, 1, 0.35)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def format_lora_tag(name: str, weight: Strength) -> str:
    """The `<lora:…>` tag `parse_prompt` reads back as `name` at `weight`: what infotexts
    write. The one place a tag is written, for every option a weight carries. A1111's tag has
    one text-encoder weight: `te=` is the first text encoder's."""
    if not isinstance(weight, Mapping):
        return f"<lora:{name}:{_number_text(weight)}>"
    parts = [name]
    if "unet" in weight:  # a checked mapping names every component or none (the default)
        te, unet = weight.get("text_encoder", 0.0), weight.get("unet", 0.0)
        parts += [f"te={_number_text(te)}", f"unet={_number_text(unet)}"]
    blocks = weight.get("block_weights")
    if blocks is not None:
        shown = blocks if isinstance(blocks, str) else ",".join(map(_number_text, blocks))
        parts.append(f"lbw={shown}")
    for key in ("start", "stop"):  # a fraction keeps its decimal point: repr(1.0) is "1.0"
        if key in weight:
            parts.append(f"{key}={weight[key]!r}")
    return f"<lora:{':'.join(parts)}>"
