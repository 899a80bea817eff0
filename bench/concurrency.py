"""Concurrent API requests with different LoRA sets on one model, long version, for
docs/reliability.md.

    .venv/bin/python bench/concurrency.py --requests 32 --steps 4

Builds a tiny SD1 root (tests/reliability/root.py: kohya and LyCORIS-layout LoRAs), serves it
with uvicorn on 127.0.0.1, POSTs every request at once (one thread each; random LoRA sets of
0-3 LoRAs with random float or per-component weights), then runs each request alone through
`loraworks.generation.generate` and compares: recipe = exactly its own LoRAs, pixels identical.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.server.app import create_app
from tests.reliability.concurrent import mismatches, run_concurrently
from tests.reliability.root import LORAS, build_sd1_root
from tests.server.conftest import live_server


def random_sets(count: int, seed: int) -> list[list[tuple[str, object]]]:
    rng = random.Random(seed)
    sets = []
    for _ in range(count):
        loras: list[tuple[str, object]] = []
        for name in rng.sample(LORAS, rng.randint(0, 3)):
            weight: object = round(rng.uniform(-1.5, 1.5), 2)
            if rng.random() < 0.25:
                weight = {"unet": weight, "text_encoder": round(rng.uniform(-1, 1), 2)}
            loras.append((name, weight))
        sets.append(loras)
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="concurrency-"))
    mm = build_sd1_root(work / "root", work / "files")
    sets = random_sets(args.requests, args.seed)
    t0 = time.perf_counter()
    with live_server(create_app(mm), mm) as server:
        together = run_concurrently(server.url, sets, steps=args.steps)
    t1 = time.perf_counter()
    problems = mismatches(mm, sets, together, steps=args.steps)
    t2 = time.perf_counter()
    mm.close()
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"{args.requests} concurrent requests (64 px, {args.steps} steps, 0-3 LoRAs each): "
        f"{t1 - t0:.0f} s through the API, {t2 - t1:.0f} s run alone"
    )
    print(f"mismatches (recipe or pixels): {len(problems)}")
    for line in problems[:20]:
        print("  " + line)


if __name__ == "__main__":
    main()
