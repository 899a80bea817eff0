"""The progress bar of `loraworks models install`: one line on stderr for the stage under way
(bytes, speed, file), gone when the install ends so that the result line stands alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from loraworks.cli.console import err

if TYPE_CHECKING:  # the models package pulls in torch: the CLI imports it only when used
    from loraworks.models.progress import InstallProgress, ProgressCallback


class _StageBar:
    """One task at a time: each stage starts a fresh one, so bar and speed start from zero."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.stage = ""
        self.task: TaskID | None = None

    def __call__(self, event: InstallProgress) -> None:
        if self.task is None or event.stage != self.stage:
            if self.task is not None:
                self.bar.remove_task(self.task)
            self.stage = event.stage
            self.task = self.bar.add_task(event.stage, total=event.total, file="")
        self.bar.update(self.task, completed=event.done, total=event.total, file=event.name)


@contextmanager
def install_bar(show: bool) -> Iterator[ProgressCallback | None]:
    """The callback that draws the bar; None (no bar) unless `show` and stderr is a terminal,
    so that logs and `--json` get nothing extra."""
    if not (show and err.is_terminal):
        yield None
        return
    columns = (
        TextColumn("{task.description:<8}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[file]}", markup=False),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        yield _StageBar(bar)
