"""Against a live uvicorn server on loopback with the real generator and tiny models: the
browser flow of the issue (two LoRAs, weights, progress, gallery, recipe), autoimport while
serving, and the `--server` client."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from loraworks.generation import GenerateRequest
from loraworks.models import ModelManager
from loraworks.server import create_app
from loraworks.server.client import ServerError, submit_and_wait
from tests.server.conftest import LiveServer, live_server
from tests.server.loras import write_clip_l_lora, write_kohya_lora

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def live(tmp_path_factory, sd1_folder, lora_sources) -> Iterator[LiveServer]:
    manager = ModelManager.open(tmp_path_factory.mktemp("live") / "root")
    manager.install(sd1_folder, copy=False)
    manager.install(lora_sources["ink"])
    manager.install(lora_sources["glow"])
    manager.install(lora_sources["xl"])
    manager.install(write_kohya_lora(lora_sources["ink"].parent / "lcm-tiny.safetensors", seed=4))
    manager.install(write_clip_l_lora(lora_sources["ink"].parent / "clip-l-only.safetensors"))
    with live_server(create_app(manager, watch=True), manager) as server:
        yield server
    manager.close()


def _wait_for(condition, what: str, limit: float = 30.0):
    """Poll `condition()` until it returns something truthy (the watcher works in the
    background); fail naming `what` if it never does."""
    deadline = time.monotonic() + limit
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def browser():
    from playwright import sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def _open(browser, url: str, blocked: list[str] | None = None):
    """The UI at `url`, ready; what the Content-Security-Policy blocked goes to `blocked`."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    if blocked is not None:
        page.on("console", lambda m: "Content Security Policy" in m.text and blocked.append(m.text))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    return page


@pytest.fixture
def page(live, browser):
    """The UI, which must run whole under the server's CSP (server/headers.py)."""
    blocked: list[str] = []
    page = _open(browser, live.url + "/", blocked)
    yield page
    page.close()
    assert blocked == []


def _set_weight(page, name: str, value: str) -> None:
    box = page.locator(f"[data-testid=stack-row][data-name='{name}'] [data-testid=weight-number]")
    box.fill(value)


@pytest.mark.browser
def test_pick_two_loras_generate_and_see_the_recipe(live, page):
    cards = page.locator("[data-testid=lora-card]")
    assert cards.count() == 5
    xl = page.locator("[data-testid=lora-card][data-name='xl-detail']")
    assert "SDXL LoRA; the model is SD1" in xl.inner_text()
    assert xl.locator("[data-testid=add-lora]").is_disabled()
    clip_l = page.locator("[data-testid=lora-card][data-name='clip-l-only']")  # probed as SDXL
    assert "the model is" not in clip_l.inner_text()
    assert clip_l.locator("[data-testid=add-lora]").is_enabled()

    page.locator("[data-testid=lora-search]").fill("ink")
    assert cards.count() == 1
    cards.first.locator("[data-testid=trigger-word]", has_text="inkstyle").click()
    cards.first.locator("[data-testid=add-lora]").click()
    page.locator("[data-testid=lora-search]").fill("")
    page.locator("[data-testid=lora-card][data-name='glow'] [data-testid=add-lora]").click()
    _set_weight(page, "ink", "0.7")
    _set_weight(page, "glow", "-2.5")  # beyond the slider's range: the number box takes it
    slider = page.locator("[data-testid=stack-row][data-name='glow'] [data-testid=weight-slider]")
    assert slider.input_value() == "-2"

    page.locator("[data-testid=prompt]").fill(
        page.locator("[data-testid=prompt]").input_value() + " a red circle"
    )
    page.locator("[data-testid=width]").fill("64")
    page.locator("[data-testid=height]").fill("64")
    page.locator("[data-testid=steps]").fill("6")
    page.locator("[data-testid=seed]").fill("7")
    page.evaluate(
        """() => {
          window.progressSeen = [];
          const bar = document.querySelector('#progress-bar');
          const record = () => window.progressSeen.push(Number(bar.getAttribute('aria-valuenow')));
          new MutationObserver(record)
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
          const preview = document.querySelector('#progress-preview');
          window.previewShown = false;
          new MutationObserver(() => {
            const shown = preview.src.startsWith('data:image/png;base64,') && !preview.hidden;
            window.previewShown ||= shown;
          }).observe(preview, {attributes: true, attributeFilter: ['src', 'hidden']});
        }"""
    )
    page.locator("[data-testid=generate]").click()
    page.wait_for_selector("[data-testid=gallery-item]", timeout=120_000)
    page.wait_for_selector("[data-testid=recipe-lora]")

    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == 100 and any(0 < v < 100 for v in seen), seen
    assert page.evaluate("window.previewShown")
    assert page.locator("[data-testid=progress-text]").inner_text().startswith("Done")
    lora_lines = page.locator("[data-testid=recipe-lora]").all_inner_texts()
    assert lora_lines == ["ink @ 0.7", "glow @ -2.5"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "server-ui.png"), full_page=True)

    image = httpx.get(live.url + "/api/images").json()["items"][0]
    assert [(lo["name"], lo["weight"]) for lo in image["recipe"]["loras"]] == [
        ("ink", 0.7),
        ("glow", -2.5),
    ]
    assert image["recipe"]["prompt"] == "inkstyle a red circle"
    assert image["recipe"]["steps"] == 6

    page.locator("[data-testid=remove-lora]").first.click()
    page.locator("[data-testid=use-settings]").click()
    names = page.locator("[data-testid=stack-row]").evaluate_all(
        "rows => rows.map(r => r.dataset.name)"
    )
    assert names == ["ink", "glow"]
    assert page.locator("[data-testid=steps]").input_value() == "6"


