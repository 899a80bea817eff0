"""A models root with a tiny SD1 main model and LoRAs, a fake `generate`, and a live server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from loraworks.generation.errors import GenerationCancelled
from loraworks.generation.events import StepEvent
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager
from loraworks.server import create_app
from tests.fixtures.models import build_pipeline
from tests.server.loras import write_kohya_lora

#: where a browser on this machine reaches the server; TestClient's default `testserver` is
#: refused by the DNS-rebinding guard (loraworks/server/hosts.py)
LOCAL_URL = "http://127.0.0.1"


@pytest.fixture(scope="session")
def sd1_folder(tmp_path_factory) -> Path:
    """A tiny SD1 diffusers folder (built once; installed in place by each root)."""
    folder = tmp_path_factory.mktemp("sd1") / "tiny-sd1"
    build_pipeline("sd1", folder).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lora_sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    return {
        "ink": write_kohya_lora(folder / "ink.safetensors", "sd1", seed=1, trigger="inkstyle"),
        "glow": write_kohya_lora(folder / "glow.safetensors", "sd1", seed=2),
        "xl": write_kohya_lora(folder / "xl-detail.safetensors", "sdxl", seed=3),
    }


@pytest.fixture
def manager(tmp_path, sd1_folder, lora_sources) -> Iterator[ModelManager]:
    mm = ModelManager.open(tmp_path / "root")
    mm.install(sd1_folder, copy=False)
    for source in lora_sources.values():
        mm.install(source)
    yield mm
    mm.close()


@dataclass
class FakeGenerate:
    """Stands in for `loraworks.generation.generate`: same signature, writes a small PNG per
    image, reports steps, honours cancel, and can be held at a gate to test the queue."""

    steps: int = 3
    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    calls: list[GenerateRequest] = field(default_factory=list)
    fail_with: Exception | None = None

    def __post_init__(self) -> None:
        self.gate.set()

    def __call__(self, request, *, manager, progress, cancel):
        self.calls.append(request)
        self.entered.set()
        self.gate.wait(10)
        if self.fail_with is not None:
            raise self.fail_with
        ids = []
        for image in range(request.batch_size):
            for step in range(1, self.steps + 1):
                if cancel.is_set():
                    raise GenerationCancelled("cancelled")
                progress(StepEvent(step, self.steps, 0.01, image=image, images=request.batch_size))
            path = manager.paths.outputs / f"fake-{len(self.calls)}-{image}.png"
            Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
            recipe = {"prompt": request.prompt, "loras": [s.model_dump() for s in request.loras]}
            ids.append(manager.images.add(path, recipe).id)
        return FakeResult(image_ids=ids, warnings=["a fake warning"])


@dataclass
class FakeResult:
    image_ids: list[int]
    warnings: list[str]


@pytest.fixture
def fake_generate() -> FakeGenerate:
    return FakeGenerate()


@pytest.fixture
def client(manager, fake_generate) -> Iterator[TestClient]:
    with TestClient(create_app(manager, generate=fake_generate), base_url=LOCAL_URL) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    manager: ModelManager


@contextmanager
def live_server(app, manager: ModelManager) -> Iterator[LiveServer]:
    """Serve `app` with uvicorn on a free loopback port in a thread, for the test's duration."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the live test server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", manager=manager)
    finally:
        server.should_exit = True
        thread.join(30)
