"""POST /api/recall (#19): a PNG's text chunks -> request fields for the installed models and
what does not map; the model list shows each model's A1111/Civitai hashes."""

from __future__ import annotations

import json

from tests.fixtures.a1111_hashes import autov3 as _autov3


def test_models_show_their_hashes(client, manager):
    ink = manager.get("ink", type="lora")
    listed = {m["name"]: m for m in client.get("/api/models").json()}
    assert listed["ink"]["hashes"]["AutoV3"] == _autov3(ink.path.read_bytes())
    main = client.get(f"/api/models/{manager.list(type='main')[0].key}").json()
    assert main["hashes"] == {}  # a diffusers folder: no AutoV2 (docs/interop.md)


def test_a1111_chunks_give_request_fields_and_what_does_not_map(client, manager):
    ink = manager.get("ink", type="lora")
    main = manager.list(type="main")[0]
    ink_hash = _autov3(ink.path.read_bytes())
    text = (
        "a cat <lora:ink_v1:0.6>, <lora:missing:1>\nNegative prompt: dog\n"
        "Steps: 12, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 42, "
        f'Size: 512x512, Model: {main.name}, Lora hashes: "ink_v1: {ink_hash}", '
        "Clip skip: 2"
    )
    response = client.post("/api/recall", json={"chunks": {"parameters": text}, "name": "x.png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "A1111"
    assert body["settings"] == {
        "model": main.key,
        "prompt": "a cat",
        "negative_prompt": "dog",
        "steps": 12,
        "cfg": 6.5,
        "seed": 42,
        "width": 512,
        "height": 512,
        "scheduler": "euler_a",
        "loras": [{"name": ink.key, "weight": 0.6}],
    }
    assert [u.split(" ")[0] for u in body["unmapped"]] == ["Clip", "LoRA"]


def test_our_own_recipe_chunk_and_bad_input(client, manager):
    main = manager.list(type="main")[0]
    recipe = {
        "loraworks_version": "0",
        "model": {"name": main.name, "key": "gone-key", "hash": main.hash, "base": "sd1"},
        "loras": [],
        "prompt": "a",
        "negative_prompt": None,
        "seed": 1,
        "steps": 2,
        "cfg": 1.0,
        "scheduler": "euler",
        "width": 64,
        "height": 64,
    }
    body = client.post("/api/recall", json={"chunks": {"loraworks_recipe": json.dumps(recipe)}})
    assert body.json()["settings"]["model"] == main.key  # found by content hash
    assert body.json()["source"] == "loraworks" and body.json()["unmapped"] == []
    none = client.post("/api/recall", json={"chunks": {}, "name": "plain.png"})
    assert none.status_code == 400 and "no settings found" in none.json()["error"]
    bad = client.post("/api/recall", json={"chunks": {"invokeai_metadata": "{"}})
    assert bad.status_code == 400 and "damaged InvokeAI metadata" in bad.json()["error"]
    assert client.post("/api/recall", json={"chunks": "x"}).status_code == 422
