"""Few-step families over the HTTP API (#18): listed and edited on records, and the request's
spacing/eta/preset refused before queueing when bad."""

from __future__ import annotations

import pytest

from tests.server.sse import read_events


def test_records_show_and_edit_the_fewstep_family(client):
    listed = {m["name"]: m for m in client.get("/api/models?type=lora").json()}
    assert listed["glow"]["fewstep"] == "none" and listed["glow"]["fewstep_steps"] is None
    edited = client.patch("/api/models/glow", json={"fewstep": "lightning"})
    assert edited.status_code == 200 and edited.json()["fewstep"] == "lightning"
    assert client.get("/api/models/glow").json()["fewstep"] == "lightning"
    bad = client.patch("/api/models/glow", json={"fewstep": "turbo"})
    assert bad.status_code == 422 and "fewstep" in bad.json()["error"]


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        ({"eta": 1.5}, "eta"),
        ({"spacing": "middle"}, "spacing"),
        ({"preset": "turbo"}, "preset"),
        ({"steps": 0}, "steps"),
        ({"cfg": -0.5}, "cfg"),
        ({"scheduler": "tcd", "spacing": "trailing"}, "takes no timestep spacing"),
    ],
)
def test_bad_sampling_is_refused_before_queueing(client, fake_generate, fields, word):
    body = {"model": "tiny-sd1", "prompt": "a red circle", **fields}
    response = client.post("/api/queue", json=body)
    assert response.status_code == 422 and word in response.json()["error"]
    assert fake_generate.calls == []


def test_spacing_eta_and_cfg_0_reach_the_request(client, fake_generate):
    bodies = [
        {"scheduler": "euler", "spacing": "trailing", "cfg": 0},
        {"scheduler": "tcd", "eta": 0.5, "preset": "tcd"},
    ]
    for body in bodies:
        item = client.post("/api/queue", json={"model": "tiny-sd1", "prompt": "p", **body})
        assert item.status_code == 202
        assert read_events(client, item.json()["id"])[-1]["event"] == "done"
    first, second = fake_generate.calls
    assert (first.spacing, first.cfg) == ("trailing", 0.0)
    assert (second.scheduler, second.eta, second.preset) == ("tcd", 0.5, "tcd")
