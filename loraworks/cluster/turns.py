"""The order in which the jobs held by one replica run: its patched stack first.

Ray Serve's router sends a job to a replica that reports the job's stack (multiplexing) while
that replica has room; jobs of several stacks still wait in each replica (up to
`max_ongoing_requests`). Run first-come-first-served, two interleaved stacks would switch on
every job; so the next job is the oldest one with the stack now patched, or the oldest of all.
A job passed over `patience` times runs next whatever its stack: no starvation.

The key is the job's multiplexed id: jobs sent without one (key "") all look alike and run
first come, first served, as on a stack-blind server (docs/cluster.md, "Affinity").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class _Turn:
    stack_id: str
    ready: asyncio.Future[None]
    passed: int = 0


@dataclass
class StackTurns:
    patience: int
    current: str | None = None  # the stack of the job running or last run
    _busy: bool = False
    _waiting: list[_Turn] = field(default_factory=list)

    @asynccontextmanager
    async def turn(self, stack_id: str) -> AsyncIterator[None]:
        """Hold the replica's one generation slot for a job of `stack_id`."""
        if self._busy or self._waiting:
            waiting = _Turn(stack_id, asyncio.get_running_loop().create_future())
            self._waiting.append(waiting)
            try:
                await waiting.ready
            except asyncio.CancelledError:
                if waiting in self._waiting:
                    self._waiting.remove(waiting)
                elif not waiting.ready.cancelled():  # given the slot as it was cancelled
                    self._next()
                raise
        self._busy, self.current = True, stack_id
        try:
            yield
        finally:
            self._next()

    def _next(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        oldest = self._waiting[0]
        same = (t for t in self._waiting if t.stack_id == self.current)
        pick = oldest if oldest.passed >= self.patience else next(same, oldest)
        for turn in self._waiting[: self._waiting.index(pick)]:
            turn.passed += 1
        self._waiting.remove(pick)
        pick.ready.set_result(None)
