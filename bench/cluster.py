"""Generation on a local Ray Serve cluster: images/s and stack switches, 1 vs 2 replicas,
affinity (the stack as multiplexed id) vs none; same-stack batching at batch 1…8; for
docs/benchmarks.md.

    .venv/bin/python bench/cluster.py --users 8 --stacks 8 --requests 3 --steps 4 --cpus 2
    .venv/bin/python bench/cluster.py --batching --steps 4 --cpus 2

8 simulated users, user u with stack u mod `--stacks` on the demo model (demo-star and
demo-lcm at weights of their own), send their requests one after another, all users at once.
Each configuration gets a fresh deployment (same Ray cluster); its switches are the replicas'
own counts (a job whose stack was not the one patched there).

`--batching`: one replica, `batch_window_ms` 100; B requests of one stack and settings sent at
once (B = 1…8), `--rounds` times; images/s with batching on vs off, and the batches formed.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from loraworks.cluster.head import Cluster, ClusterOptions
from loraworks.demo.run import BASE_NAME, LCM_NAME, STAR_NAME, install_demo
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager


def user_stack(user: int) -> list[dict]:
    """Stack number `user`: the weights differ."""
    star = {"name": STAR_NAME, "weight": round(0.4 + 0.1 * user, 2)}
    return [star] if user % 2 else [star, {"name": LCM_NAME, "weight": 0.3}]


def request(stack: int, seed: int, steps: int) -> GenerateRequest:
    return GenerateRequest(
        model=BASE_NAME,
        prompt="a red circle on a blue square",
        loras=user_stack(stack),
        seed=seed,
        steps=steps,
        cfg=2.0,
        scheduler="euler",
    )


def started(mm: ModelManager, options: ClusterOptions, **settings) -> Cluster:
    """A fresh deployment with the model loaded on each replica (not timed)."""
    cluster = Cluster(mm, options)
    cluster.settings = cluster.settings.model_copy(update=settings)
    cluster.start()
    warm = GenerateRequest(model=BASE_NAME, prompt="warm-up", steps=1, seed=0)
    with ThreadPoolExecutor(cluster.concurrency) as pool:
        list(pool.map(lambda _: cluster.generate(warm, manager=mm), range(cluster.concurrency)))
    return cluster


def run(mm: ModelManager, options: ClusterOptions, args) -> tuple[float, int, int]:
    cluster = started(mm, options)
    try:
        before = sum(r["switches"] for r in cluster.snapshot()["replicas"])

        def user(n: int) -> None:
            for i in range(args.requests):
                cluster.generate(request(n % args.stacks, 100 * n + i, args.steps), manager=mm)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            list(pool.map(user, range(args.users)))
        seconds = time.perf_counter() - start
        switches = sum(r["switches"] for r in cluster.snapshot()["replicas"]) - before
        return args.users * args.requests / seconds, switches, args.users * args.requests
    finally:
        cluster.shutdown()


def batching(mm: ModelManager, args) -> None:
    """Images/s for B same-stack requests sent at once, batching on vs off, B = 1…8."""
    print("| requests at once (B) | batching | images/s | batches formed / rounds |")
    print("|---|---|---|---|")
    for window in (100.0, 0.0):
        options = ClusterOptions(app=f"bench-batch-{window:g}", cpus_per_replica=1)
        cluster = started(mm, options, batch_window_ms=window, max_ongoing_requests=15)
        try:
            for size in range(1, 9):
                before = cluster.snapshot()["replicas"][0]["batches"]
                seeds = range(args.rounds * size)
                start = time.perf_counter()
                generate = partial(cluster.generate, manager=mm)
                for r in range(args.rounds):
                    with ThreadPoolExecutor(size) as pool:
                        batch = [request(0, seed, args.steps) for seed in seeds[r * size :][:size]]
                        list(pool.map(generate, batch))
                rate = args.rounds * size / (time.perf_counter() - start)
                formed = cluster.snapshot()["replicas"][0]["batches"] - before
                mode = f"{window:g} ms" if window else "off"
                print(f"| {size} | {mode} | {rate:.2f} | {formed} / {args.rounds} |", flush=True)
        finally:
            cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--stacks", type=int, default=8, help="user u has stack u mod this")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cpus", type=float, default=2, help="CPUs for the local Ray cluster")
    parser.add_argument("--batching", action="store_true", help="same-stack batching, B=1…8")
    parser.add_argument("--rounds", type=int, default=3, help="with --batching")
    args = parser.parse_args()
    ray.init(num_cpus=args.cpus, include_dashboard=False, namespace="loraworks")
    with tempfile.TemporaryDirectory() as tmp:
        mm = ModelManager.open(Path(tmp) / "root")
        install_demo(mm)
        if args.batching:
            batching(mm, args)
        else:
            print("| replicas | affinity | images/s | stack switches / jobs |")
            print("|---|---|---|---|")
            for replicas in (1, 2):
                for affinity in (True, False):
                    options = ClusterOptions(
                        app=f"bench-{replicas}-{affinity}",
                        replicas=replicas,
                        cpus_per_replica=args.cpus / 2,
                        affinity=affinity,
                    )
                    rate, switches, jobs = run(mm, options, args)
                    mode = "on" if affinity else "off"
                    print(f"| {replicas} | {mode} | {rate:.2f} | {switches} / {jobs} |", flush=True)
        mm.close()


if __name__ == "__main__":
    main()
