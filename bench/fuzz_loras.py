"""Hostile LoRA files, many of them: counts by outcome and every failure, for
docs/reliability.md.

    .venv/bin/python bench/fuzz_loras.py --cases 10000
    .venv/bin/python bench/fuzz_loras.py --cases 2400 --stages engine,install --json out.json

Each case (tests/reliability/hostile.py: 24 mutations of a valid kohya SD1 file, cycled, with
seeds 0, 1, …) goes through the stages asked for: `engine` (load_lora, then patch and restore a
tiny fp16 SD1 model, checking every parameter bit-exactly after a refusal), `install`
(mm.install: refusal leaves no record, no file), `scan` (dropped into autoimport/lora, scanned
in batches: refusals become error records) and `api` (POST /api/models/install: 2xx or 4xx
JSON, server keeps serving). A failure is anything else (tests/reliability/outcomes.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient

from loraworks.models import ModelManager
from loraworks.server.app import create_app
from tests.fixtures.models import build_components
from tests.reliability.hostile import all_cases
from tests.reliability.outcomes import (
    Failure,
    Model,
    api_outcome,
    engine_outcome,
    install_outcome,
    scan_outcomes,
)

STAGES = ("engine", "install", "scan", "api")
SCAN_BATCH = 200


def _no_generation(*args, **kwargs):
    raise RuntimeError("the fuzz bench does not generate")


def _kind(failure: str) -> str:
    """`stage: mutation#seed: what` -> `stage: mutation: what (up to the first detail)`."""
    stage, _, rest = failure.partition(": ")
    label, _, what = rest.partition(": ")
    return f"{stage}: {label.split('#')[0]}: {what.split(':')[0].split('(')[0].strip()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--json", type=Path, help="write counts and failures here")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    torch.set_num_threads(1)

    components = build_components("sd1").as_mapping()
    for module in components.values():
        module.half()
    model = Model.of(components)
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    mm = ModelManager.open(work / "root")
    scan_mm = ModelManager.open(work / "scan-root")  # its drop folder gets the scan batches
    app = create_app(mm, start_worker=False, generate=_no_generation)
    client = TestClient(app, base_url="http://127.0.0.1")  # a loopback Host (server/hosts.py)
    counts: Counter[str] = Counter()
    failures: list[str] = []
    batch: list = []
    t0 = time.perf_counter()

    def record(stage: str, judge, *args) -> str | None:
        try:
            outcome = judge(*args)
        except Failure as exc:
            failures.append(f"{stage}: {exc}")
            counts[f"{stage}: FAILURE"] += 1
            return None
        counts[f"{stage}: {outcome}"] += 1
        return outcome

    def flush_scan() -> None:
        if not batch:
            return
        try:
            for outcome in scan_outcomes(batch, scan_mm).values():
                if isinstance(outcome, Failure):
                    failures.append(f"scan: {outcome}")
                    outcome = "FAILURE"
                counts[f"scan: {outcome}"] += 1
        except Failure as exc:
            failures.append(f"scan: {exc}")
            counts["scan: FAILURE (whole batch)"] += len(batch)
        shutil.rmtree(scan_mm.paths.autoimport_lora / "fuzz", ignore_errors=True)
        for stored in scan_mm.list():  # keep the database small: forget the batch
            scan_mm.remove(stored.key)
        batch.clear()

    with client:
        for i, case in enumerate(all_cases(args.cases, args.start)):
            written = case.write(work / "src")
            engine = record("engine", engine_outcome, case, written, model)
            if engine is None:
                engine = "loaded"  # it loaded, then failed at apply: install/scan accept it
            installed = "install" in stages and record(
                "install", install_outcome, case, written, mm, engine
            )
            if installed == "ok":
                for stored in mm.list():  # keep the database small
                    mm.remove(stored.key)
            if "api" in stages:
                record("api", api_outcome, case, written, client)
            if "scan" in stages:
                batch.append((case, case.write(scan_mm.paths.autoimport_lora / "fuzz"), engine))
                if len(batch) >= SCAN_BATCH:
                    flush_scan()
            written.path.unlink(missing_ok=True)
            if (i + 1) % 1000 == 0:
                print(f"{i + 1} cases, {len(failures)} failures, {time.perf_counter() - t0:.0f} s")
        flush_scan()
    seconds = time.perf_counter() - t0
    mm.close()
    scan_mm.close()
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.cases} cases x stages {','.join(stages)} in {seconds:.0f} s")
    for key, n in sorted(counts.items()):
        print(f"  {key:40s} {n:7d}")
    print(f"failures: {len(failures)}")
    for kind, n in Counter(_kind(f) for f in failures).most_common():
        print(f"  {n:6d} x {kind}")
    for line in failures[:40]:
        print("  " + line[:240])
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cases": args.cases, "seconds": seconds, "counts": counts, "failures": failures},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
