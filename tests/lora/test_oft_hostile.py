"""OFT / BOFT files that are wrong in every way we could think of: each is refused with a
`LoRAError` (a `ValueError`) before any weight changes, or patches to finite weights that
restore bit for bit. Never another exception, never a half-patched model."""

from __future__ import annotations

import pytest
import torch

from loraworks.lora import LoRAError, LoRAFormatError, apply_loras, load_lora
from tests.fixtures.models import build_components
from tests.lora.util import assert_bit_exact, kohya_name, snapshot, targets

BASE = "sd1"


def _oft_file(components, blocks_for, extra=None) -> dict[str, torch.Tensor]:
    """One OFT layer per attention linear; `blocks_for(out)` draws its `oft_blocks`."""
    sd: dict[str, torch.Tensor] = {}
    for comp, name, _, mod in targets(components):
        key = kohya_name(BASE, comp, name)
        sd[key + ".oft_blocks"] = blocks_for(mod.weight.shape[0])
        sd[key + ".alpha"] = torch.tensor(0.0)
        for leaf, value in (extra or {}).items():
            sd[key + "." + leaf] = value(mod.weight.shape[0])
    return sd


def _blocks(out: int, b: int = 4) -> torch.Tensor:
    return torch.randn(out // b, b, b) * 0.1


HOSTILE = {
    "nan": lambda out: torch.full((out // 4, 4, 4), float("nan")),
    "inf": lambda out: torch.full((out // 4, 4, 4), float("inf")),
    "huge": lambda out: torch.full((out // 4, 4, 4), 6e4).half(),
    "wrong_rows": lambda out: torch.randn(out // 4 + 1, 4, 4),
    "not_square": lambda out: torch.randn(out // 4, 4, 3),
    "two_dims": lambda out: torch.randn(out, 4),
    "empty": lambda out: torch.zeros(0, 4, 4),
    "integers": lambda out: torch.ones(out // 4, 4, 4, dtype=torch.int64),
    "boft_odd_block": lambda out: torch.randn(1, out // 3, 3, 3),
    "boft_too_many_stages": lambda out: torch.randn(9, out // 4, 4, 4),
    "boft_wrong_rows": lambda out: torch.randn(2, out // 4 + 2, 4, 4),
}
EXTRA = {
    "rescale_wrong_size": {"rescale": lambda out: torch.ones(out + 1, 1)},
    "rescale_nan": {"rescale": lambda out: torch.full((out, 1), float("nan"))},
    "rescale_huge": {"rescale": lambda out: torch.full((out, 1), 1e38)},
    "alpha_nan": {"alpha": lambda out: torch.tensor(float("nan"))},
}


def _outcome(components, sd, dtype) -> str:
    for m in components.as_mapping().values():
        m.to(dtype)
    snap = snapshot(components)
    try:
        lora = load_lora((sd, {}))
    except LoRAFormatError:
        assert_bit_exact(components, snap)
        return "refused at load"
    try:
        with apply_loras(components.as_mapping(), [(lora, 1.0)]):
            patched = snapshot(components)
            assert all(t.isfinite().all() for t in patched.values() if t.is_floating_point())
    except LoRAError:
        assert_bit_exact(components, snap)
        return "refused at apply"
    assert_bit_exact(components, snap)
    return "applied"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", sorted(HOSTILE) + sorted(EXTRA))
def test_hostile_oft_files_are_refused_or_patch_finitely(case, dtype):
    components = build_components(BASE)
    if case in HOSTILE:
        sd = _oft_file(components, HOSTILE[case])
    else:
        sd = _oft_file(components, _blocks, EXTRA[case])
    outcome = _outcome(components, sd, dtype)
    # huge blocks still make a rotation; a huge rescale may stay finite in fp32: either may
    # apply (to finite weights, checked above); every other case must be refused
    assert outcome != "applied" or case in {"huge", "rescale_huge"}, outcome


def test_a_sound_oft_and_boft_file_apply():
    components = build_components(BASE)
    assert _outcome(components, _oft_file(components, _blocks), torch.float32) == "applied"
    boft = _oft_file(components, lambda out: torch.randn(2, out // 4, 4, 4) * 0.1)
    assert _outcome(components, boft, torch.float16) == "applied"
