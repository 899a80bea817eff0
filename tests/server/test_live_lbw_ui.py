"""The web UI's block-weight preset picker (#19), in real Chromium: a LoRA given weight 0.8 and
preset OUTD in the stack is generated with the weight `loraworks generate --lora
name:0.8:lbw=OUTD` gives (the same recipe weight), the settings API lists the extension's
presets and the config's own, and "use these settings" puts the preset back in the picker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from loraworks.demo.run import BASE_NAME, STAR_NAME, install_demo
from loraworks.generation.recipe import read_recipe
from loraworks.models import ModelManager
from loraworks.server import create_app
from tests.server.conftest import LiveServer, live_server
from tests.server.test_live_ui import _open, browser  # noqa: F401 (the module's fixture)

PROMPT = "a red zkstar on a white background"
FACE = "1,0,0,0,0,0,0,0,1,1,1,0,0,0,0,0,0"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("lbw-live") / "root"
    manager = ModelManager.open(root)
    config = (root / "config.toml").read_text()
    (root / "config.toml").write_text(config.replace("# FACE = ", "FACE = "))
    manager.close()
    manager = ModelManager.open(root)
    install_demo(manager)
    with live_server(create_app(manager), manager) as server:
        yield server
    manager.close()


@pytest.mark.browser
def test_a_preset_picked_per_lora_is_generated_and_restored(demo, browser):  # noqa: F811
    presets = httpx.get(demo.url + "/api/settings").json()["lbw_presets"]
    assert presets[:3] == ["NONE", "ALL", "INS"] and presets[-1] == "FACE"
    page = _open(browser, demo.url + "/")
    try:
        page.locator(
            f"[data-testid=lora-card][data-name='{STAR_NAME}'] [data-testid=add-lora]"
        ).click()
        row = page.locator(f"[data-testid=stack-row][data-name='{STAR_NAME}']")
        row.locator("[data-testid=weight-number]").fill("0.8")
        row.locator("[data-testid=lbw-preset]").select_option("OUTD")
        page.locator("[data-testid=prompt]").fill(PROMPT)
        page.locator("[data-testid=seed]").fill("3")
        page.locator("[data-testid=generate]").click()
        page.wait_for_selector("[data-testid=recipe-lora]", timeout=120_000)
        ui = httpx.get(demo.url + "/api/images").json()["items"][0]["recipe"]

        result = CliRunner().invoke(
            cli_app,
            ["generate", PROMPT, "-m", BASE_NAME, "--lora", f"{STAR_NAME}:0.8:lbw=OUTD",
             "--seed", "3", "--root", str(demo.manager.root)],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        cli = read_recipe(Path(result.stdout.split("  (seed")[0])).model_dump(mode="json")
        [used] = [lora["weight"] for lora in ui["loras"]]
        assert used == cli["loras"][0]["weight"]
        assert used == {"unet": 0.8, "text_encoder": 0.8, "text_encoder_2": 0.8,
                        "block_weights": "OUTD"}  # fmt: skip

        row.locator("[data-testid=remove-lora]").click()
        page.locator("[data-testid=use-settings]").click()
        row = page.locator(f"[data-testid=stack-row][data-name='{STAR_NAME}']")
        assert row.locator("[data-testid=lbw-preset]").input_value() == "OUTD"
        assert row.locator("[data-testid=weight-number]").input_value() == "0.8"
    finally:
        page.close()
