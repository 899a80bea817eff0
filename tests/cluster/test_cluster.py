"""Generation on a local Ray Serve cluster (two CPU replicas) against the single-process path:
the same pixels, stack switches per replica, affinity, cancel, a replica lost mid-job."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from loraworks.cluster.errors import ClusterError
from loraworks.generation.errors import GenerationCancelled
from tests.cluster.conftest import STACKS, request_for, requires_ray, single_process

pytestmark = requires_ray


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def send_all(cluster, manager, requests) -> list:
    """Every request at once (as many in flight as the head allows), results in order."""
    with ThreadPoolExecutor(cluster.concurrency) as pool:
        return list(pool.map(lambda r: cluster.generate(r, manager=manager), requests))


def switches(cluster) -> int:
    return sum(r["switches"] for r in cluster.snapshot()["replicas"])


def test_24_requests_over_4_stacks_draw_the_single_process_pixels(cluster, demo_root):
    """8 users, each with a stack of their own (two users per stack), 3 requests each,
    interleaved and sent at once, first without a multiplexed id, then with: every image
    equals the single-process server's bit for bit; each replica records its jobs and stack
    switches (a job whose stack differs from the one patched); with affinity the switches are
    at most half of those without (measured 5-8 vs 20-24; docs/cluster.md, "Affinity").

    Each run follows one request per stack, sent one by one and not counted: a serving
    cluster's state, where the replicas have reported stacks. Right after a deployment starts
    Ray knows no ids and routes the first burst blind (8-11 vs 21-23 measured that way)."""
    requests = [
        request_for(user % len(STACKS), seed=10 * user + n) for n in range(3) for user in range(8)
    ]
    serving = [request_for(stack, seed=90 + stack) for stack in range(len(STACKS))]
    blind = replace(cluster.options, affinity=False)
    with_id, cluster.options = cluster.options, blind
    try:
        for request in serving:
            cluster.generate(request, manager=demo_root)
        before = switches(cluster)
        send_all(cluster, demo_root, requests)
        without_id = switches(cluster) - before
    finally:
        cluster.options = with_id
    for request in serving:
        cluster.generate(request, manager=demo_root)
    before, jobs_before = switches(cluster), cluster.snapshot()["replicas"]
    results = send_all(cluster, demo_root, requests)
    for request, result in zip(requests, results, strict=True):
        assert len(result.images) == 1
        expected = single_process(request, demo_root)
        assert np.array_equal(pixels(result.images[0]), pixels(expected)), request
    after = cluster.snapshot()["replicas"]
    assert len(after) == 2, after
    jobs = sum(r["jobs"] for r in after) - sum(r["jobs"] for r in jobs_before)
    with_affinity = switches(cluster) - before
    print(f"stack switches for 24 jobs: affinity {with_affinity}, no multiplexed id {without_id}")
    assert jobs == len(requests)
    assert with_affinity > 0 and 2 * with_affinity <= without_id
    assert all(r["models"] == ["demo-shapes"] and r["stack"] for r in after)


def test_one_hot_stack_spills_over_to_the_other_replica(cluster, demo_root):
    """16 requests of one stack at once: the replica reporting it holds at most
    `max_ongoing_requests`, the rest spill over, so both replicas work (no starvation)."""
    cluster.generate(request_for(0, seed=199), manager=demo_root)
    time.sleep(1.0)  # the replica that ran it has reported the stack to the router
    before = {r["id"]: r["jobs"] for r in cluster.snapshot()["replicas"]}
    send_all(cluster, demo_root, [request_for(0, seed=200 + n) for n in range(16)])
    ran = {r["id"]: r["jobs"] - before.get(r["id"], 0) for r in cluster.snapshot()["replicas"]}
    assert sum(ran.values()) == 16
    print(f"16 jobs of one stack per replica: {sorted(ran.values())}")
    assert len(ran) == 2 and min(ran.values()) >= 1, ran


def test_same_stack_jobs_arriving_together_run_as_one_batch(demo_root):
    """`batch_window_ms`: 4 jobs of one stack and settings sent at once to one replica run as
    UNet batches (the `batches` counter), each image its single-process run's up to the
    batch's float rounding (1 level: tests/generation/test_batched.py)."""
    from loraworks.cluster.head import Cluster, ClusterOptions

    cluster = Cluster(demo_root, ClusterOptions(app="loraworks-batch", cpus_per_replica=0))
    cluster.settings = cluster.settings.model_copy(update={"batch_window_ms": 300.0})
    cluster.start()
    try:
        requests = [request_for(3, seed=60 + n) for n in range(4)]
        results = send_all(cluster, demo_root, requests)
        [replica] = cluster.snapshot()["replicas"]
        assert replica["batches"] >= 1 and replica["jobs"] == 4
        for request, result in zip(requests, results, strict=True):
            expected = pixels(single_process(request, demo_root)).astype(np.int16)
            assert np.abs(pixels(result.images[0]).astype(np.int16) - expected).max() <= 1
    finally:
        cluster.shutdown()


