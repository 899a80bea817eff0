"""Step windows on a cluster replica (no Ray needed): `Worker.run` and `Worker.run_together`
switch the patch between steps as `generate` does, so a windowed LoRA gives the
single-process pixels there too (#19)."""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

from loraworks.cluster.jobs import resolve_job
from loraworks.cluster.worker import Worker, WorkerSettings
from loraworks.generation import LoRASpec
from tests.cluster.conftest import request_for, single_process

WINDOW = {"unet": 1.0, "text_encoder": 1.0, "text_encoder_2": 1.0, "start": 2, "stop": 0.75}


def test_a_windowed_lora_on_a_replica_gives_the_single_process_pixels(demo_root):
    base = request_for(0, seed=4, steps=4)
    request = base.model_copy(update={"loras": [LoRASpec(name=base.loras[0].name, weight=WINDOW)]})
    plain = np.asarray(Image.open(single_process(base, demo_root)))
    want = np.asarray(Image.open(single_process(request, demo_root)))
    assert not np.array_equal(want, plain)  # the window changes the image

    worker = Worker(WorkerSettings(demo_root.config, demo_root.paths.cache), "r1", "node-a")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = resolve_job(request, demo_root)
        solo = worker.run(job, None, threading.Event())
        [together] = worker.run_together([job], [None], [threading.Event()])
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(np.asarray(solo.images[0].image), want)
    assert np.array_equal(np.asarray(together.images[0].image), want)
