"""The engine's tests run single-threaded: they patch many small tiny-model weights, where
intra-op threads only add synchronisation (on a loaded 2-core machine OpenMP spin-waits made a
tiny-model patch ~100x slower with 2 threads than with 1)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
