"""Progress a user sees over HTTP while nothing else moves: where a named install is (stage and
bytes), and which component of the main model a queued generation is loading."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from loraworks.models.progress import InstallProgress
from loraworks.server import create_app
from tests.server.conftest import LOCAL_URL
from tests.server.sse import read_events


def _poll(client, path: str, until, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = client.get(path)
        if response.status_code == 200 and until(response.json()):
            return response.json()
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered as expected")


def test_a_named_install_says_where_it_is_while_it_runs(manager, monkeypatch):
    """The install is held half-way through hashing; meanwhile its progress route gives the
    stage and bytes the manager reported, a second install of the same name is refused, and
    once it has ended the route answers 404."""
    release = threading.Event()
    real_install, existing = manager.install, manager.get("ink")

    def install(source, copy=True, progress=None, cancel=None, **kw):
        progress(InstallProgress("hash", 5 * 2**20, 12 * 2**20, "big.safetensors"))
        release.wait(10)
        return existing

    monkeypatch.setattr(manager, "install", install)
    with TestClient(create_app(manager, start_worker=False), base_url=LOCAL_URL) as client:
        answers: list = []
        body = {"source": "/x/big.safetensors", "progress_id": "job-1"}
        post = threading.Thread(
            target=lambda: answers.append(client.post("/api/models/install", json=body))
        )
        post.start()
        step = _poll(client, "/api/models/install/job-1", lambda b: b["stage"] is not None)
        assert step == {
            "stage": "hash",
            "done": 5 * 2**20,
            "total": 12 * 2**20,
            "name": "big.safetensors",
        }
        twice = client.post("/api/models/install", json=body)
        assert twice.status_code == 409 and "already running" in twice.json()["error"]
        release.set()
        post.join(10)
        assert answers[0].status_code == 201 and answers[0].json()["name"] == "ink"
        gone = client.get("/api/models/install/job-1")
        assert gone.status_code == 404 and "job-1" in gone.json()["error"]
        bad = client.post("/api/models/install", json={**body, "progress_id": "../etc"})
        assert bad.status_code == 422
    monkeypatch.setattr(manager, "install", real_install)


def test_a_queued_generation_streams_the_components_it_loads(manager):
    """With the real `generate` and a model not loaded yet: `loading` events (component i of
    n, from the loader) come between `started` and the first step."""
    with TestClient(create_app(manager), base_url=LOCAL_URL) as client:
        body = {"model": "tiny-sd1", "prompt": "a red circle", "steps": 2, "width": 64}
        item = client.post("/api/queue", json={**body, "height": 64, "cfg": 1.0})
        assert item.status_code == 202, item.text
        events = read_events(client, item.json()["id"])
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done", events[-1]
    loading = [e for e in events if e["event"] == "loading"]
    assert loading, kinds
    assert kinds.index("started") < kinds.index("loading") < kinds.index("step")
    last = loading[-1]  # a late reader gets the last of the run: the UNet, 3 of 3
    assert (last["message"], last["step"], last["total"]) == ("loading the model: unet", 3, 3)
