"""8 concurrent API requests with different LoRA sets on one model: each image is
pixel-identical to the same request run alone, and its recipe names exactly its own LoRAs."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from loraworks.generation import generate
from loraworks.server.app import create_app
from tests.reliability.root import request
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


def _as_recorded(weight: object) -> object:
    """A recipe writes per-component weights with every component (unnamed ones are 0)."""
    if isinstance(weight, dict):
        return {"unet": 0.0, "text_encoder": 0.0, "text_encoder_2": 0.0, **weight}
    return weight


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _wait(client: httpx.Client, item_id: str, limit_s: float = 300) -> dict:
    deadline = time.monotonic() + limit_s  # hang guard only
    while time.monotonic() < deadline:
        item = client.get(f"/api/queue/{item_id}").json()
        if item["status"] in ("done", "failed", "cancelled"):
            return item
        time.sleep(0.1)
    raise AssertionError(f"queue item {item_id} never finished")


def run_concurrently(url: str, sets: list) -> list[tuple[np.ndarray, dict]]:
    """POST every request at once from its own thread; return (pixels, recipe) per request."""
    with httpx.Client(base_url=url, timeout=60) as client:

        def submit(loras) -> str:
            response = client.post("/api/queue", json=request(loras).model_dump(mode="json"))
            assert response.status_code == 202, response.text
            return response.json()["id"]

        with ThreadPoolExecutor(len(sets)) as pool:
            ids = list(pool.map(submit, sets))
        out = []
        for item_id in ids:
            item = _wait(client, item_id)
            assert item["status"] == "done", item
            (image,) = item["images"]
            png = client.get(image["url"]).content
            out.append((pixels(png), client.get(image["recipe_url"]).json()))
        return out


@pytest.mark.timeout(400)
def test_concurrent_requests_match_requests_run_alone(sd1_root):
    app = create_app(sd1_root)
    with live_server(app, sd1_root) as server:
        together = run_concurrently(server.url, LORA_SETS)
    for loras, (image, recipe) in zip(LORA_SETS, together, strict=True):
        recorded = [(entry["name"], entry["weight"]) for entry in recipe["loras"]]
        assert recorded == [(name, _as_recorded(weight)) for name, weight in loras]
        alone = generate(request(loras), manager=sd1_root)
        expected = pixels(alone.images[0].read_bytes())
        assert np.array_equal(image, expected), f"{loras}: differs from the request run alone"
    plain = together[0][0]
    assert all(not np.array_equal(plain, image) for image, _ in together[1:]), "LoRAs had effect"
