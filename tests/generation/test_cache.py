"""The model cache: LRU eviction under the RAM budget (never of a model in use), parsed LoRAs
read once per content hash, and generations on one model serialised by its lock."""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

from loraworks.generation import generate
from loraworks.generation.cache import GIB, ModelCache
from tests.generation.conftest import SIZE, fake_record, tiny_request


class _FakePipe:
    """Just enough pipeline for the cache: one module of `numel` fp32 weights."""

    def __init__(self, numel: int):
        self.unet = torch.nn.Linear(numel, 1, bias=False)

    @property
    def components(self) -> dict:
        return {"unet": self.unet}

    def to(self, _device):
        return self


def _cache(budget_weights: int) -> tuple[ModelCache, list[str]]:
    loaded: list[str] = []

    def load(record):
        loaded.append(record.name)
        return _FakePipe(1000)

    return ModelCache(load, budget_weights * 4 / GIB, max_loras=2), loaded


def test_models_stay_loaded_and_least_recently_used_is_evicted_over_budget():
    cache, loaded = _cache(budget_weights=2000)  # room for two models
    a, b, c = (fake_record(n, "main") for n in "abc")
    cache.model(a), cache.model(b), cache.model(a)
    assert loaded == ["a", "b"]
    cache.model(c)  # b is least recently used
    cache.model(a)
    assert loaded == ["a", "b", "c"]
    cache.model(b)
    assert loaded == ["a", "b", "c", "b"]


def test_a_model_in_use_is_not_evicted():
    cache, loaded = _cache(budget_weights=1000)  # room for one
    a, b = fake_record("a", "main"), fake_record("b", "main")
    with cache.model(a).lock:
        cache.model(b)
        cache.model(a)
    assert loaded == ["a", "b"]


def test_a_changed_file_is_reloaded():
    cache, loaded = _cache(budget_weights=10_000)
    cache.model(fake_record("a", "main", hash="1"))
    cache.model(fake_record("a", "main", hash="2"))
    assert loaded == ["a", "a"]


def test_loras_are_parsed_once_per_hash(mm):
    from loraworks.generation.cache import cache_for

    cache = cache_for(mm)
    record = mm.get("sd1-c", type="lora")
    assert cache.lora(record) is cache.lora(record)
    changed = record.model_copy(update={"hash": "other"})
    assert cache.lora(changed) is not cache.lora(record)


def test_concurrent_generations_with_different_loras_do_not_mix(mm):
    requests = [
        tiny_request("sd1", loras=[{"name": "sd1-a", "weight": 1.0}]),
        tiny_request("sd1", loras=[{"name": "sd1-b", "weight": 1.0}]),
    ]
    alone = [np.asarray(Image.open(generate(r, manager=mm).images[0])) for r in requests]
    results: list = [None, None]

    def run(i: int) -> None:
        results[i] = generate(requests[i], manager=mm)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert np.array_equal(np.asarray(Image.open(results[i].images[0])), alone[i])
    assert alone[0].shape == (SIZE, SIZE, 3)


def test_a_prompt_is_encoded_once_per_patch_and_again_when_the_loras_change(mm):
    """The truth is a fresh `encode_prompt` on the model as patched at that moment."""
    from loraworks.generation.cache import cache_for
    from loraworks.generation.conditioning import encode_prompt

    loaded = cache_for(mm).model(mm.get("tiny-sd1", type="main"))
    prompt = "a blue square seen once"
    calls: list[int] = []
    hook = loaded.pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        generate(tiny_request("sd1", prompt=prompt, cfg=3.0, batch_size=3), manager=mm)
        assert len(calls) == 2  # prompt and negative, once for three images
        plain = loaded.conds.encode(loaded.pipe, prompt, None, True, SIZE, SIZE).embeds
        generate(tiny_request("sd1", prompt=prompt, cfg=3.0, seed=11, steps=3), manager=mm)
        assert len(calls) == 2  # same prompt, same patch: nothing encoded
        lora = [{"name": "sd1-a", "weight": 1.0}]  # patches the text encoder too
        generate(tiny_request("sd1", prompt=prompt, cfg=3.0, loras=lora), manager=mm)
        assert len(calls) == 4
        patched = loaded.conds.encode(loaded.pipe, prompt, None, True, SIZE, SIZE).embeds
        assert len(calls) == 4
        truth = encode_prompt(loaded.pipe, prompt, None, True, SIZE, SIZE).embeds
        assert torch.equal(patched, truth)
        assert not torch.allclose(patched, plain)
    finally:
        hook.remove()


def test_an_fp16_model_loads_whole_in_the_devices_dtype(tmp_path):
    """transformers 5 loads a text encoder in its file's dtype unless told: an fp16 model
    would run its CLIP in fp16 on the CPU beside an fp32 UNet (slow, and diffusers warns)."""
    from loraworks.generation.cache import cache_for, default_device
    from loraworks.models import ModelManager
    from tests.fixtures.models import build_pipeline

    folder = tmp_path / "half"
    build_pipeline("sd1", tmp_path / "work").to(dtype=torch.float16).save_pretrained(folder)
    mm = ModelManager.open(tmp_path / "root", scan=False)
    try:
        pipe = cache_for(mm).model(mm.install(folder, name="half", type="main")).pipe
        want = default_device()[1]
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {want}
    finally:
        mm.close()
