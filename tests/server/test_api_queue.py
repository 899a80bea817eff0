"""Queue endpoints and progress events, with a fake `generate` standing in for the model."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from loraworks.server import create_app
from tests.server.conftest import LOCAL_URL
from tests.server.loras import write_clip_l_lora, write_kohya_lora
from tests.server.sse import read_events


def _enqueue(client, **fields):
    body = {"model": "tiny-sd1", "prompt": "a red circle", **fields}
    response = client.post("/api/queue", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_enqueue_runs_and_streams_queued_started_steps_done(client, fake_generate):
    item = _enqueue(client, loras=[{"name": "ink", "weight": 0.8}], batch_size=2)
    events = read_events(client, item["id"])
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done"
    steps = [(e["step"], e["total"]) for e in events if e["event"] == "step"]
    # a late reader gets only the last step of the replay; either way progress ends at 6/6
    assert steps[-1] == (6, 6)
    assert all(e["type"] == e["event"] and e["item_id"] == item["id"] for e in events)
    done = events[-1]
    assert len(done["images"]) == 2 and done["warnings"] == ["a fake warning"]
    assert fake_generate.calls[0].loras[0].name == "ink"
    late = read_events(client, item["id"])  # after the end: the story, one step (the last)
    assert [(e["event"], e["step"]) for e in late] == [
        ("queued", None),
        ("started", None),
        ("step", 6),
        ("done", None),
    ]
    status = client.get(f"/api/queue/{item['id']}").json()
    assert status["status"] == "done" and status["step"] == 6 and status["total"] == 6
    assert [i["id"] for i in status["images"]] == [i["id"] for i in done["images"]]


def test_a_live_reader_sees_every_step(manager, fake_generate):
    fake_generate.gate.clear()  # hold the worker until the stream is open
    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        item = _enqueue(client)
        events = read_events(client, item["id"], after_first=fake_generate.gate.set)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]


def test_items_run_in_order_and_are_listed(client, fake_generate):
    first = _enqueue(client, prompt="first")
    second = _enqueue(client, prompt="second")
    read_events(client, second["id"])
    assert [r.prompt for r in fake_generate.calls] == ["first", "second"]
    listed = client.get("/api/queue").json()
    assert [i["id"] for i in listed] == [first["id"], second["id"]]
    assert {i["status"] for i in listed} == {"done"}


def test_cancel_a_queued_item_before_it_runs(manager, fake_generate):
    app = create_app(manager, generate=fake_generate, start_worker=False)
    with TestClient(app, base_url=LOCAL_URL) as client:
        item = _enqueue(client)
        assert client.get(f"/api/queue/{item['id']}").json()["status"] == "queued"
        cancelled = client.post(f"/api/queue/{item['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert [e["event"] for e in read_events(client, item["id"])] == ["queued", "cancelled"]
        again = client.post(f"/api/queue/{item['id']}/cancel")
        assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    assert fake_generate.calls == []


def test_cancel_a_running_item(manager, fake_generate):
    fake_generate.gate.clear()
    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        item = _enqueue(client)
        assert fake_generate.entered.wait(10)  # the worker has picked it up
        response = client.post(f"/api/queue/{item['id']}/cancel")
        assert response.json()["cancel_requested"] is True
        fake_generate.gate.set()
        assert read_events(client, item["id"])[-1]["event"] == "cancelled"
        assert client.get(f"/api/queue/{item['id']}").json()["status"] == "cancelled"


def test_a_failing_generation_is_reported_and_the_queue_goes_on(client, fake_generate):
    fake_generate.fail_with = ValueError("the LoRA file changed on disk; rescan it")
    failed = _enqueue(client)
    last = read_events(client, failed["id"])[-1]
    assert (
        last["event"] == "failed" and last["message"] == "the LoRA file changed on disk; rescan it"
    )
    assert client.get(f"/api/queue/{failed['id']}").json()["error"] == last["message"]
    fake_generate.fail_with = RuntimeError("boom")
    crashed = read_events(client, _enqueue(client)["id"])[-1]
    assert crashed["event"] == "failed" and "RuntimeError: boom" in crashed["message"]
    fake_generate.fail_with = None
    assert read_events(client, _enqueue(client)["id"])[-1]["event"] == "done"


def test_unknown_queue_item_is_404_everywhere(client):
    for method, path in [
        ("GET", "/api/queue/nope"),
        ("POST", "/api/queue/nope/cancel"),
        ("GET", "/api/queue/nope/events"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404
        assert "nope" in response.json()["error"]


def _refused(client, body=None, content=None, headers=None):
    response = client.post("/api/queue", json=body, content=content, headers=headers)
    assert 400 <= response.status_code < 500, response.text
    return response.status_code, response.json()["error"]


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ("NaN", "ink: weight nan is not finite"),
        ("-Infinity", "ink: weight -inf is not finite"),
        ("true", "ink: weight must be a number or a dict, not True"),
        (
            '{"unet": 1, "clip": 1}',
            "ink: unknown component 'clip' in weight (use unet, text_encoder, text_encoder_2; "
            "options: block_weights, start, stop)",
        ),
        ('{"unet": NaN}', "ink: weight for 'unet' must be a finite number, not nan"),
    ],
)
def test_a_weight_the_engine_would_refuse_is_a_422(client, fake_generate, weight, message):
    """Python's JSON reader takes NaN and Infinity: the request checks the weight with the
    engine's rule, so the item is refused before it is queued, not failed when it runs."""
    lora = f'{{"name": "ink", "weight": {weight}}}'
    body = f'{{"model": "tiny-sd1", "prompt": "a", "loras": [{lora}]}}'
    status, error = _refused(client, content=body, headers={"content-type": "application/json"})
    assert (status, error) == (422, f"Invalid request: loras.0.weight: {message}.")
    assert client.get("/api/queue").json() == [] and fake_generate.calls == []


