"""A models root with the demo model and its LoRAs, four LoRA stacks on it, and one local Ray
cluster with two CPU replicas shared by every cluster test (starting one costs 15-40 s)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from loraworks.demo.run import BASE_NAME, LCM_NAME, STAR_NAME, install_demo
from loraworks.generation import generate
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager

#: four stacks on demo-shapes (weights differ, so each is its own multiplexed id)
STACKS = [
    [(STAR_NAME, 1.0)],
    [(STAR_NAME, 0.5)],
    [(LCM_NAME, 1.0)],
    [(STAR_NAME, 0.7), (LCM_NAME, 0.4)],
]

requires_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is not installed (the 'cluster' extra: pip install 'loraworks[cluster]')",
)


def request_for(stack: int, seed: int, steps: int = 3) -> GenerateRequest:
    """An explicit request (steps, CFG and scheduler set, so the LCM preset changes nothing)."""
    return GenerateRequest(
        model=BASE_NAME,
        prompt="a red circle on a blue square",
        loras=[{"name": name, "weight": weight} for name, weight in STACKS[stack]],
        seed=seed,
        steps=steps,
        cfg=2.0,
        scheduler="euler",
    )


def single_process(request: GenerateRequest, manager: ModelManager) -> Path:
    """The image the single-process path draws, with one torch thread as each replica has
    (CPU kernels sum in an order that depends on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return generate(request, manager=manager).images[0]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Iterator[ModelManager]:
    mm = ModelManager.open(tmp_path_factory.mktemp("cluster") / "root")
    install_demo(mm)
    yield mm
    mm.close()


@pytest.fixture(scope="module")
def cluster(demo_root):
    """The one local Ray cluster: two replicas of half a CPU each, affinity on."""
    from loraworks.cluster.head import Cluster, ClusterOptions

    cluster = Cluster(demo_root, ClusterOptions(replicas=2, cpus_per_replica=0.5))
    cluster.start()
    yield cluster
    cluster.shutdown()
