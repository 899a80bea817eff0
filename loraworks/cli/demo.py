"""`loraworks demo`: install the bundled demo model and its two LoRAs, draw a comparison grid.

The logic lives in `loraworks.demo.run`; this module only turns errors into one-line messages.
"""

from __future__ import annotations

from pathlib import Path

import typer

from loraworks.cli.console import fail


def register(app: typer.Typer) -> None:
    app.command()(demo)


def demo(
    root: Path | None = typer.Option(
        None, "--root", envvar="LORAWORKS_ROOT", help="models root (default ~/loraworks)"
    ),
    seed: int = typer.Option(0, help="seed of every picture in the grid"),
) -> None:
    """Install demo-shapes, demo-star and demo-lcm; draw base vs LCM-LoRA vs concept LoRA."""
    from loraworks.demo.run import run_demo

    try:
        run_demo(root, echo=typer.echo, seed=seed)
    except ValueError as exc:  # ModelError, LoRAError and GenerationError are ValueErrors
        fail(str(exc))
