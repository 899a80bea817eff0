"""The API lists embeddings (GET /api/models?type=embedding) with their triggers, base and
vector count, and edits their trigger like a LoRA's."""

from __future__ import annotations

import torch

from tests.embeddings.producers import write_a1111


def test_embeddings_are_listed_and_their_trigger_edited(client, manager, tmp_path):
    manager.install(write_a1111(tmp_path / "easyneg.pt", torch.randn(8, 768)))
    listed = client.get("/api/models", params={"type": "embedding", "base": "sdxl"}).json()
    assert [(m["name"], m["trigger_words"], m["vectors"], m["base"]) for m in listed] == [
        ("easyneg", ["easyneg"], 8, "sd1")  # an SD1 embedding fits SDXL (its CLIP-L)
    ]
    key = listed[0]["key"]
    assert client.patch(f"/api/models/{key}", json={"trigger_words": ["en"]}).status_code == 200
    assert client.get(f"/api/models/{key}").json()["trigger_words"] == ["en"]
