"""`[limits]` as the server enforces them, and the 4xx answers of hardening round 2 (#16): a
body over `max_request_bytes` is 413, a full queue 429, a size, batch or step count over its
limit 422 — each naming its setting — and `init_image`, image ids and missing files answer
4xx with the right message, never 500 or a hint about files outside the root."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loraworks.models import ModelManager
from loraworks.server import create_app
from tests.server.conftest import LOCAL_URL, FakeGenerate

LIMITS = {"max_side": 256, "max_batch": 2, "max_steps": 10, "max_queue": 2}
MAX_BODY = 2048
OK = {"model": "tiny-sd1", "prompt": "a red circle"}


@pytest.fixture
def limited(tmp_path, sd1_folder) -> Iterator[tuple[TestClient, FakeGenerate]]:
    """A root whose config.toml sets low limits (as a CPU user would), served with a fake
    generator held at its gate until the test opens it."""
    root = tmp_path / "root"
    root.mkdir()
    settings = "".join(f"{k} = {v}\n" for k, v in LIMITS.items())
    (root / "config.toml").write_text(f"[limits]\n{settings}max_request_bytes = {MAX_BODY}\n")
    manager = ModelManager.open(root)
    manager.install(sd1_folder, copy=False)
    fake = FakeGenerate()
    with TestClient(create_app(manager, generate=fake), base_url=LOCAL_URL) as client:
        yield client, fake
    manager.close()


def _padded(size: int) -> bytes:
    """A valid generation request of exactly `size` bytes (the prompt pads it)."""
    body = json.dumps({**OK, "prompt": ""}).encode()
    return json.dumps({**OK, "prompt": "x" * (size - len(body))}).encode()


def test_a_body_over_max_request_bytes_is_413_whether_or_not_it_says_its_length(limited):
    client, fake = limited
    headers = {"content-type": "application/json"}
    big = _padded(MAX_BODY + 1)
    assert len(big) == MAX_BODY + 1
    answers = [
        client.post("/api/queue", content=big, headers=headers),  # Content-Length
        client.post("/api/queue", content=iter([big[:1000], big[1000:]]), headers=headers),
    ]
    for response in answers:
        assert response.status_code == 413, response.text
        assert "limits.max_request_bytes" in response.json()["error"]
    assert fake.calls == [] and client.get("/api/queue").json() == []
    at_limit = client.post("/api/queue", content=_padded(MAX_BODY), headers=headers)
    assert at_limit.status_code == 202, at_limit.text  # the limit itself is allowed


@pytest.mark.parametrize(
    ("field", "value", "setting"),
    [
        ("width", 264, "max_side"),
        ("height", 1024, "max_side"),
        ("batch_size", 3, "max_batch"),
        ("steps", 11, "max_steps"),
    ],
)
def test_sizes_batches_and_steps_over_their_limit_are_422_naming_the_setting(
    limited, field, value, setting
):
    client, fake = limited
    response = client.post("/api/queue", json={**OK, field: value})
    assert response.status_code == 422
    limit = LIMITS[setting]
    assert response.json()["error"] == (
        f"{field} {value} is over the limit of {limit} (limits.{setting} in the root's "
        "config.toml)."
    )
    assert fake.calls == [] and client.get("/api/queue").json() == []
    at_limit = client.post("/api/queue", json={**OK, field: limit})
    assert at_limit.status_code == 202, at_limit.text
    assert client.get("/api/queue").json()[0]["request"][field] == limit


def test_a_full_queue_is_429_naming_max_queue_and_takes_requests_again_when_it_drains(limited):
    client, fake = limited
    fake.gate.clear()  # the first item runs and waits; the second waits in the queue
    first = client.post("/api/queue", json=OK)
    second = client.post("/api/queue", json=OK)
    assert (first.status_code, second.status_code) == (202, 202)
    refused = client.post("/api/queue", json=OK)
    assert refused.status_code == 429
    assert "limits.max_queue" in refused.json()["error"]
    assert len(client.get("/api/queue").json()) == 2
    fake.gate.set()
    for item in (first.json(), second.json()):
        while client.get(f"/api/queue/{item['id']}").json()["status"] != "done":
            fake.entered.wait(0.05)
    assert client.post("/api/queue", json=OK).status_code == 202


def test_init_image_outside_the_root_answers_the_same_whether_it_exists(client, tmp_path):
    """An existing file and a made-up path outside the root get one answer, so the API cannot
    be asked whether a file exists anywhere on the machine."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG")
    answers = [
        client.post("/api/queue", json={**OK, "init_image": str(path), "strength": 0.5})
        for path in (outside, tmp_path / "no-such.png", Path("/etc/hostname"), Path("/nope"))
    ]
    assert len({(a.status_code, a.text) for a in answers}) == 1
    assert answers[0].status_code == 403
    assert "init_image must be a file under the models root" in answers[0].json()["error"]


def test_a_missing_init_image_inside_the_root_is_named(client, manager, fake_generate):
    missing = manager.root / "inputs" / "gone.png"
    response = client.post("/api/queue", json={**OK, "init_image": str(missing)})
    assert 400 <= response.status_code < 500
    assert response.json()["error"] == f"init image not found: {missing}"
    assert fake_generate.calls == []


@pytest.mark.parametrize("image_id", [2**63, 2**64, 10**30])
def test_image_ids_beyond_sqlite_integers_are_404(client, image_id):
    for method, path in [
        ("GET", f"/api/images/{image_id}"),
        ("GET", f"/api/images/{image_id}/recipe"),
        ("DELETE", f"/api/images/{image_id}"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert str(image_id) in response.json()["error"]


def test_a_check_of_the_whole_request_is_422_with_its_own_message(client):
    """Such checks carry the location `body`, like a body that is no JSON object at all."""
    response = client.post("/api/queue", json={**OK, "strength": 0.5})
    assert response.status_code == 422
    assert "strength only applies with an init_image" in response.json()["error"]
