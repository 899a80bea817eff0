"""loraworks: a local Stable Diffusion image generator built around LoRAs and LCM-LoRAs."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `loraworks.generate` is the Python API; imported lazily so `import loraworks` stays cheap.
    if name == "generate":
        from loraworks.generation.api import generate

        return generate
    raise AttributeError(name)