def test_cancel_reaches_the_worker_between_steps(cluster, demo_root):
    cancel = threading.Event()
    steps = []

    def progress(event) -> None:
        steps.append(event.step)
        cancel.set()

    with pytest.raises(GenerationCancelled):
        cluster.generate(
            request_for(0, seed=5, steps=100), manager=demo_root, progress=progress, cancel=cancel
        )
    assert 1 <= len(steps) < 100
    # the replica restored its weights: the next job there draws the reference pixels
    request = request_for(0, seed=6)
    result = cluster.generate(request, manager=demo_root)
    assert np.array_equal(pixels(result.images[0]), pixels(single_process(request, demo_root)))


def test_a_replica_killed_mid_job_loses_nothing(cluster, demo_root):
    """The job's replica is killed after its first step: the job runs again on another
    replica, same seed, same pixels, one image in the gallery."""
    import ray

    killed = []

    def progress(event) -> None:
        if not killed:
            [replica] = cluster.snapshot()["replicas_busy"]
            name = f"SERVE_REPLICA::{cluster.options.app}#Generator#{replica}"
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            killed.append(replica)

    gallery = len(demo_root.images.list(0, 10_000))
    request = request_for(1, seed=7, steps=20).model_copy(update={"batch_size": 2})
    result = cluster.generate(request, manager=demo_root, progress=progress)
    assert killed
    assert len(result.images) == 2
    assert len(demo_root.images.list(0, 10_000)) == gallery + 2
    snapshot = cluster.snapshot()
    assert snapshot["jobs_retried"] == 1 and snapshot["replicas_lost"] == 1
    for seed, path in zip((7, 8), result.images, strict=True):
        expected = single_process(request_for(1, seed=seed, steps=20), demo_root)
        assert np.array_equal(pixels(path), pixels(expected))


def test_no_ready_replica_fails_after_the_timeout_naming_the_setting(demo_root):
    """A deployment asking for a GPU per replica on a machine without one never gets a
    replica: the job waits (visible in the snapshot) and then fails with the setting's name."""
    from loraworks.cluster.head import Cluster, ClusterOptions

    cluster = Cluster(demo_root, ClusterOptions(app="loraworks-gpu", gpus_per_replica=1))
    cluster.settings = cluster.settings.model_copy(update={"ready_timeout_s": 3.0})
    cluster.start()
    try:
        seen = []
        threading.Timer(1.0, lambda: seen.append(cluster.snapshot())).start()
        with pytest.raises(ClusterError, match="ready_timeout_s"):
            cluster.generate(request_for(0, seed=1), manager=demo_root)
        assert seen and seen[0]["jobs_waiting_for_replica"] == 1
    finally:
        cluster.shutdown()


def test_a_restarted_head_runs_the_queued_jobs_on_the_cluster(cluster, demo_root):
    """Jobs queued in the journal of a head that stopped run when a head with the cluster
    starts on the same root: each once, pixels as the single-process path draws them."""
    from fastapi.testclient import TestClient

    from loraworks.server import create_app
    from tests.server.conftest import LOCAL_URL

    stopped = create_app(demo_root, start_worker=False)
    requests = [request_for(2, seed=40), request_for(3, seed=41)]
    with TestClient(stopped, base_url=LOCAL_URL) as client:
        ids = [
            client.post("/api/queue", json=r.model_dump(mode="json")).json()["id"] for r in requests
        ]
    gallery = len(demo_root.images.list(0, 10_000))
    with TestClient(create_app(demo_root, cluster=cluster), base_url=LOCAL_URL) as client:
        deadline = time.monotonic() + 120
        while {client.get(f"/api/queue/{i}").json()["status"] for i in ids} != {"done"}:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        items = [client.get(f"/api/queue/{i}").json() for i in ids]
    assert len(demo_root.images.list(0, 10_000)) == gallery + 2
    for request, item in zip(requests, items, strict=True):
        [image] = item["images"]
        path = demo_root.images.get(image["id"]).path
        assert np.array_equal(pixels(path), pixels(single_process(request, demo_root)))
