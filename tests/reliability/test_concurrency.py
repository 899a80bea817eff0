"""8 concurrent API requests with different LoRA sets on one model: each image is
pixel-identical to the same request run alone, and its recipe names exactly its own LoRAs."""

from __future__ import annotations

import numpy as np
import pytest

from loraworks.server.app import create_app
from tests.reliability.concurrent import mismatches, run_concurrently
from tests.server.conftest import live_server

#: one LoRA set per request: none, single, stacks, negative and per-component weights
LORA_SETS: list[list[tuple[str, object]]] = [
    [],
    [("k0", 1.0)],
    [("k1", 0.8), ("ly0", 1.0)],
    [("k2", 0.5), ("k3", -0.7)],
    [("ly1", 1.0)],
    [("k0", 0.6), ("k1", 0.6), ("k2", 0.6)],
    [("ly0", -1.0), ("ly1", 0.5)],
    [("k3", {"unet": 1.0, "text_encoder": 0.0})],
]


@pytest.mark.timeout(400)
def test_concurrent_requests_match_requests_run_alone(sd1_root):
    with live_server(create_app(sd1_root), sd1_root) as server:
        together = run_concurrently(server.url, LORA_SETS)
    assert mismatches(sd1_root, LORA_SETS, together) == []
    plain = together[0][0]
    assert all(not np.array_equal(plain, image) for image, _ in together[1:]), "LoRAs had effect"
