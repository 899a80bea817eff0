"""Running generation requests through the live API at once, and judging them against the
same requests run alone (shared by the test and `bench/concurrency.py`)."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from loraworks.generation import generate
from loraworks.models import ModelManager
from tests.reliability.root import request


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


def run_concurrently(url: str, sets: list, steps: int = 2) -> list[tuple[np.ndarray, dict]]:
    """POST every request at once from its own thread; return (pixels, recipe) per request."""
    with httpx.Client(base_url=url, timeout=60) as client:

        def submit(loras) -> str:
            response = client.post(
                "/api/queue", json=request(loras, steps=steps).model_dump(mode="json")
            )
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


def mismatches(mm: ModelManager, sets: list, together: list, steps: int = 2) -> list[str]:
    """Each concurrent result against its request run alone: recipe names exactly its own
    LoRAs and weights, and the pixels are identical."""
    problems = []
    for loras, (image, recipe) in zip(sets, together, strict=True):
        recorded = [(entry["name"], entry["weight"]) for entry in recipe["loras"]]
        if recorded != [(name, _as_recorded(weight)) for name, weight in loras]:
            problems.append(f"{loras}: the recipe lists {recorded}")
        alone = generate(request(loras, steps=steps), manager=mm)
        if not np.array_equal(image, pixels(alone.images[0].read_bytes())):
            problems.append(f"{loras}: pixels differ from the request run alone")
    return problems
