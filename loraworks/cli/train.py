"""`loraworks train base|lora|lcm-lora`: the trainers of the bundled demo weights."""

from __future__ import annotations

import typer

from loraworks.demo.train_commands import app


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="train")
