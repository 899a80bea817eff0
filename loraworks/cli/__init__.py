"""The `loraworks` command. Each command group lives in its own module and only calls the
Python API; this module just assembles them."""

from __future__ import annotations

import importlib
import os

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.callback()
def _root() -> None:
    """loraworks: local SD1/SD2/SDXL generation around LoRAs and LCM-LoRAs."""


# Each command module has `register(app)`, adding its commands or its command group.
for _name in ("models", "lora", "generate", "train", "demo", "serve"):
    importlib.import_module(f"loraworks.cli.{_name}").register(app)


def main() -> None:
    # transformers' and diffusers' notes for library developers (e.g. that their image
    # processors would like torchvision, which loraworks never uses) are not for this command's
    # users; an explicit setting in the environment wins
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    app()
