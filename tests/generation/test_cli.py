"""`loraworks generate` / `loraworks recall` on the test root: paths printed, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from loraworks.cli import app
from loraworks.generation.recipe import read_recipe

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _generate(mm, *extra: str):
    return _run(
        "generate", "a red circle", "--model", "tiny-sd1", "--size", "64x64", "--steps", "2",
        "--seed", "5", "--root", str(mm.root), *extra,
    )  # fmt: skip


def test_generate_prints_the_paths_and_recall_reruns_it(mm):
    result = _generate(mm, "--lora", "sd1-a:0.8", "--lora", "sd1-b:0.5:1", "-n", "2")
    assert result.exit_code == 0, result.output
    paths = [Path(line.split("  (seed")[0]) for line in result.stdout.splitlines()]
    assert len(paths) == 2 and all(p.is_file() for p in paths)
    recipe = read_recipe(paths[1])
    assert recipe.seed == 6 and [lora.name for lora in recipe.loras] == ["sd1-a", "sd1-b"]
    again = _run("recall", str(paths[1]), "--root", str(mm.root))
    assert again.exit_code == 0, again.output
    assert "(seed 6)" in again.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--lora", "sd1-a:loud"), "error: --lora sd1-a:loud: weight 'loud' is not a number"),
        (("--lora", "sd1-a:nan"), "error: --lora sd1-a:nan: weight 'nan' is not a number"),
        (("--lora", "sd1-a:te=1:clip=1"), "--lora sd1-a:te=1:clip=1: unknown or repeated clip="),
        (("--lora", "nope"), "no lora named 'nope'"),
        (("--lora", "sd1-a:1:lbw=OUTX"), "sd1-a: unknown lbw preset 'OUTX' (known: NONE, ALL"),
        (("--lora", "sd1-a:1:lbw=1,0"), "--lora sd1-a:1:lbw=1,0: lbw has 2 values; SD1/SD2"),
        (("--lora", "sd1-a:1:start=5:stop=2"), "sd1-a:1:start=5:stop=2: start=5 must come before"),
        (("--size", "big"), "--size 'big'"),
        (("--size", "100x64"), "width: must be a multiple of 8 (got 100; try 96)"),
        (("--scheduler", "heun"), "scheduler: Input should be"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(mm, extra, message):
    result = _generate(mm, *extra)
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_recall_of_a_png_without_recipe_fails_cleanly(mm, tmp_path):
    from PIL import Image

    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    result = _run("recall", str(path), "--root", str(mm.root))
    assert result.exit_code == 1
    assert "no loraworks recipe" in result.stderr


def test_recall_refuses_a_recipe_with_a_weight_the_engine_would_refuse(mm, tmp_path):
    """A hand-edited recipe is checked like a request: the weight is named, nothing runs."""
    result = _generate(mm, "--lora", "sd1-a:0.8")
    png = Path(result.stdout.split("  (seed")[0])
    recipe = read_recipe(png).model_dump(mode="json")
    recipe["loras"][0]["weight"] = math.nan
    info = PngImagePlugin.PngInfo()
    info.add_text("loraworks_recipe", json.dumps(recipe))
    edited = tmp_path / "edited.png"
    Image.open(png).save(edited, pnginfo=info)
    again = _run("recall", str(edited), "--root", str(mm.root))
    assert again.exit_code == 1 and "Traceback" not in again.output
    assert "damaged loraworks recipe" in again.stderr
    assert "sd1-a: weight nan is not finite" in again.stderr
