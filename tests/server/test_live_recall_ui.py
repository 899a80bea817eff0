"""The web UI's "use the settings of a PNG" in real Chromium (#19): an A1111 PNG (zTXt, as
some savers write it) fills the form and the stack; what does not map is shown."""

from __future__ import annotations

import pytest
from PIL import Image, PngImagePlugin

from tests.fixtures.a1111_hashes import autov3 as _autov3
from tests.server.test_live_ui import browser, live, page  # noqa: F401


@pytest.mark.browser
def test_an_a1111_png_fills_the_form(live, page, tmp_path):  # noqa: F811
    ink = live.manager.get("ink", type="lora")
    main = live.manager.list(type="main")[0]
    text = (
        "a red circle, <lora:ink_renamed:0.6>, <lora:not-here:1>\nNegative prompt: blurry\n"
        "Steps: 9, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 77, "
        f'Size: 64x64, Model: {main.name}, Lora hashes: "ink_renamed: '
        f'{_autov3(ink.path.read_bytes())}", Version: v1.10.1'
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text, zip=True)
    png = tmp_path / "from-a1111.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)

    page.locator("[data-testid=open-png]").set_input_files(str(png))
    page.wait_for_selector("[data-testid=notice]:has-text('A1111')")
    fields = {
        f: page.locator(f"[data-testid={f}]").input_value()
        for f in ("prompt", "negative", "steps", "cfg", "seed", "width", "scheduler")
    }
    assert fields == {
        "prompt": "a red circle",
        "negative": "blurry",
        "steps": "9",
        "cfg": "5.5",
        "seed": "77",
        "width": "64",
        "scheduler": "dpmpp_2m_karras",
    }
    rows = page.locator("[data-testid=stack-row]").evaluate_all(
        "rows => rows.map(r => [r.dataset.name, "
        "r.querySelector('[data-testid=weight-number]').value])"
    )
    assert rows == [["ink", "0.6"]]
    assert "not-here" in page.locator("#notice").inner_text()
    hashes = page.locator("[data-testid=model-hash]").all_text_contents()  # the models page
    assert f"AutoV3 {_autov3(ink.path.read_bytes())}" in hashes
