"""After a restart (clean, or a kill mid-generation) the queue still answers for every item:
finished ones as they were, queued or running ones as failed with the reason."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from loraworks.server import create_app
from tests.server.conftest import LOCAL_URL
from tests.server.sse import read_events

REQUEST = {"model": "tiny-sd1", "prompt": "a red circle"}


def _journal(manager):
    return manager.paths.databases / "queue.json"


def test_items_survive_a_restart_and_unfinished_ones_are_marked_failed(manager, fake_generate):
    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        done = client.post("/api/queue", json=REQUEST).json()
        read_events(client, done["id"])
    with TestClient(
        create_app(manager, generate=fake_generate, start_worker=False), base_url=LOCAL_URL
    ) as client:
        queued = client.post("/api/queue", json=REQUEST).json()

    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        before = client.get(f"/api/queue/{done['id']}").json()
        assert before["status"] == "done" and len(before["images"]) == 1
        assert [e["event"] for e in read_events(client, done["id"])] == ["done"]
        after = client.get(f"/api/queue/{queued['id']}").json()
        assert after["status"] == "failed"
        assert after["error"].startswith(
            "Interrupted: the server stopped while this item was queued"
        )
        (event,) = read_events(client, queued["id"])
        assert (event["event"], event["message"]) == ("failed", after["error"])
    assert (
        len(fake_generate.calls) == 1
    )  # the interrupted request was not re-run behind the user's back


def test_a_kill_during_generation_leaves_a_journal_that_says_failed(manager, fake_generate):
    fake_generate.gate.clear()
    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        item = client.post("/api/queue", json=REQUEST).json()
        assert fake_generate.entered.wait(10)
        at_kill = _journal(manager).read_text()  # what a SIGKILL now would leave behind
        fake_generate.gate.set()
    assert [i["status"] for i in json.loads(at_kill)] == ["running"]
    _journal(manager).write_text(at_kill)

    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        status = client.get(f"/api/queue/{item['id']}").json()
    assert status["status"] == "failed" and "was running" in status["error"]


def test_a_damaged_journal_is_ignored(manager, fake_generate):
    _journal(manager).write_text('[{"id": "x", "status": "runn')
    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as client:
        assert client.get("/api/queue").json() == []
        item = client.post("/api/queue", json=REQUEST).json()
        assert read_events(client, item["id"])[-1]["event"] == "done"
