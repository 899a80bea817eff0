"""`generate` / `recall` end to end on a models root: LoRA stacks, exact weight restore, the
cache (no reloads, no re-patching), presets, prompt tags, cancel, progress, recipes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from loraworks.generation import (
    GenerateRequest,
    GenerationCancelled,
    GenerationError,
    PromptSyntaxError,
    StepEvent,
    generate,
    recall,
)
from loraworks.generation.api import check_request
from loraworks.generation.cache import cache_for
from loraworks.generation.errors import LoRANotFound, UnusableModel
from loraworks.generation.recipe import read_recipe
from loraworks.lora import LoRABaseMismatch, apply_loras
from tests.fixtures.models import BASES
from tests.generation.conftest import SIZE, pipeline_weights, tiny_request
from tests.server.loras import write_kohya_lora


def _loaded(mm, base: str):
    return cache_for(mm).model(mm.get(f"tiny-{base}", type="main"))


def _weights(mm, base: str) -> dict[str, torch.Tensor]:
    return pipeline_weights(_loaded(mm, base).pipe)


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _pixels(result) -> np.ndarray:
    return np.asarray(Image.open(result.images[0]))


class _UNetBatches:
    def __init__(self, unet):
        self.batches: list[int] = []
        self._h = unet.register_forward_pre_hook(
            lambda _m, args: self.batches.append(args[0].shape[0])
        )

    def close(self):
        self._h.remove()


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("count", [0, 1, 3])
def test_lora_stacks_generate_and_weights_restore_exactly(mm, pristine, base, count):
    names = [f"{base}-{t}" for t in "abc"][:count]
    loras = [{"name": n, "weight": 0.8} for n in names]
    result = generate(tiny_request(base, loras=loras), manager=mm)
    assert len(result.images) == 1 and result.images[0].is_file()
    recipe = read_recipe(result.images[0])
    assert [lora.name for lora in recipe.loras] == names
    assert mm.images.get(result.image_ids[0]).recipe == result.recipe
    patched = _weights(mm, base)
    assert _same_weights(patched, pristine[base]) == (count == 0)
    _loaded(mm, base).patcher.restore()
    assert _same_weights(_weights(mm, base), pristine[base])


def test_same_seed_same_pixels_and_weight_zero_equals_no_lora(mm):
    plain = _pixels(generate(tiny_request("sd1"), manager=mm))
    zero = _pixels(
        generate(tiny_request("sd1", loras=[{"name": "sd1-a", "weight": 0}]), manager=mm)
    )
    once = _pixels(
        generate(tiny_request("sd1", loras=[{"name": "sd1-a", "weight": 1}]), manager=mm)
    )
    plain_again = _pixels(generate(tiny_request("sd1"), manager=mm))
    twice = _pixels(
        generate(tiny_request("sd1", loras=[{"name": "sd1-a", "weight": 1}]), manager=mm)
    )
    assert np.array_equal(plain, plain_again)
    assert np.array_equal(once, twice)
    assert np.array_equal(zero, plain)
    assert not np.array_equal(once, plain)


def test_recall_reproduces_the_pixels(mm):
    req = tiny_request("sdxl", prompt="a cat <lora:sdxl-a:0.6:1.2>", cfg=3.0, negative_prompt="dog")
    first = generate(req, manager=mm)
    again = recall(first.images[0], manager=mm)
    assert np.array_equal(_pixels(first), _pixels(again))
    recipe = read_recipe(again.images[0])
    assert recipe.prompt == "a cat"
    assert recipe.loras[0].weight == {
        "unet": 1.2,
        "text_encoder": 0.6,
        "text_encoder_2": 0.6,
    }


def test_a_recipe_written_by_an_earlier_version_still_recalls(mm, tmp_path):
    """Earlier versions wrote a per-component weight with all three components (pydantic's
    `ComponentWeights`); such a PNG must re-create its image."""
    first = generate(tiny_request("sdxl", prompt="a cat <lora:sdxl-a:0.6:1.2>"), manager=mm)
    weight = {"unet": 1.2, "text_encoder": 0.6, "text_encoder_2": 0.6}
    old = {**first.recipe, "loraworks_version": "0.1.0"}
    old["loras"] = [{**old["loras"][0], "weight": weight}]
    info = PngImagePlugin.PngInfo()
    info.add_text("loraworks_recipe", json.dumps(old))
    png = tmp_path / "old.png"
    Image.open(first.images[0]).save(png, pnginfo=info)
    again = recall(png, manager=mm)
    assert np.array_equal(_pixels(first), _pixels(again))
    assert again.recipe["loras"][0]["weight"] == weight


def test_recipes_record_precision_and_device_and_recall_says_when_they_differ(mm, tmp_path):
    """fp32 and bf16 give different pixels: a PNG made with another precision or device is
    recalled with a warning that says so; an older recipe without them recalls quietly."""
    first = generate(tiny_request("sd1"), manager=mm)
    assert (first.recipe["precision"], first.recipe["device"]) == ("float32", "cpu")
    assert recall(first.images[0], manager=mm).warnings == []

    def recalled_with(**fields):
        info = PngImagePlugin.PngInfo()
        info.add_text("loraworks_recipe", json.dumps({**first.recipe, **fields}))
        png = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        Image.open(first.images[0]).save(png, pnginfo=info)
        return recall(png, manager=mm)

    (note,) = recalled_with(precision="bfloat16", device="cuda").warnings
    assert "bfloat16 on cuda" in note and "float32 on cpu" in note
    assert recalled_with(precision=None, device=None).warnings == []


def test_a_component_weight_reaches_the_patcher_as_the_request_gave_it(mm, pristine, monkeypatch):
    """A weight naming some components is the engine's weight: the patcher gets the request's
    checked dict (a component left out: 0, not patched) and patches exactly what the engine
    called with it patches."""
    asked = {"unet": 0.7, "text_encoder": 0.3}
    loaded = _loaded(mm, "sdxl")
    stacks = []
    set_stack = loaded.patcher.set
    monkeypatch.setattr(loaded.patcher, "set", lambda s: stacks.append(s) or set_stack(s))
    generate(tiny_request("sdxl", loras=[{"name": "sdxl-a", "weight": asked}]), manager=mm)
    assert [weight for _, weight in stacks[0]] == [{**asked, "text_encoder_2": 0.0}]
    patched = pipeline_weights(loaded.pipe)
    loaded.patcher.restore()
    lora = stacks[0][0][0]
    with apply_loras(loaded.pipe, [(lora, asked)]):
        assert _same_weights(patched, pipeline_weights(loaded.pipe))

    def changed(prefix: str) -> bool:
        pairs = [(v, pristine["sdxl"][k]) for k, v in patched.items() if k.startswith(prefix)]
        return any(not torch.equal(*pair) for pair in pairs)

    assert changed("unet.") and changed("text_encoder.") and not changed("text_encoder_2.")


def test_switching_lora_sets_never_reloads_and_same_set_is_not_repatched(mm):
    loaded = _loaded(mm, "sd2")
    cache = cache_for(mm)
    loads = cache.loads
    param = loaded.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    generate(tiny_request("sd2", loras=[{"name": "sd2-a", "weight": 0.5}]), manager=mm)
    report, storage, value = loaded.patcher.report, param.data.data_ptr(), param.detach().clone()
    generate(tiny_request("sd2", loras=[{"name": "sd2-a", "weight": 0.5}], seed=4), manager=mm)
    assert loaded.patcher.report is report  # the patcher's no-op path: nothing re-applied
    assert param.data.data_ptr() == storage and torch.equal(param, value)
    generate(tiny_request("sd2", loras=[{"name": "sd2-b", "weight": 0.5}]), manager=mm)
    assert loaded.patcher.report is not report
    assert not torch.equal(param, value)
    assert cache.loads == loads


def test_cancel_between_steps_restores_weights_and_saves_nothing(mm, pristine):
    cancel = threading.Event()
    events: list[StepEvent] = []

    def progress(event: StepEvent) -> None:
        events.append(event)
        cancel.set()

    before = mm.images.count()
    req = tiny_request("sd1", steps=4, loras=[{"name": "sd1-b", "weight": 1.0}])
    with pytest.raises(GenerationCancelled):
        generate(req, manager=mm, progress=progress, cancel=cancel)
    assert len(events) == 1
    assert mm.images.count() == before
    assert _same_weights(_weights(mm, "sd1"), pristine["sd1"])


def test_out_of_memory_mid_generation_is_a_clear_error_and_restores(mm, pristine):
    """A device that runs out of memory in the UNet (raised here by a hook at the second
    step) ends in a GenerationError naming what to change; weights restored, nothing saved."""
    unet = _loaded(mm, "sd1").pipe.unet
    calls = []

    def oom(_module, _args):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    before = mm.images.count()
    hook = unet.register_forward_pre_hook(oom)
    try:
        req = tiny_request("sd1", steps=3, loras=[{"name": "sd1-b", "weight": 1.0}])
        with pytest.raises(GenerationError, match=r"out of cpu memory generating .*smaller size"):
            generate(req, manager=mm)
    finally:
        hook.remove()
    assert mm.images.count() == before
    assert _same_weights(_weights(mm, "sd1"), pristine["sd1"])


def test_progress_events_batch_seeds_and_preview(mm):
    events: list[StepEvent] = []
    result = generate(
        tiny_request("sd1", steps=3, batch_size=2, seed=11), manager=mm, progress=events.append
    )
    assert [(e.image, e.step, e.total) for e in events] == [
        (i, s, 3) for i in range(2) for s in (1, 2, 3)
    ]
    assert events[0].preview.size == (SIZE // 8, SIZE // 8)
    assert result.seeds == [11, 12]
    single = generate(tiny_request("sd1", steps=3, seed=12), manager=mm)
    assert np.array_equal(np.asarray(Image.open(result.images[1])), _pixels(single))


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_lcm_lora_gets_the_lcm_preset_and_skips_the_uncond_pass(mm, base):
    unet = _loaded(mm, base).pipe.unet
    calls = _UNetBatches(unet)
    try:
        req = GenerateRequest(
            model=f"tiny-{base}",
            prompt="x",
            width=SIZE,
            height=SIZE,
            seed=1,
            loras=[{"name": f"{base}-lcm"}, {"name": f"{base}-a"}],
        )
        result = generate(req, manager=mm)
    finally:
        calls.close()
    r = result.recipe
    assert (r["scheduler"], r["steps"], r["cfg"]) == ("lcm", 4, 1.0)
    assert [lora["weight"] for lora in r["loras"]] == [0.35, 0.45]
    assert calls.batches == [1, 1, 1, 1]
    assert result.warnings == []


def test_lcm_lora_with_many_steps_and_high_cfg_runs_with_a_warning(mm):
    req = tiny_request("sd1", steps=9, cfg=7.0, loras=[{"name": "sd1-lcm", "weight": 1.0}])
    result = generate(req, manager=mm)
    assert len(result.images) == 1
    assert any("lcm LoRA sd1-lcm" in w and "9 steps" in w and "CFG 7" in w for w in result.warnings)


def test_base_mismatch_is_refused_before_any_work_naming_both(mm):
    before = mm.images.count()
    with pytest.raises(LoRABaseMismatch) as err:
        generate(tiny_request("sd1", loras=[{"name": "sdxl-a"}]), manager=mm)
    assert str(err.value) == (
        "LoRA 'sdxl-a' is for sdxl but the main model 'tiny-sd1' is sd1; "
        "pick a sd1 LoRA or a sdxl main model"
    )
    assert mm.images.count() == before


def test_unusable_models_are_refused_before_any_work(mm):
    """A LoRA whose file went missing is refused with the reason, like a broken main model,
    before anything is loaded or written."""
    dropped = write_kohya_lora(mm.paths.autoimport_lora / "gone.safetensors", "sd1", seed=41)
    mm.scan()
    dropped.unlink()
    mm.scan()
    before = mm.images.count()
    try:
        with pytest.raises(UnusableModel, match="LoRA 'gone' cannot be used: file not found"):
            generate(tiny_request("sd1", loras=[{"name": "gone"}]), manager=mm)
        with pytest.raises(LoRANotFound, match="did you mean") as err:
            check_request(tiny_request("sd1", loras=[{"name": "sd1-aa"}]), mm)
        assert isinstance(err.value, GenerationError)  # and a ModelNotFound for the server
    finally:
        mm.remove(mm.get("gone", type="lora").key)
    assert mm.images.count() == before


def test_prompt_tag_errors_are_clear(mm):
    with pytest.raises(GenerationError, match="did you mean: sd1-a"):
        generate(tiny_request("sd1", prompt="x <lora:sd1-aa:1>"), manager=mm)
    with pytest.raises(PromptSyntaxError, match="not a number"):
        generate(tiny_request("sd1", prompt="x <lora:sd1-a:strong>"), manager=mm)
    with pytest.raises(PromptSyntaxError, match="unclosed"):
        generate(tiny_request("sd1", prompt="x <lora:sd1-a:1"), manager=mm)
    with pytest.raises(GenerationError, match="given twice"):
        generate(tiny_request("sd1", prompt="<lora:sd1-a>", loras=[{"name": "sd1-a"}]), manager=mm)


def test_default_weights_and_trigger_words(mm):
    mm.update(mm.get("sd1-b", type="lora").key, default_weight=1.3, trigger_words=["zx style"])
    req = tiny_request(
        "sd1",
        prompt="a cat",
        loras=[{"name": "sd1-a"}, {"name": "sd1-b"}],
        append_trigger_words=True,
    )
    r = generate(req, manager=mm).recipe
    assert [lora["weight"] for lora in r["loras"]] == [0.75, 1.3]
    assert r["prompt"] == "a cat, zx style"


@pytest.mark.parametrize("base", ["sd1", "sdxl"])
def test_an_unset_size_is_the_models_native_size(mm, pipes, base):
    """The truth is diffusers' own default: the UNet's sample_size × the pipeline's
    `vae_scale_factor` (SD1.5's 64 × 8 = 512, SDXL's 128 × 8 = 1024)."""
    pipe = pipes[base]
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    result = generate(tiny_request(base, width=None, height=None), manager=mm)
    assert Image.open(result.images[0]).size == (native, native)
    assert (result.recipe["width"], result.recipe["height"]) == (native, native)
    wide = generate(tiny_request(base, width=SIZE * 2, height=None), manager=mm)
    assert Image.open(wide.images[0]).size == (SIZE * 2, native)


def test_what_the_engine_noticed_in_a_lora_file_is_a_generation_warning(mm, tmp_path):
    """A kohya .pt saved with a trainer's epoch count: the engine leaves the entry out and says
    so; the note reaches the record and every generation with that LoRA, naming it."""
    from safetensors.torch import load_file

    path = tmp_path / "with-epoch.pt"
    tensors = load_file(str(Path(mm.get("sd1-a", type="lora").path)))
    torch.save({**tensors, "epoch": 7}, path)
    record = mm.install(path, name="sd1-epoch", type="lora")
    try:
        (note,) = record.warnings
        assert "epoch" in note
        result = generate(tiny_request("sd1", loras=[{"name": "sd1-epoch"}]), manager=mm)
        assert result.warnings == [f"LoRA 'sd1-epoch': {note}"]
        plain = generate(tiny_request("sd1", loras=[{"name": "sd1-a"}]), manager=mm)
        assert plain.warnings == []
    finally:
        mm.remove(record.key, delete_files=True)
