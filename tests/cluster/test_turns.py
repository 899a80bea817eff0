"""The order of the jobs waiting in one replica: the patched stack first, no job passed over
more than `patience` times."""

from __future__ import annotations

import asyncio

from loraworks.cluster.turns import StackTurns


async def _order(patience: int, arrivals: list[str], key=lambda name: name[0]) -> list[str]:
    """The order jobs named `arrivals` run in; a job's key (its multiplexed id) by `key`."""
    turns, ran = StackTurns(patience), []
    everyone_waits = asyncio.Event()

    async def job(name: str) -> None:
        async with turns.turn(key(name)):
            ran.append(name)
            await everyone_waits.wait()

    tasks = []
    for name in arrivals:  # each waits in arrival order behind the first
        tasks.append(asyncio.create_task(job(name)))
        await asyncio.sleep(0)
    everyone_waits.set()
    await asyncio.gather(*tasks)
    return ran


def test_waiting_jobs_of_the_patched_stack_go_first():
    arrivals = ["A1", "B1", "A2", "B2", "A3"]
    assert asyncio.run(_order(10, arrivals)) == ["A1", "A2", "A3", "B1", "B2"]


def test_a_job_passed_over_patience_times_runs_next():
    arrivals = ["A1", "B1", "A2", "A3", "A4"]
    assert asyncio.run(_order(2, arrivals)) == ["A1", "A2", "A3", "B1", "A4"]


def test_a_cancelled_waiting_job_leaves_the_line():
    async def scenario() -> list[str]:
        turns, ran = StackTurns(4), []
        gate = asyncio.Event()

        async def job(name: str) -> None:
            async with turns.turn(name[0]):
                ran.append(name)
                await gate.wait()

        first = asyncio.create_task(job("A1"))
        await asyncio.sleep(0)
        waiting = asyncio.create_task(job("B1"))
        last = asyncio.create_task(job("C1"))
        await asyncio.sleep(0)
        waiting.cancel()
        gate.set()
        await asyncio.gather(first, last)
        return ran

    assert asyncio.run(scenario()) == ["A1", "C1"]


def test_jobs_without_a_multiplexed_id_run_in_arrival_order():
    """Key "" (sent without a multiplexed id): no stack to group by, first come first served."""
    arrivals = ["A1", "B1", "A2", "B2"]
    assert asyncio.run(_order(10, arrivals, key=lambda name: "")) == arrivals
