"""Generation on a local Ray Serve cluster: images/s and stack switches, 1 vs 2 replicas,
affinity (the stack as multiplexed id) vs none, for docs/benchmarks.md.

    .venv/bin/python bench/cluster.py --users 8 --requests 3 --steps 4 --cpus 2

8 simulated users each own a LoRA stack on the demo model (demo-star and demo-lcm at weights
of their own) and send their requests one after another, all users at once. Each
configuration gets a fresh deployment (same Ray cluster); its switches are the replicas' own
counts (a job whose stack was not the one patched there). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from loraworks.cluster.head import Cluster, ClusterOptions
from loraworks.demo.run import BASE_NAME, LCM_NAME, STAR_NAME, install_demo
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager


def user_stack(user: int) -> list[dict]:
    """A stack of its own for each user: the weights differ."""
    star = {"name": STAR_NAME, "weight": round(0.4 + 0.1 * user, 2)}
    return [star] if user % 2 else [star, {"name": LCM_NAME, "weight": 0.3}]


def run(mm: ModelManager, options: ClusterOptions, args) -> tuple[float, int, int]:
    cluster = Cluster(mm, options)
    cluster.start()
    try:
        warm = GenerateRequest(model=BASE_NAME, prompt="warm-up", steps=1, seed=0)
        for _ in range(options.replicas * 2):
            cluster.generate(warm, manager=mm)  # model loaded on each replica, not timed
        before = sum(r["switches"] for r in cluster.snapshot()["replicas"])

        def user(n: int) -> None:
            for i in range(args.requests):
                request = GenerateRequest(
                    model=BASE_NAME,
                    prompt="a red circle on a blue square",
                    loras=user_stack(n),
                    seed=100 * n + i,
                    steps=args.steps,
                    cfg=2.0,
                    scheduler="euler",
                )
                cluster.generate(request, manager=mm)

        start = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            list(pool.map(user, range(args.users)))
        seconds = time.perf_counter() - start
        switches = sum(r["switches"] for r in cluster.snapshot()["replicas"]) - before
        return args.users * args.requests / seconds, switches, args.users * args.requests
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cpus", type=float, default=2, help="CPUs for the local Ray cluster")
    args = parser.parse_args()
    ray.init(num_cpus=args.cpus, include_dashboard=False, namespace="loraworks")
    with tempfile.TemporaryDirectory() as tmp:
        mm = ModelManager.open(Path(tmp) / "root")
        install_demo(mm)
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
