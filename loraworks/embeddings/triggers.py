"""Finding embeddings in prompt text, A1111- and ComfyUI-style:

* a trigger (by default the file name stem) as a whole word or phrase, matched without regard
  to case; where triggers overlap, the longest wins (``bad hands v2`` before ``bad hands``);
* ``embedding:name`` (ComfyUI), `name` being the record's name or a trigger, optionally with
  its file suffix; the longest installed name that follows wins, so names with spaces work.

The engine's rule for a trigger that is also a word: the embedding wins (A1111), and
generation warns when the word is one the tokenizer knows (see docs/embeddings.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Generic, TypeVar

from .errors import EmbeddingNotFound, TooManyEmbeddings

T = TypeVar("T")
PREFIX = "embedding:"
#: embedding uses one prompt may hold: each takes token slots and an encoder row may be added
#: per 75 of them; far above any real prompt, far below a pasted list that would stall the queue
MAX_USES = 64
_SUFFIX = r"(?:\.(?:pt|bin|safetensors))?"
_NAMED = re.compile(r"(?<![\w])embedding:(\S*)", re.IGNORECASE)


def _alternation(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


class Lexicon(Generic[T]):
    """Triggers and names → values (records, embeddings); `split` cuts text at each use."""

    def __init__(self, triggers: Mapping[str, T], names: Mapping[str, T]) -> None:
        self._triggers = {k.casefold(): v for k, v in triggers.items() if k.strip()}
        self._names = {k.casefold(): v for k, v in {**triggers, **names}.items() if k.strip()}
        parts = []
        if self._names:
            parts.append(rf"embedding:(?P<named>{_alternation(list(self._names))}){_SUFFIX}")
        if self._triggers:
            parts.append(rf"(?P<bare>{_alternation(list(self._triggers))})")
        self._pattern = (
            re.compile(rf"(?<![\w])(?:{'|'.join(parts)})(?![\w])", re.IGNORECASE) if parts else None
        )

    def __bool__(self) -> bool:
        return bool(self._names)

    def split(self, text: str) -> list[str | T]:
        """`text` as its plain pieces and the values used between them, in order. An
        `embedding:` that names nothing known raises `EmbeddingNotFound`."""
        out: list[str | T] = []
        pos = 0
        for match in self._pattern.finditer(text) if self._pattern else ():
            out.append(text[pos : match.start()])
            named = match.group("named")
            out.append(
                self._names[named.casefold()]
                if named is not None
                else self._triggers[match.group("bare").casefold()]
            )
            pos = match.end()
        out.append(text[pos:])
        for piece in out:
            if isinstance(piece, str) and (unknown := _NAMED.search(piece)):
                known = sorted(self._names)[:8]
                hint = f" (installed: {', '.join(known)})" if known else " (none is installed)"
                raise EmbeddingNotFound(
                    f"'{unknown.group(0)}' names no installed embedding{hint}; write "
                    "embedding:<name> or the embedding's trigger"
                )
        return [p for p in out if not isinstance(p, str) or p]

    def used(self, text: str) -> list[T]:
        """The values `text` uses, in order; more than `MAX_USES` raises `TooManyEmbeddings`."""
        found = [p for p in self.split(text) if not isinstance(p, str)]
        if len(found) > MAX_USES:
            raise TooManyEmbeddings(
                f"the prompt uses embeddings {len(found)} times; at most {MAX_USES} uses are "
                "allowed in one prompt"
            )
        return found