def test_a_component_weight_is_queued_in_its_one_form(client, fake_generate):
    item = _enqueue(client, loras=[{"name": "ink", "weight": {"unet": 0.5}}])
    assert item["request"]["loras"][0]["weight"] == {
        "unet": 0.5,
        "text_encoder": 0.0,
        "text_encoder_2": 0.0,
    }
    read_events(client, item["id"])
    assert fake_generate.calls[0].loras[0].weight == item["request"]["loras"][0]["weight"]


def test_bad_requests_get_clear_4xx_and_the_server_keeps_serving(client, fake_generate):
    ok = {"model": "tiny-sd1", "prompt": "a red circle"}
    status, message = _refused(client, {**ok, "model": "no-such-model"})
    assert status == 404 and "no-such-model" in message
    status, message = _refused(client, {**ok, "loras": [{"name": "xl-detail", "weight": 1}]})
    assert status == 409 and "sdxl" in message and "sd1" in message
    status, message = _refused(client, {**ok, "prompt": "<lora:xl-detail:0.5> a circle"})
    assert status == 409 and "sdxl" in message
    status, message = _refused(client, {**ok, "loras": [{"name": "nothing-like-this"}]})
    assert status == 404 and "nothing-like-this" in message
    status, message = _refused(client, {**ok, "steps": -3})
    assert status == 422 and message.startswith("Invalid request: steps:")
    status, message = _refused(client, {**ok, "prompt": "x" * 100_000})
    assert status == 422 and "prompt" in message and "100,000" in message
    status, message = _refused(
        client, content=b'{"model": "tiny-sd1",', headers={"content-type": "application/json"}
    )
    assert status == 400 and "not valid JSON" in message
    status, message = _refused(client, content=b"model=tiny-sd1")
    assert status == 400 and "JSON object" in message
    status, message = _refused(client, {**ok, "prompt": "<lora:ink:0.5 unclosed"})
    assert status == 400 and "unclosed" in message
    status, message = _refused(client, {**ok, "init_image": "/etc/hostname"})
    assert status == 403 and "under the models root" in message
    assert fake_generate.calls == []
    assert read_events(client, _enqueue(client)["id"])[-1]["event"] == "done"


def test_unusable_and_repeated_loras_are_refused_at_enqueue(client, manager, fake_generate):
    """Generation's own record check runs before the request is queued: a LoRA whose file went
    missing is a 409 that says why, a LoRA named twice (request and tag) a 400."""
    dropped = write_kohya_lora(manager.paths.autoimport_lora / "gone.safetensors", "sd1", seed=4)
    manager.scan()
    dropped.unlink()
    manager.scan()
    assert manager.get("gone", type="lora").status == "missing"
    ok = {"model": "tiny-sd1", "prompt": "a circle"}
    status, message = _refused(client, {**ok, "loras": [{"name": "gone"}]})
    assert status == 409 and message == "LoRA 'gone' cannot be used: file not found"
    twice = {**ok, "prompt": "<lora:ink:0.5> a circle", "loras": [{"name": "ink"}]}
    status, message = _refused(client, twice)
    assert status == 400 and "given twice" in message
    assert fake_generate.calls == []


def test_bases_follow_the_engine_rule_not_the_record_base(client, manager, fake_generate, tmp_path):
    """A CLIP-L-only LoRA recorded as sdxl fits an SD1 model (generation would apply it); a
    UNet LoRA for SDXL does not, and the refusal names both bases and both models."""
    record = manager.install(write_clip_l_lora(tmp_path / "clip-l.safetensors"))
    assert (record.base, record.name) == ("sdxl", "clip-l")  # the record alone says "refuse"
    item = _enqueue(client, loras=[{"name": "clip-l", "weight": 0.7}])
    assert read_events(client, item["id"])[-1]["event"] == "done"
    assert [spec.name for spec in fake_generate.calls[-1].loras] == ["clip-l"]
    ok = {"model": "tiny-sd1", "prompt": "<lora:clip-l:1> a circle"}
    assert client.post("/api/queue", json=ok).status_code == 202
    status, message = _refused(client, {**ok, "loras": [{"name": "xl-detail", "weight": 1}]})
    assert status == 409
    assert all(word in message for word in ("xl-detail", "tiny-sd1", "is for sdxl", "is sd1"))


def test_settings_give_the_ui_its_defaults_and_the_fewstep_presets(client):
    settings = client.get("/api/settings").json()
    assert settings["fewstep"]["lcm"] == {
        "scheduler": "lcm",
        "spacing": None,
        "eta": None,
        "steps": 4,
        "cfg": 1.0,
        "lora_weight": 0.35,
        "other_lora_weight": 0.45,
        "by_steps": {},
    }
    assert set(settings["fewstep"]) == {"lcm", "tcd", "lightning", "hyper", "pcm"}
    assert settings["fewstep"]["hyper"]["by_steps"]["1"]["scheduler"] == "tcd"
    assert settings["spacings"] == ["leading", "trailing", "linspace"]
    assert {"euler", "lcm", "tcd", "dpmpp_2m_karras"} <= set(settings["schedulers"])
    assert settings["generation"]["lora_weight"] == 0.75
    if not torch.cuda.is_available():
        assert settings["compute"] == "cpu, float32"
