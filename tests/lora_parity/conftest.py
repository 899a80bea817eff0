"""One folder and one registry of produced LoRA files for the whole parity suite, so the
base-detection tests reuse the files the parity tests already wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def lora_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora_parity")


@pytest.fixture(scope="session")
def produced_files() -> dict[tuple[str, str], Path]:
    """(factory name, base) -> the file or folder that factory wrote."""
    return {}


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Tiny models are dispatch-bound: a second thread buys nothing, and on a shared machine
    oversubscribed threads made these tests ten times slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
