"""Main models loaded through the cache: room is made before the load (the newcomer's size read
from its files' headers), a model over the whole budget is loaded alone with a warning, and each
component is reported to whoever listens (the CLI's bar)."""

from __future__ import annotations

import logging

import pytest

from loraworks.generation import LoadEvent, StepEvent, reporting_loads
from loraworks.generation.cache import GIB, ModelCache, cache_for, pipeline_bytes
from loraworks.generation.events import load_listener
from loraworks.models import ModelManager
from tests.fixtures.models import build_pipeline
from tests.generation.conftest import FakePipe, fake_record


def test_room_is_made_before_the_load_for_the_size_the_headers_give():
    """The old model is gone before the new one is read: never both in memory at once."""
    resident_while_loading: list[int] = []

    def load(record, progress, originals):
        resident_while_loading.append(len(cache._models))
        return FakePipe(1000)

    cache = ModelCache(load, 1000 * 4 / GIB, max_loras=2, estimate=lambda record: 4000)
    cache.model(fake_record("a", "main"))
    cache.model(fake_record("b", "main"))
    assert resident_while_loading == [0, 0]


def test_a_model_over_the_whole_budget_loads_alone_with_a_warning(caplog):
    cache = ModelCache(
        lambda record, progress, originals: FakePipe(1000),
        1000 * 4 / GIB,
        2,
        estimate=lambda r: 8000,
    )
    small = ModelCache(
        lambda record, progress, originals: FakePipe(1000), 1.0, 2, estimate=lambda r: 4000
    )
    with caplog.at_level(logging.WARNING, logger="loraworks.generation.cache"):
        small.model(fake_record("fits", "main"))
        assert caplog.records == []
        cache.model(fake_record("a", "main"))
        cache.model(fake_record("huge", "main"))
    assert [m.key for m in cache._models.values()] == ["huge"]
    (warning,) = [r.getMessage() for r in caplog.records if "huge" in r.getMessage()]
    assert "'huge' needs about 0.0 GiB, more than [cache] ram_budget_gb = 0.0" in warning


@pytest.fixture
def two_model_root(tmp_path):
    """A root whose RAM budget holds one of its two tiny SD1 models in bf16 (not two, and not
    one in the files' fp32)."""
    for seed in (0, 1):
        pipe = build_pipeline("sd1", tmp_path / "work", seed=seed)
        pipe.save_pretrained(tmp_path / f"tiny-{seed}")
    budget = 0.75 * pipeline_bytes(pipe) / GIB
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text(
        f'[compute]\ndevice = "cpu"\nprecision = "bfloat16"\n[cache]\nram_budget_gb = {budget}\n'
    )
    mm = ModelManager.open(root, scan=False)
    first, second = (mm.install(tmp_path / f"tiny-{s}", type="main") for s in (0, 1))
    yield mm, first, second
    mm.close()


def test_a_root_evicts_before_it_loads_and_reports_each_component(
    two_model_root, monkeypatch, caplog
):
    """With the real loader and estimate: the models are planned at their bf16 size (in the
    files' fp32 one each would be over the budget, with a warning)."""
    mm, first, second = two_model_root
    cache = cache_for(mm)
    resident_while_loading: list[list[str]] = []
    load_main = mm.load_main

    def watched(record, **kwargs):
        resident_while_loading.append([m.key for m in cache._models.values()])
        return load_main(record, **kwargs)

    monkeypatch.setattr(mm, "load_main", watched)
    events: list[LoadEvent] = []
    with reporting_loads(events.append), caplog.at_level(logging.WARNING):
        cache.model(first)
        cache.model(second)
    assert resident_while_loading == [[], []]
    assert [r for r in caplog.records if r.name == "loraworks.generation.cache"] == []
    assert [m.key for m in cache._models.values()] == [second.key]
    components = ["text_encoder", "vae", "unet"]
    assert events == [LoadEvent(c, i, 3) for _ in range(2) for i, c in enumerate(components)]
    assert load_listener.get() is None


def test_the_cli_bar_listens_to_model_loads():
    from loraworks.cli.generate import _progress_bar

    with _progress_bar() as on_event:
        assert load_listener.get() is on_event
        on_event(LoadEvent("unet", 2, 3))
        on_event(StepEvent(step=1, total=2, elapsed=0.1))
    assert load_listener.get() is None
