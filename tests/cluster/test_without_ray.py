"""What needs no Ray: the clear error without it, the server never importing it, the route,
the journal's jobs run again after a restart, a file whose hash differs on a node."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from loraworks.cluster.errors import FileMismatch, RayMissing
from loraworks.cluster.jobs import resolve_job
from loraworks.cluster.worker import Worker, WorkerSettings
from loraworks.server import create_app
from loraworks.server.events import EventBus
from loraworks.server.journal import QueueJournal
from loraworks.server.queue import GenerationQueue, RunOutcome
from tests.cluster.conftest import request_for
from tests.server.conftest import LOCAL_URL


def test_cluster_without_ray_is_an_error_naming_the_extra(demo_root, monkeypatch, tmp_path):
    from loraworks.cluster.head import Cluster, ClusterOptions

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayMissing, match=r"loraworks\[cluster\]"):
        Cluster(demo_root, ClusterOptions())
    result = CliRunner().invoke(cli_app, ["serve", "--cluster", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "loraworks[cluster]" in result.output and "Traceback" not in result.output


def test_the_package_the_server_and_the_cli_never_import_ray(tmp_path):
    code = (
        "import sys, loraworks, loraworks.cli, loraworks.cluster.head\n"
        "from loraworks.models import ModelManager\n"
        "from loraworks.server import create_app\n"
        f"create_app(ModelManager.open({str(tmp_path)!r}), start_worker=False)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class FakeCluster:
    concurrency = 2

    def snapshot(self):
        return {"replicas": [{"id": "r1", "node": "n", "models": [], "stack": [], "jobs": 0}]}

    def generate(self, request, *, manager, progress, cancel):
        raise AssertionError("not called")


def test_get_api_cluster_shows_the_cluster_and_404_without_one(demo_root):
    app = create_app(demo_root, start_worker=False, cluster=FakeCluster())
    response = TestClient(app, base_url=LOCAL_URL).get("/api/cluster")
    assert response.status_code == 200
    assert response.json()["replicas"][0]["id"] == "r1"
    plain = TestClient(create_app(demo_root, start_worker=False), base_url=LOCAL_URL)
    response = plain.get("/api/cluster")
    assert response.status_code == 404 and "--cluster" in response.text


def test_a_restarted_queue_with_resume_runs_the_jobs_it_had_not_finished(tmp_path):
    """Two queued and one running when the head stopped: with `resume` all three run again,
    in their order, on as many workers as asked; without it they fail (as before)."""
    journal = QueueJournal(tmp_path / "queue.json")
    first = GenerationQueue(lambda *_: RunOutcome([]), EventBus(), journal)
    items = [first.submit(request_for(0, seed)) for seed in range(3)]
    saved = journal.load()
    saved[0].status = "running"
    journal.save(saved)

    ran: list[int] = []
    done = threading.Event()

    def run(request, progress, cancel):
        ran.append(request.seed)
        if len(ran) == 3:
            done.set()
        return RunOutcome([])

    queue = GenerationQueue(run, EventBus(), journal, workers=2, resume=True)
    assert [i.status for i in queue.list()] == ["queued"] * 3
    queue.start()
    assert done.wait(10)
    queue.stop()
    assert sorted(ran) == [0, 1, 2]
    assert [queue.get(i.id).status for i in items] == ["done"] * 3
    journal.save(saved)
    assert {i.status for i in GenerationQueue(run, EventBus(), journal).list()} == {"failed"}


def test_a_model_file_whose_hash_differs_on_the_node_is_refused_naming_node_and_file(demo_root):
    job = resolve_job(request_for(0, seed=1), demo_root)
    worker = Worker(WorkerSettings(demo_root.config, demo_root.paths.cache), "r1", "node-b")
    lora = job.loras[0]
    stale = replace(
        job, loras=[replace(lora, record=lora.record.model_copy(update={"hash": "blake3:00"}))]
    )
    with pytest.raises(FileMismatch) as refused:
        worker.run(stale, None, threading.Event())
    message = str(refused.value)
    assert "node-b" in message and str(lora.record.path) in message
    assert worker.snapshot().jobs == 0
    result = worker.run(job, None, threading.Event())  # the right file runs
    assert len(result.images) == 1 and worker.snapshot().switches == 1
