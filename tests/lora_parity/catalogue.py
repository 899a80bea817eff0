"""Every LoRA producer the parity suite knows, by name, and the (producer, base) cases."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from tests.fixtures.models import BASES
from tests.lora_parity import producers as P


def _diffusers(base: str, folder: Path, kind: str, style: str) -> P.Produced:
    return next(p for p in P.diffusers_files(base, kind, folder) if p.kind.endswith(style))


def _with_kind(factory, kind: str) -> Callable[[str, Path], P.Produced]:
    return lambda base, folder: factory(base, kind, folder)


FACTORIES: dict[str, Callable[[str, Path], P.Produced]] = {
    **{f"lycoris_{k}": _with_kind(P.lycoris_file, k) for k in P.LYCORIS_KINDS},
    **{f"peft_{k}": _with_kind(P.peft_folder, k) for k in P.PEFT_KINDS},
    "diffusers_lora": partial(_diffusers, kind="lora", style="diffusers"),
    "diffusers_lora_peft_keys": partial(_diffusers, kind="lora", style="peft_keys"),
    "diffusers_dora": partial(_diffusers, kind="dora", style="peft_keys"),
    "diffusers_rslora": partial(_diffusers, kind="rslora", style="peft_keys"),
    "diffusers_attn_procs": P.attn_procs_file,
    "lcm_lora": P.lcm_lora_file,
    **{k: _with_kind(P.kohya_hand_file, k) for k in P.HAND_TARGETS},
}


def cases():
    """(factory, base) pairs: each factory on one base by default, the rest `slow`."""
    for i, name in enumerate(FACTORIES):
        for j, base in enumerate(BASES):
            marks = () if j == i % len(BASES) else (pytest.mark.slow,)
            yield pytest.param((name, base), id=f"{name}-{base}", marks=marks)
