"""Block weights and step windows through the HTTP API (#19): the weight mapping's
`block_weights`, `start`, `stop` reach generation as sent, and bad ones are a 4xx before the
request is queued."""

from __future__ import annotations

from tests.server.test_api_queue import _refused

OK = {"model": "tiny-sd1", "prompt": "a red circle"}
EVERY = {"unet": 0.8, "text_encoder": 0.8, "text_encoder_2": 0.8}


def test_options_reach_generation_as_sent(client, fake_generate):
    weight = {**EVERY, "block_weights": "OUTD", "start": 2, "stop": 0.5}
    response = client.post("/api/queue", json={**OK, "loras": [{"name": "ink", "weight": weight}]})
    assert response.status_code == 202, response.text
    item = response.json()
    assert item["request"]["loras"][0]["weight"] == weight
    client.get(f"/api/queue/{item['id']}")
    settings = client.get("/api/settings").json()
    assert settings["lbw_presets"][:2] == ["NONE", "ALL"]


def test_bad_options_are_refused_before_queueing(client, fake_generate):
    for weight, status, words in [
        # the records and config decide these (check_request): 400; the request's shape: 422
        ({**EVERY, "block_weights": "OUTX"}, 400, ("unknown lbw preset 'OUTX'",)),
        ({**EVERY, "block_weights": [1.0] * 12}, 400, ("12 values", "fits neither a sd1")),
        ({**EVERY, "start": 0.7, "stop": 0.2}, 422, ("start=0.7 must come before stop=0.2",)),
        ({**EVERY, "start": -1}, 422, ("start= must be a step number",)),
    ]:
        got, message = _refused(client, {**OK, "loras": [{"name": "ink", "weight": weight}]})
        assert (got, all(w in message for w in words)) == (status, True), message
    assert not fake_generate.calls
