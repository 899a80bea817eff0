"""The `loraworks` command. Each command group lives in its own module and only calls the
Python API; this module just assembles them."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def _root() -> None:
    """loraworks: local SD1/SD2/SDXL generation around LoRAs and LCM-LoRAs."""


# Each module has `register(app)`, adding its commands or command group. Modules not written
# yet are skipped, so the command works while features are being built.
_COMMAND_MODULES = ("models", "generate", "train", "demo", "serve")


def _assemble() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"loraworks.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"loraworks.cli.{name}":
                raise
            continue
        module.register(app)


_assemble()


def main() -> None:
    app()
