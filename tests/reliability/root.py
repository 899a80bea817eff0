"""A models root with the tiny SD1 model and LoRAs of several kinds, for the generation,
concurrency and crash tests (one main model keeps these light)."""

from __future__ import annotations

import random
from pathlib import Path

from safetensors.torch import save_file

from loraworks.generation import GenerateRequest
from loraworks.models import ModelManager
from tests.fixtures.models import Components, build_pipeline
from tests.generation.loras import write_lora
from tests.reliability.kinds import random_state_dict

MAIN = "tiny-sd1"
KOHYA = ("k0", "k1", "k2", "k3")
LYCORIS = ("ly0", "ly1")
LORAS = KOHYA + LYCORIS


def build_sd1_root(root: Path, work: Path) -> ModelManager:
    """`tiny-sd1` (diffusers folder, registered in place), kohya LoRAs `k0`…`k3` on attention
    and text encoder, and LyCORIS-layout LoRAs `ly0`, `ly1` mixing every layer kind."""
    mm = ModelManager.open(root, scan=False)
    pipe = build_pipeline("sd1", work / "pipe")
    folder = work / MAIN
    pipe.save_pretrained(folder)
    mm.install(folder, name=MAIN, type="main", copy=False)
    for i, name in enumerate(KOHYA):
        mm.install(write_lora(pipe, work / f"{name}.safetensors", seed=100 + i), name=name)
    components = Components("sd1", pipe.unet, pipe.text_encoder)
    for i, name in enumerate(LYCORIS):
        sd, _ = random_state_dict(components, random.Random(i), modules=10)
        save_file(sd, str(work / f"{name}.safetensors"))
        mm.install(work / f"{name}.safetensors", name=name)
    return mm


def request(loras: list[tuple[str, float]], seed: int = 7, steps: int = 2) -> GenerateRequest:
    """A 64 px request with `loras` as (name, weight)."""
    return GenerateRequest(
        model=MAIN,
        prompt="a red circle on a white background",
        width=64,
        height=64,
        steps=steps,
        cfg=2.0,
        scheduler="euler",
        seed=seed,
        loras=[{"name": n, "weight": w} for n, w in loras],
    )
