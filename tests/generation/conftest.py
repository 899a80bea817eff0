"""Tiny SD1/SD2/SDXL pipelines shared by the generation tests (built once per session; tests
that patch weights restore them, and the weight-identity tests check exactly that)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraworks.generation import GenerateRequest
from loraworks.models import ModelRecord
from tests.fixtures.models import BASES, build_pipeline

SIZE = 64


def fake_record(name: str, type_: str = "lora", **kw) -> ModelRecord:
    """A record that was never installed (for code that only reads record fields)."""
    fields = dict(
        key=name,
        name=name,
        type=type_,
        base="sd1",
        format="kohya",
        path=Path(name),
        in_place=True,
        hash="h",
        size=1,
        source="",
        created_at="",
        updated_at="",
    )
    return ModelRecord(**{**fields, **kw})


class FakePipe:
    """Just enough pipeline for the model cache: one module of `numel` fp32 weights."""

    def __init__(self, numel: int):
        self.unet = torch.nn.Linear(numel, 1, bias=False)

    @property
    def components(self) -> dict:
        return {"unet": self.unet}

    def to(self, _device):
        return self


def tiny_request(base: str, **kw) -> GenerateRequest:
    """A cheap request on the `mm` root's tiny model for `base` (fields overridable)."""
    fields = dict(
        model=f"tiny-{base}",
        prompt="a red circle",
        width=SIZE,
        height=SIZE,
        steps=2,
        cfg=1.0,
        scheduler="euler",
        seed=3,
    )
    return GenerateRequest(**{**fields, **kw})


@pytest.fixture(scope="session")
def pipes(tmp_path_factory) -> dict:
    root: Path = tmp_path_factory.mktemp("pipes")
    return {base: build_pipeline(base, root / base) for base in BASES}


@pytest.fixture(scope="session")
def mm(tmp_path_factory):
    """A models root with tiny SD1/SD2/SDXL main models and four LoRAs per base."""
    from tests.generation.loras import build_root

    manager = build_root(tmp_path_factory.mktemp("root"), tmp_path_factory.mktemp("work"))
    yield manager
    manager.close()


def pipeline_weights(pipe) -> dict[str, torch.Tensor]:
    """Every tensor of a pipeline's models, keyed `component.name`."""
    return {
        f"{comp}.{name}": t.detach().clone()
        for comp in ("unet", "text_encoder", "text_encoder_2", "vae")
        if getattr(pipe, comp, None) is not None
        for name, t in getattr(pipe, comp).state_dict().items()
    }


@pytest.fixture(scope="session")
def pristine(mm) -> dict[str, dict[str, torch.Tensor]]:
    """Each main model's weights read afresh from its files: the truth a patched-and-restored
    model must equal bit for bit."""
    from loraworks.models.loading import load_pipeline

    return {
        base: pipeline_weights(load_pipeline(mm.get(f"tiny-{base}", type="main"), mm.paths.cache))
        for base in BASES
    }
