"""Model names: safe to show, to use in prompts (`<lora:name:0.8>`) and as file names."""

from __future__ import annotations

import re

MAX_NAME = 100
_UNSAFE = re.compile(r"[^\w.+ -]+")


def sanitize_name(raw: str) -> str:
    """Keep letters, digits, `_ . + -` and spaces; no separators, no leading dots, no `..`.

    The result can never name a path outside the folder it is joined to.
    """
    name = _UNSAFE.sub("-", raw.replace("\\", "/").split("/")[-1])
    name = re.sub(r"\.{2,}", ".", name).strip(" .-")
    return name[:MAX_NAME].strip(" .-") or "model"


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`… — a clash gets a suffix, not an error."""
    folded = {t.casefold() for t in taken}
    if name.casefold() not in folded:
        return name
    n = 2
    while f"{name}-{n}".casefold() in folded:
        n += 1
    return f"{name}-{n}"
