"""JSON from files a user dropped in, parsed only when it is small and shallow enough.

Python's `json` recurses once per nesting level: 100,000 nested arrays (200 KB in a LoRA's
`ss_tag_frequency` or a `.json` sidecar) raise `RecursionError`, which no caller expects. The
nesting is measured first, without recursion, and a text too deep or too large is refused with
a `ValueError` like any other malformed JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: deeper than anything a model file or sidecar legitimately holds, far below the recursion limit
MAX_DEPTH = 64
#: strings (skipped whole, escapes included) and the brackets that nest
_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_OPENING = frozenset(b"[{")


class JSONLimitError(ValueError):
    """The text is larger or nested deeper than the caller allows."""


def nesting(raw: bytes, limit: int) -> int:
    """How deeply `raw` nests, counted up to `limit + 1` (then it stops reading)."""
    depth = deepest = 0
    for token in _TOKENS.finditer(raw):
        first = token.group()[0]
        if first in _OPENING:
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        elif first != ord('"'):
            depth -= 1
    return deepest


def loads(text: str | bytes, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)` for a text of at most `max_bytes` nested at most `max_depth` deep."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise JSONLimitError(f"{len(raw):,} bytes of JSON, over the {max_bytes:,}-byte limit")
    if nesting(raw, max_depth) > max_depth:
        raise JSONLimitError(f"JSON nested more than {max_depth} levels deep")
    return json.loads(raw)