@pytest.mark.browser
def test_picking_an_lcm_lora_offers_its_preset(page):
    lcm = page.locator("[data-testid=lora-card][data-name='lcm-tiny']")
    assert lcm.locator("[data-testid=fewstep-badge]").inner_text() == "LCM"
    offer = page.locator("[data-testid=fewstep-offer]")
    assert offer.is_hidden()
    lcm.locator("[data-testid=add-lora]").click()
    page.locator("[data-testid=lora-card][data-name='ink'] [data-testid=add-lora]").click()
    assert offer.is_visible() and "lcm LoRA" in offer.inner_text()
    page.locator("[data-testid=steps]").fill("12")
    _set_weight(page, "ink", "1.2")
    page.locator("[data-testid=use-preset]").click()  # empties what the preset fills
    fields = ("scheduler", "steps", "cfg")
    assert [page.locator(f"[data-testid={f}]").input_value() for f in fields] == ["", "", ""]
    placeholders = [
        page.locator(f"[data-testid={f}]").get_attribute("placeholder") for f in fields[1:]
    ]
    assert placeholders == ["4", "1"]
    assert page.locator("#scheduler option").first.inner_text() == "lcm preset (lcm)"
    weights = page.locator("[data-testid=weight-number]").evaluate_all(
        "boxes => boxes.map(b => [b.closest('[data-name]').dataset.name, b.value])"
    )
    assert weights == [["lcm-tiny", "0.35"], ["ink", "0.45"]]
    assert page.locator("[data-testid=weight-auto]").count() == 2
    page.locator("[data-testid=stack-row][data-name='lcm-tiny'] [data-testid=remove-lora]").click()
    assert offer.is_hidden()


@pytest.mark.browser
def test_a_lora_dropped_into_autoimport_appears_without_restart(live, page):
    target = live.manager.paths.autoimport_lora / "sub" / "dropped-live.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = write_kohya_lora(target.parent.parent / ".staging", "sd1", seed=21)
    shutil.move(staging, target)  # appear at once, like a finished copy

    def listed() -> bool:
        names = [m["name"] for m in httpx.get(live.url + "/api/models").json()]
        return "dropped-live" in names

    _wait_for(listed, "the dropped LoRA in /api/models")
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("[data-testid=lora-card][data-name='dropped-live']").count() == 1


