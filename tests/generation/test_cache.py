"""The model cache: LRU eviction under the RAM budget (never of a model in use), parsed LoRAs
read once per content hash, and generations on one model serialised by its lock."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from loraworks.generation import generate
from loraworks.generation.cache import GIB, ModelCache
from tests.generation.conftest import SIZE, FakePipe, fake_record, tiny_request


def _cache(budget_weights: int) -> tuple[ModelCache, list[str]]:
    loaded: list[str] = []

    def load(record, progress, originals):
        loaded.append(record.name)
        return FakePipe(1000)

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


def test_room_is_made_before_a_model_moves_to_the_device():
    """On a GPU the old models and the new one must never sit there together: eviction
    happens while the new pipeline is still in host memory. A device that cannot take it even
    then is a GenerationError that caches nothing."""
    from loraworks.generation.errors import GenerationError

    resident_at_move: list[int] = []

    class _Pipe(FakePipe):
        def to(self, _device):
            resident_at_move.append(len(cache._models))
            return self

    # room for one
    cache = ModelCache(lambda record, progress, originals: _Pipe(1000), 1000 * 4 / GIB, max_loras=2)
    a, b = fake_record("a", "main"), fake_record("b", "main")
    cache.model(a)
    cache.model(b)
    assert resident_at_move == [0, 0]  # a was evicted before b moved

    class _TooBig(FakePipe):
        def to(self, _device):
            raise torch.OutOfMemoryError("CUDA out of memory")

    huge = ModelCache(lambda record, progress, originals: _TooBig(1000), 1.0, max_loras=2)
    with pytest.raises(GenerationError, match="not enough cpu memory to load 'a'"):
        huge.model(a)
    assert huge.loads == 0 and not huge._models


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


def test_only_the_newest_loras_that_fit_the_budget_stay_on_the_device(mm):
    """A GPU cache keeps the most recently used LoRAs there up to `lora_gpu_gb`, the rest in
    host memory (32 cached SDXL LoRAs would fill a GPU). With no budget nothing moves: `cuda`
    here need not exist, the cache must not touch it for a LoRA."""
    from loraworks.generation.cache import device_residents

    assert device_residents([("new", 40), ("mid", 50), ("old", 20)], 100) == {"new", "mid"}
    # strictly newest first: a small old one does not jump a big newer one that did not fit
    assert device_residents([("new", 40), ("big", 70), ("small", 5)], 100) == {"new"}
    assert device_residents([("new", 40)], 39) == set()
    cache = ModelCache(
        lambda record, progress, originals: None, 1.0, max_loras=4, device=torch.device("cuda")
    )
    lora = cache.lora(mm.get("sd1-c", type="lora"))
    devices = {t.device.type for layer in lora.layers.values() for t in layer.tensors().values()}
    assert devices == {"cpu"}


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


def test_an_fp16_model_loads_whole_in_the_configured_dtype(tmp_path):
    """transformers 5 loads a text encoder in its file's dtype unless told: an fp16 model
    would run its CLIP in fp16 beside an fp32 UNet (on a CPU slow, and diffusers warns). The
    root pins `[compute]` so that a GPU machine runs the same check."""
    from loraworks.generation.cache import cache_for
    from loraworks.models import ModelManager
    from tests.fixtures.models import build_pipeline

    folder = tmp_path / "half"
    build_pipeline("sd1", tmp_path / "work").to(dtype=torch.float16).save_pretrained(folder)
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "config.toml").write_text('[compute]\ndevice = "cpu"\n')
    mm = ModelManager.open(tmp_path / "root", scan=False)
    try:
        pipe = cache_for(mm).model(mm.install(folder, name="half", type="main")).pipe
        assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    finally:
        mm.close()


def test_compute_placement_follows_the_config_and_refuses_a_missing_device(monkeypatch):
    from loraworks.generation.cache import compute_placement, compute_summary
    from loraworks.generation.errors import GenerationError
    from loraworks.models.config import ComputeSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_placement(ComputeSettings()) == (torch.device("cpu"), torch.float32)
    assert compute_summary(ComputeSettings()) == "cpu, float32"
    bf16 = ComputeSettings(device="cpu", precision="bfloat16")
    assert compute_placement(bf16) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(GenerationError, match=r"device = 'cuda:1'.*sees 0 CUDA GPU.*\"cpu\""):
        compute_placement(ComputeSettings(device="cuda:1"))
    with pytest.raises(ValueError, match="device"):
        ComputeSettings(device="gpu")  # a typo is refused when the config is read
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert compute_placement(ComputeSettings()) == (torch.device("cuda"), torch.float16)


ON_DEVICES = [
    ("cpu", "bfloat16"),
    pytest.param(
        "cuda",
        "float16",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
    ),
]


@pytest.mark.parametrize(("device", "precision"), ON_DEVICES)
def test_a_root_generates_on_its_device_and_restores_its_weights(tmp_path, device, precision):
    """`[compute]` moves the whole pipeline (bf16 on the CPU; fp16 on a CUDA GPU when there is
    one — `bench/cuda.sh` runs it there): same seed, same pixels, and after a LoRA the weights
    come back bit for bit."""
    from loraworks.generation.cache import cache_for
    from loraworks.models import ModelManager
    from tests.fixtures.models import build_pipeline
    from tests.generation.conftest import pipeline_weights
    from tests.generation.loras import write_lora

    pipe = build_pipeline("sd1", tmp_path / "work")
    pipe.save_pretrained(tmp_path / "tiny")
    lora = write_lora(pipe, tmp_path / "style.safetensors", seed=5)
    root = tmp_path / "root"
    root.mkdir()
    compute = f'[compute]\ndevice = "{device}"\nprecision = "{precision}"\n'
    (root / "config.toml").write_text(compute)
    mm = ModelManager.open(root, scan=False)
    try:
        main = mm.install(tmp_path / "tiny", name="tiny", type="main")
        mm.install(lora, name="style", type="lora")
        loaded = cache_for(mm).model(main)
        dtype = getattr(torch, precision)
        assert loaded.pipe.unet.dtype == loaded.pipe.text_encoder.dtype == dtype
        assert loaded.pipe.unet.device.type == device
        before = pipeline_weights(loaded.pipe)
        request = tiny_request("sd1", model="tiny", loras=[{"name": "style", "weight": 0.8}])
        first, again = (generate(request, manager=mm) for _ in range(2))
        with Image.open(first.images[0]) as a, Image.open(again.images[0]) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
        loaded.patcher.restore()
        after = pipeline_weights(loaded.pipe)
        assert all(torch.equal(before[k], after[k]) for k in before)
    finally:
        mm.close()


@pytest.mark.parametrize("working_weights", [0, 750])
def test_idle_models_are_evicted_to_keep_working_memory_free_on_the_gpu(
    monkeypatch, working_weights
):
    """A GPU with room for 2,500 weights holds two 1,000-weight models; keeping 750 weights
    free for generating (`device_working_mem_gb`) leaves room for one, so the idle one goes."""
    import loraworks.generation.cache as cache_module

    cache, loaded = _cache(budget_weights=10_000)
    cache.device = torch.device("cuda")
    cache.working_mem = working_weights * 4
    gpu = 2_500 * 4
    monkeypatch.setattr(
        cache_module, "free_bytes", lambda _d: gpu - sum(m.nbytes for m in cache._models.values())
    )
    a, b = fake_record("a", "main"), fake_record("b", "main")
    cache.model(a), cache.model(b), cache.model(a)
    assert loaded == (["a", "b", "a"] if working_weights else ["a", "b"])
