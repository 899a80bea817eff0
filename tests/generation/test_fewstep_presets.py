"""Few-step presets (#18): a LoRA named like each family's published file gets its family and
the preset written out below from the documented defaults (not read from the code), the
recipe carries it, a step count that contradicts the file's name warns, and bad input is
refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from loraworks.generation import GenerateRequest, generate
from loraworks.generation.presets import StackEntry, resolve
from loraworks.models import ModelManager
from loraworks.models.config import Config
from tests.generation.conftest import SIZE, fake_record
from tests.generation.loras import write_lora

# name as published -> (family, scheduler, spacing, eta, steps, cfg, own weight); the numbers
# are config.toml's defaults as docs/generation.md states them
PUBLISHED = {
    "sdxl_lightning_4step_lora": ("lightning", "euler", "trailing", None, 4, 1.0, 1.0),
    "sdxl_lightning_2step_lora": ("lightning", "euler", "trailing", None, 2, 1.0, 1.0),
    "Hyper-SD15-8steps-lora": ("hyper", "ddim", "trailing", 0.0, 8, 1.0, 1.0),
    "Hyper-SDXL-1step-lora": ("hyper", "tcd", None, 1.0, 1, 1.0, 1.0),
    "TCD-SD15-LoRA": ("tcd", "tcd", None, 0.3, 4, 1.0, 1.0),
    "pcm_sdxl_smallcfg_4step": ("pcm", "ddim", "trailing", 0.0, 4, 1.0, 1.0),
    "lcm-lora-sdv1-5": ("lcm", "lcm", None, None, 4, 1.0, 0.35),
}
OTHER_WEIGHT = {"lcm": 0.45}  # every other family: 0.75


@pytest.fixture(scope="module")
def root(pipes, tmp_path_factory):
    """A root with the tiny SD1 model, a concept LoRA and one LoRA per published name (LCM
    layout, so that the name alone must tell Hyper-SD etc. from LCM)."""
    work = tmp_path_factory.mktemp("fewstep-work")
    mm = ModelManager.open(tmp_path_factory.mktemp("fewstep-root"), scan=False)
    pipe = pipes["sd1"]
    pipe.save_pretrained(work / "tiny-sd1")
    mm.install(work / "tiny-sd1", name="tiny-sd1", type="main")
    mm.install(write_lora(pipe, work / "ink.safetensors", seed=1), name="ink", type="lora")
    for i, name in enumerate(PUBLISHED):
        path = write_lora(pipe, work / f"{name}.safetensors", seed=20 + i, lcm=True)
        mm.install(path, type="lora")
    yield mm
    mm.close()


def _request(**fields) -> GenerateRequest:
    return GenerateRequest(
        model="tiny-sd1", prompt="a red circle", width=SIZE, height=SIZE, seed=1, **fields
    )


@pytest.mark.parametrize("name", PUBLISHED)
def test_a_published_name_gets_its_family_and_the_recipe_its_preset(root, name):
    family, scheduler, spacing, eta, steps, cfg, weight = PUBLISHED[name]
    record = root.get(name, type="lora")
    assert record.fewstep == family
    result = generate(_request(loras=[{"name": name}, {"name": "ink"}]), manager=root)
    r = result.recipe
    assert (r["scheduler"], r["spacing"], r["eta"], r["steps"], r["cfg"]) == (
        scheduler,
        spacing,
        eta,
        steps,
        cfg,
    )
    assert [lora["weight"] for lora in r["loras"]] == [weight, OTHER_WEIGHT.get(family, 0.75)]
    assert result.warnings == []


def test_a_step_count_against_the_files_name_warns(root):
    request = _request(steps=8, loras=[{"name": "sdxl_lightning_4step_lora"}])
    result = generate(request, manager=root)
    assert result.recipe["steps"] == 8
    assert len(result.warnings) == 1
    assert "8 steps (its file is made for 4)" in result.warnings[0]


def test_models_edit_sets_the_family_and_its_preset_follows(root):
    record = root.update(root.get("ink", type="lora").key, fewstep="tcd")
    try:
        assert record.fewstep == "tcd"
        r = resolve(
            GenerateRequest(model="m", prompt="p", loras=[{"name": "ink"}]),
            "p",
            fake_record("m", "main"),
            [StackEntry(record, None)],
            Config(),
        )
        assert (r.settings.scheduler, r.settings.eta, r.loras[0].weight) == ("tcd", 0.3, 1.0)
        with pytest.raises(ValueError, match="unknown few-step family 'turbo'"):
            root.update(record.key, fewstep="turbo")
    finally:
        root.update(record.key, fewstep="none")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("eta", 1.5, "less than or equal to 1"),
        ("eta", -0.1, "greater than or equal to 0"),
        ("spacing", "middle", "'leading', 'trailing' or 'linspace'"),
        ("preset", "turbo", "'lcm', 'tcd', 'lightning', 'hyper' or 'pcm'"),
        ("steps", 0, "greater than or equal to 1"),
        ("cfg", -1.0, "greater than or equal to 0"),
    ],
)
def test_bad_input_is_refused_by_the_request(field, value, message):
    with pytest.raises(ValidationError) as err:
        GenerateRequest(model="m", prompt="p", **{field: value})
    assert message in str(err.value)


def test_a_spacing_for_a_scheduler_that_takes_none_is_refused():
    with pytest.raises(ValidationError, match="scheduler tcd takes no timestep spacing"):
        GenerateRequest(model="m", prompt="p", scheduler="tcd", spacing="trailing")


def test_cfg_0_is_accepted_and_runs_unguided():
    request = GenerateRequest(model="m", prompt="p", cfg=0.0, negative_prompt="blurry")
    r = resolve(request, "p", fake_record("m", "main"), [], Config())
    assert r.settings.cfg == 0.0
    assert "negative prompt has no effect at CFG 0" in r.warnings[0]


def test_a_bad_preset_in_the_config_is_a_clear_error():
    with pytest.raises(ValidationError, match="spacing"):
        Config.model_validate({"lightning": {"spacing": "sideways"}})
    with pytest.raises(ValidationError, match="eta"):
        Config.model_validate({"tcd": {"eta": 2}})
    config = Config.model_validate({"tcd": {"scheduler": "turbo"}})
    request = GenerateRequest(model="m", prompt="p", preset="tcd")
    with pytest.raises(ValueError, match=r"config.toml \[tcd\]: unknown scheduler 'turbo'"):
        resolve(request, "p", fake_record("m", "main"), [], config)


def test_old_lcm_section_spelling_still_reads():
    assert Config.model_validate({"lcm": {"lcm_lora_weight": 0.3}}).lcm.lora_weight == 0.3


def test_a_scheduler_set_by_the_request_keeps_its_spacing_and_warns():
    lightning = fake_record("l", fewstep="lightning", fewstep_steps=4)
    request = GenerateRequest(model="m", prompt="p", scheduler="ddim")
    r = resolve(request, "p", fake_record("m", "main"), [StackEntry(lightning, None)], Config())
    assert (r.settings.scheduler, r.settings.spacing, r.settings.steps) == ("ddim", None, 4)
    assert "scheduler ddim" in r.warnings[0] and "the model’s own spacing" in r.warnings[0]


def test_mixed_families_warn_and_the_first_applies():
    tcd = fake_record("t", fewstep="tcd")
    lcm = fake_record("c", fewstep="lcm")
    request = GenerateRequest(model="m", prompt="p")
    stack = [StackEntry(tcd, None), StackEntry(lcm, None)]
    r = resolve(request, "p", fake_record("m", "main"), stack, Config())
    assert r.fewstep == "tcd" and [e.weight for e in r.loras] == [1.0, 0.75]
    assert "c (lcm)" in r.warnings[0]


def _cli(root, *extra: str):
    from typer.testing import CliRunner

    from loraworks.cli import app

    args = ["generate", "a red circle", "-m", "tiny-sd1", "--size", "64x64", "--seed", "2"]
    return CliRunner().invoke(app, [*args, "--root", str(root.root), *extra])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--scheduler", "tcd", "--eta", "2"), "eta: Input should be less than or equal to 1"),
        (("--spacing", "middle"), "spacing: Input should be 'leading', 'trailing' or 'linspace'"),
        (("--preset", "turbo"), "preset: Input should be 'lcm', 'tcd'"),
        (("--steps", "0"), "steps: Input should be greater than or equal to 1"),
        (("--cfg", "-1"), "cfg: Input should be greater than or equal to 0"),
        (("--scheduler", "lcm", "--spacing", "trailing"), "scheduler lcm takes no timestep"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_no_image(root, extra, message):
    before = set(root.paths.outputs.iterdir())
    result = _cli(root, *extra)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert set(root.paths.outputs.iterdir()) == before


def test_cli_carries_scheduler_spacing_and_eta_into_the_recipe(root):
    from loraworks.generation.recipe import read_recipe

    for extra, expected in (
        (("--scheduler", "tcd", "--eta", "0.5", "--steps", "2"), ("tcd", None, 0.5)),
        (
            ("--scheduler", "euler", "--spacing", "trailing", "--steps", "2"),
            ("euler", "trailing", None),
        ),
    ):
        result = _cli(root, *extra)
        assert result.exit_code == 0, result.output
        recipe = read_recipe(Path(result.stdout.split("  (seed")[0]))
        assert (recipe.scheduler, recipe.spacing, recipe.eta) == expected