@pytest.mark.browser
def test_models_page_installs_shows_broken_files_and_edits(live, page, tmp_path):
    from playwright.sync_api import expect

    (live.manager.paths.autoimport_lora / "broken-ui.safetensors").write_bytes(b"\0" * 16)
    page.locator("[data-testid=tab-models]").click()
    page.locator("[data-testid=rescan]").click()
    broken = page.locator("[data-testid=model-row][data-name='broken-ui']")
    expect(broken.locator("[data-testid=model-status]")).to_contain_text("error: ")

    # edits typed while the table re-renders (the rescan, another row's save) are kept
    glow = page.locator("[data-testid=model-row][data-name='glow']")
    ink = page.locator("[data-testid=model-row][data-name='ink']")
    glow.locator("[data-testid=edit-triggers]").fill("glowing, neon")
    glow.locator("[data-testid=edit-weight]").fill("0.6")
    ink.locator("[data-testid=edit-weight]").fill("0.9")
    glow.locator("[data-testid=save-model]").click()
    expect(page.locator("[data-testid=models-message]")).to_have_text("Saved glow.")
    record = httpx.get(live.url + "/api/models/glow").json()
    assert (record["trigger_words"], record["default_weight"]) == (["glowing", "neon"], 0.6)
    ink.locator("[data-testid=save-model]").click()
    expect(page.locator("[data-testid=models-message]")).to_have_text("Saved ink.")
    assert httpx.get(live.url + "/api/models/ink").json()["default_weight"] == 0.9

    source = write_kohya_lora(tmp_path / "installed-ui.safetensors", "sd1", seed=31)
    page.locator("[data-testid=install-source]").fill(str(source))
    page.locator("[data-testid=install]").click()
    expect(page.locator("[data-testid=models-message]")).to_contain_text("Installed installed-ui")
    expect(page.locator("[data-testid=model-row][data-name='installed-ui']")).to_have_count(1)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "server-models.png"), full_page=True)


@pytest.mark.browser
def test_with_a_token_the_page_opened_from_the_printed_url_works(live, browser):
    token = "ui-token"
    png = live.manager.paths.outputs / "token-test.png"
    Image.new("RGB", (8, 8), (0, 0, 255)).save(png)
    live.manager.images.add(png, {"prompt": "blue"})
    with live_server(create_app(live.manager, token=token), live.manager) as server:
        assert httpx.get(server.url + "/").status_code == 401
        page = _open(browser, f"{server.url}/?token={token}")
        assert page.locator("[data-testid=lora-card]").count() >= 4
        first = page.locator("[data-testid=gallery-item] img").first
        first.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=first.element_handle()
        )
        page.close()


def test_client_submits_follows_and_returns_image_urls(live):
    events = []
    request = GenerateRequest(
        model="tiny-sd1", prompt="a blue square", width=64, height=64, steps=2, seed=1
    )
    urls = submit_and_wait(live.url, request, on_event=events.append)
    assert len(urls) == 1 and urls[0].startswith(live.url + "/api/images/")
    assert httpx.get(urls[0]).headers["content-type"] == "image/png"
    assert [e["type"] for e in events][:2] == ["queued", "started"]
    assert events[-1]["type"] == "done"
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2] and steps[-1]["total"] == 2
    assert all(e["preview"].startswith("data:image/png;base64,") for e in steps)


def test_client_raises_the_servers_message(live):
    request = GenerateRequest(model="tiny-sd1", prompt="x", loras=[{"name": "xl-detail"}])
    with pytest.raises(ServerError, match="sdxl"):
        submit_and_wait(live.url, request)
    with pytest.raises(ServerError, match="Cannot talk to the server"):
        submit_and_wait("http://127.0.0.1:9", request)


def test_generate_command_runs_on_the_server(live):
    args = ["generate", "a green square", "--model", "tiny-sd1", "--server", live.url]
    result = CliRunner().invoke(cli_app, [*args, "--size", "64", "--steps", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    (url,) = result.output.split()
    assert url.startswith(live.url + "/api/images/")
    recipe = httpx.get(url + "/recipe").json()
    assert (recipe["prompt"], recipe["seed"], recipe["steps"]) == ("a green square", 3, 2)
    refused = CliRunner().invoke(cli_app, [*args, "--lora", "xl-detail:0.5"])
    assert refused.exit_code == 1
    assert "sdxl" in refused.output and "Traceback" not in refused.output
