"""A1111's emphasis syntax in prompts, so that prompts shared from A1111 and Civitai read as
their authors meant them.

    (word)        weight ×1.1 (nested brackets multiply: ((word)) = ×1.21)
    [word]        weight ÷1.1
    (word:1.3)    weight ×1.3
    \\( \\) \\[ \\] \\\\   the literal character

An unclosed bracket applies to the rest of the prompt, as in A1111. Encoding (see
`conditioning.py`) multiplies each token's hidden state by its weight and rescales the whole
so that its mean is unchanged — A1111's default ("Original") emphasis. A prompt without any of
`()[]\\` never takes this path: its embeddings stay exactly diffusers'.
"""

from __future__ import annotations

import re

ROUND, SQUARE = 1.1, 1 / 1.1

# escapes, brackets, a ":<number>)" closing a weighted group, plain text, a lone colon
_TOKEN = re.compile(
    r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
)


def _is_number(text: str) -> bool:
    """`1.2.3` or `.` also match the weight pattern; such a group is read as text."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def has_emphasis(text: str) -> bool:
    return any(c in text for c in "()[]\\")


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """`text` as (fragment, weight) runs, adjacent runs of equal weight merged."""
    runs: list[list] = []  # [fragment, weight], mutable while brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _TOKEN.finditer(text):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            runs.append([token[1], 1.0])
        elif token == "(":
            open_round.append(len(runs))
        elif token == "[":
            open_square.append(len(runs))
        elif number is not None and open_round and _is_number(number):
            scale(open_round.pop(), float(number))
        elif token == ")" and open_round:
            scale(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            scale(open_square.pop(), SQUARE)
        else:
            runs.append([token, 1.0])
    for start in open_round:
        scale(start, ROUND)
    for start in open_square:
        scale(start, SQUARE)
    merged: list[tuple[str, float]] = []
    for fragment, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + fragment, weight)
        else:
            merged.append((fragment, weight))
    return merged or [("", 1.0)]
