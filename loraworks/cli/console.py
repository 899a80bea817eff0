"""The CLI's two consoles and its one-line error and warning.

Rich reads `[...]` as markup, and what the CLI prints holds brackets it did not write: LoRA
file names (`[SDXL] detail.safetensors`), trigger words and training metadata from files,
config sections in messages (`[compute]`). Values are therefore printed with `markup=False` or
as `Text` cells: shown as written, never parsed (a stray `[/x]` in a file's metadata made
`models show` fail with a traceback).
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

out = Console()
err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def say(text: str, *, to_err: bool = False) -> None:
    """A line of plain text (paths, names, counts): no markup, no highlighting."""
    (err if to_err else out).print(text, highlight=False, markup=False, soft_wrap=True)
