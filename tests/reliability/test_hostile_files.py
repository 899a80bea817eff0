"""Hostile and broken LoRA files end in a typed, readable refusal — from `load_lora`, from
`mm.install`, from the autoimport scan and from the API — never a crash, hang, patched model,
half-written record or executed payload (see tests/reliability/hostile.py for the mutations)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraworks.models import ModelManager
from tests.reliability.hostile import MUTATIONS, HostileCase, all_cases
from tests.reliability.outcomes import (
    OK,
    REFUSED_APPLY,
    REFUSED_LOAD,
    Failure,
    api_outcome,
    engine_outcome,
    install_outcome,
    scan_outcomes,
)

NAMES = sorted(MUTATIONS)
FUZZ = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _case(mutations) -> st.SearchStrategy[HostileCase]:
    return st.builds(HostileCase, st.sampled_from(mutations), st.integers(0, 10**6))


@pytest.mark.timeout(120)
@FUZZ
@given(case=_case(NAMES))
def test_engine_refuses_or_loads_cleanly(case, fp16_model, tmp_path_factory):
    written = case.write(tmp_path_factory.mktemp("hostile", numbered=True))
    assert engine_outcome(case, written, fp16_model) in (OK, REFUSED_LOAD, REFUSED_APPLY)


def test_every_mutation_is_refused_at_its_stage(fp16_model, tmp_path):
    """Each must-refuse mutation really is refused (the fuzz above could pass on OKs only)."""
    seen: dict[str, set[str]] = {}
    for case in all_cases(len(MUTATIONS) * 3):
        outcome = engine_outcome(case, case.write(tmp_path), fp16_model)
        seen.setdefault(case.mutation, set()).add(outcome)
    for name in NAMES:
        stage = MUTATIONS[name][1]
        if stage == "load":
            assert seen[name] == {REFUSED_LOAD}, name
        elif stage == "apply":
            assert OK not in seen[name], name


@pytest.mark.timeout(180)
def test_install_refuses_without_leftovers(manager, fp16_model, tmp_path):
    counts: dict[str, int] = {}
    for case in all_cases(len(NAMES) * 2 * 2):
        written = case.write(tmp_path / "src")
        engine = engine_outcome(case, written, fp16_model)
        outcome = install_outcome(case, written, manager, engine)
        counts[outcome] = counts.get(outcome, 0) + 1
    assert counts.get(REFUSED_LOAD, 0) > 30


@pytest.mark.timeout(180)
def test_autoimport_scan_records_every_refusal(manager, fp16_model):
    folder = manager.paths.autoimport_lora / "hostile"
    batch = []
    for case in all_cases(len(MUTATIONS) * 2, start=1000):
        written = case.write(folder)
        batch.append((case, written, engine_outcome(case, written, fp16_model)))
    outcomes = scan_outcomes(batch, manager)
    failures = [str(o) for o in outcomes.values() if isinstance(o, Failure)]
    assert failures == []
    assert list(outcomes.values()).count("error record") > 20


@pytest.mark.timeout(180)
def test_api_install_answers_4xx_and_keeps_serving(client, fp16_model, tmp_path):
    statuses = set()
    for case in all_cases(len(MUTATIONS), start=2000):
        written = case.write(tmp_path)
        statuses.add(api_outcome(case, written, client))
    assert "HTTP 400" in statuses or "HTTP 422" in statuses


# --- the bugs the fuzzing found, one precise test each -------------------------------------


def test_huge_alpha_is_refused_not_patched_to_inf(fp16_model, tmp_path):
    case = HostileCase("huge_alpha", 1)  # alpha 3e38: finite, but W + ΔW overflows fp16
    engine_outcome(case, case.write(tmp_path), fp16_model)


def test_4d_up_on_2d_down_is_a_lora_error(fp16_model, tmp_path):
    case = HostileCase("odd_layer_kinds", 2)  # lora_up (32, 4, 2, 2), lora_down (4, 768)
    engine_outcome(case, case.write(tmp_path), fp16_model)


def test_broken_file_moved_in_the_drop_folder_is_recorded_at_its_new_path(tmp_path):
    mm = ModelManager.open(tmp_path / "root")
    first = mm.paths.autoimport_lora / "a" / "broken.safetensors"
    first.parent.mkdir()
    first.write_bytes(b"0123456789")
    mm.scan()
    first.unlink()
    mm.scan()  # its record goes `missing`
    moved = mm.paths.autoimport_lora / "b" / "broken-again.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(b"0123456789")  # same bytes, so the scan takes it for a move
    mm.scan()
    records = mm.list()
    mm.close()
    assert [(Path(r.path), r.status) for r in records] == [(moved, "error")]
