"""Exact restore under stress, long version: random apply/restore sequences on tiny SD1 models
in fp32, fp16 and bf16, for docs/reliability.md.

    .venv/bin/python bench/restore_stress.py --sequences 1000
    .venv/bin/python bench/restore_stress.py --sequences 300 --length 8 --cancels 20

Sequences (tests/reliability/stress.py) are split evenly over the three dtypes; each mixes
`LoRAPatcher.set` with random stacks of every layer kind (LoRA, LoCon, Tucker LoCon, LoHa,
LoKr, IA3, full diff, DoRA, norm), refused stacks, exceptions inside `apply_loras`, refused
nested `apply_loras`, re-sets and restores, and ends with a bit-exact check of every parameter
and of the `Parameter` objects. `--cancels N` also cancels N generations mid-way (at a random
step, with a random stack) on a tiny SD1 root and checks the loaded weights bit-exactly.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loraworks.generation import GenerationCancelled, generate
from loraworks.generation.cache import cache_for
from tests.reliability.outcomes import Model
from tests.reliability.root import LORAS, MAIN, build_sd1_root, request
from tests.reliability.stress import DTYPES, Rig


def run_sequences(total: int, length: int, seed: int) -> tuple[Counter, Counter, list[str]]:
    ops: Counter = Counter()
    kinds: Counter = Counter()
    failures: list[str] = []
    for i, dtype in enumerate(sorted(DTYPES)):
        rig = Rig.build(dtype, pool=12, seed=seed + i)
        kinds += rig.kinds
        rng = random.Random(f"{seed}/{dtype}")
        share = total // len(DTYPES) + (i < total % len(DTYPES))
        for n in range(share):
            try:
                ops += rig.run_sequence(rng, length)
            except AssertionError as exc:
                failures.append(f"{dtype} sequence {n}: {exc}")
                rig.patcher.restore()
        print(f"{dtype}: {share} sequences, {len(failures)} failures so far", flush=True)
    return ops, kinds, failures


def run_cancels(count: int, seed: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="cancel-"))
    mm = build_sd1_root(work / "root", work / "files")
    patcher = cache_for(mm).model(mm.get(MAIN, type="main")).patcher
    model = Model.of(dict(patcher.components))
    rng = random.Random(seed)
    failures = []
    for n in range(count):
        if rng.random() < 0.5:  # leave a finished stack applied first
            generate(request([(rng.choice(LORAS), 0.7)], seed=n), manager=mm)
        stack = [(name, rng.choice([-1.0, 0.5, 1.2])) for name in rng.sample(LORAS, 2)]
        cancel, at = threading.Event(), rng.randint(1, 3)

        def on_step(event, at=at, cancel=cancel):
            if event.step >= at:
                cancel.set()

        try:
            generate(request(stack, steps=4), manager=mm, progress=on_step, cancel=cancel)
            failures.append(f"cancel {n}: the generation was not cancelled")
        except GenerationCancelled:
            pass
        try:
            model.assert_untouched(f"cancel {n} at step {at}")
        except AssertionError as exc:
            failures.append(str(exc))
    mm.close()
    shutil.rmtree(work, ignore_errors=True)
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--length", type=int, default=6, help="operations per sequence")
    ap.add_argument("--cancels", type=int, default=0, help="cancelled generations")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ops, kinds, failures = run_sequences(args.sequences, args.length, args.seed)
    if args.cancels:
        failures += run_cancels(args.cancels, args.seed)
    seconds = time.perf_counter() - t0
    print(
        f"\n{args.sequences} sequences x {args.length} operations, fp32/fp16/bf16, {seconds:.0f} s"
    )
    print("operations: " + ", ".join(f"{k} {v}" for k, v in sorted(ops.items())))
    print("layer kinds in the pools: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    if args.cancels:
        print(f"cancelled generations: {args.cancels}")
    print(f"failures: {len(failures)}")
    for line in failures[:20]:
        print("  " + line[:240])


if __name__ == "__main__":
    main()
