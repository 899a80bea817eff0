"""Fixtures for the reliability suite: a tiny fp16 SD1 model to patch, an isolated models root
and an API client on it (the queue worker is not started: no generation is needed here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from loraworks.models import ModelManager
from loraworks.server.app import create_app
from tests.fixtures.models import build_components
from tests.reliability.outcomes import Model
from tests.server.conftest import LOCAL_URL


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORAWORKS_ROOT", raising=False)


@pytest.fixture(scope="module")
def fp16_model() -> Model:
    components = build_components("sd1").as_mapping()
    for module in components.values():
        module.half()
    return Model.of(components)


@pytest.fixture(scope="module")
def manager(tmp_path_factory) -> Iterator[ModelManager]:
    mm = ModelManager.open(tmp_path_factory.mktemp("root"))
    yield mm
    mm.close()


def _no_generation(*args, **kwargs):
    raise AssertionError("these tests do not generate")


@pytest.fixture(scope="module")
def client(manager) -> Iterator[TestClient]:
    app = create_app(manager, start_worker=False, generate=_no_generation)
    with TestClient(app, raise_server_exceptions=False, base_url=LOCAL_URL) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def sd1_root(tmp_path_factory) -> Iterator[ModelManager]:
    """Tiny SD1 model + kohya and LyCORIS LoRAs (tests/reliability/root.py), built once."""
    from tests.reliability.root import build_sd1_root

    mm = build_sd1_root(tmp_path_factory.mktemp("sd1root"), tmp_path_factory.mktemp("sd1work"))
    yield mm
    mm.close()
