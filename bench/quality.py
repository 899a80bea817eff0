"""Judge scores of the demo model, its LCM-LoRA and its concept LoRA, through `generate`.

Every row draws all its prompts (24 base prompts, or the 8 zkstar prompts) at `--seeds`
seeds; sweeps vary the LCM-LoRA weight and the concept-LoRA weight. Prints a Markdown report
(the "Demo quality" section of docs/benchmarks.md) and writes the raw numbers as JSON.

    .venv/bin/python bench/quality.py --seeds 10 --json /tmp/quality.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from loraworks.demo.judge import judge
from loraworks.demo.run import (
    ALONE_4,
    ALONE_FEW,
    BASE_25,
    LCM_4,
    LCM_FEW,
    LCM_NAME,
    STACK_4,
    STAR_25,
    STAR_NAME,
    Row,
    RowResult,
    install_demo,
    row_labels,
    rows,
    run_row,
)
from loraworks.models import ModelManager

LCM_WEIGHTS = (0.2, 0.35, 0.5, 0.6, 0.75, 1.0)
STAR_WEIGHTS = (0.0, 0.3, 0.45, 0.6, 0.8, 1.0, 1.2)
STACK_WEIGHTS = ((0.35, 0.45), (0.35, 1.0), (0.6, 0.8), (0.6, 1.0), (1.0, 1.0))
"""(LCM-LoRA, demo-star) pairs; the first is the seed's recommendation."""


def measure(mm, row: Row, seeds: list[int]) -> RowResult:
    result = run_row(mm, row, row_labels(row), seeds)
    s = result.score
    print(
        f"| {row.title} | {s.n} | {s.right:.1%} | {s.shape_and_colour:.1%} | {s.colour:.1%} | "
        f"{s.shape:.1%} | {s.background:.1%} | {result.seconds / s.n:.3f} |",
        flush=True,
    )
    return result


def paired(first: RowResult, second: RowResult, seeds: list[int]) -> tuple[int, int, float]:
    """Same prompts × seeds in both rows: (second right where first wrong, the reverse,
    McNemar's z). Pairing removes what the seed sets share, which swings a row by points."""
    expected = [label for label in row_labels(first.row) for _ in seeds]

    def right(r: RowResult) -> list[bool]:
        return [judge(np.asarray(im)) == e for im, e in zip(r.images, expected, strict=True)]

    pairs = list(zip(right(first), right(second), strict=True))
    gained = sum(1 for a, b in pairs if b and not a)
    lost = sum(1 for a, b in pairs if a and not b)
    return gained, lost, (gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0


def speed_ratio(mm, base25: Row, lcm4: Row, rounds: int) -> tuple[float, float, float]:
    """Median seconds per image of each row (time in `generate`: prompt to saved PNG, no
    judging) and their ratio, the rows alternating per round (one prompt, 10 seeds per
    request) so that other load on the machine hits both alike."""
    label = row_labels(base25)[0]
    times: dict[str, list[float]] = {"base": [], "lcm": []}
    for _ in range(rounds):
        for key, row in (("base", base25), ("lcm", lcm4)):
            times[key].append(run_row(mm, row, [label], list(range(10))).seconds / 10)
    base, lcm = statistics.median(times["base"]), statistics.median(times["lcm"])
    return base, lcm, base / lcm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10, help="seeds per prompt for each row")
    parser.add_argument("--sweep-seeds", type=int, default=10, help="seeds per prompt in sweeps")
    parser.add_argument("--no-sweeps", action="store_true")
    parser.add_argument("--speed-rounds", type=int, default=7, help="rounds of the speed ratio")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seeds = list(range(args.seeds))
    sweep_seeds = list(range(args.sweep_seeds))
    report: dict[str, object] = {"seeds": args.seeds, "sweep_seeds": args.sweep_seeds}
    with tempfile.TemporaryDirectory() as root:
        mm = ModelManager.open(Path(root))
        install_demo(mm)
        print("| row | images | all right | shape+colour | colour | shape | background | s/image |")
        print("|---|---|---|---|---|---|---|---|")
        demo_rows = rows()
        results = [measure(mm, row, seeds) for row in demo_rows]
        report["rows"] = [
            {"row": asdict(r.row), "score": asdict(r.score), "seconds": r.seconds} for r in results
        ]
        report["lcm_lora_vs_scheduler_alone"] = {}
        for alone, lora in ((ALONE_4, LCM_4), (ALONE_FEW, LCM_FEW)):
            gained, lost, z = paired(results[alone], results[lora], seeds)
            steps = demo_rows[lora].steps
            report["lcm_lora_vs_scheduler_alone"][steps] = {"gained": gained, "lost": lost, "z": z}
            print(
                f"\nLCM-LoRA vs the LCM scheduler alone at {steps} steps, same "
                f"{results[lora].score.n} pictures: right where alone is wrong {gained}, the "
                f"reverse {lost} (McNemar z = {z:.2f})"
            )
        base_s, lcm_s, ratio = speed_ratio(
            mm, demo_rows[BASE_25], demo_rows[LCM_4], args.speed_rounds
        )
        report["lcm_speedup"] = {"base_s": base_s, "lcm_s": lcm_s, "ratio": ratio}
        print(
            f"\nLCM-LoRA 4 steps CFG 1 vs base 25 steps CFG 5, end to end (median of "
            f"{args.speed_rounds} alternating rounds): {base_s:.3f} vs {lcm_s:.3f} s/image, "
            f"{ratio:.1f}x faster"
        )
        if not args.no_sweeps:
            sweeps: dict[str, list] = {"lcm": [], "star": [], "stack": []}
            print("\n| LCM-LoRA weight (4 steps, CFG 1) | images | all right |")
            print("|---|---|---|")
            for w in LCM_WEIGHTS:
                r = run_row(
                    mm,
                    replace(demo_rows[LCM_4], loras=((LCM_NAME, w),)),
                    row_labels(demo_rows[LCM_4]),
                    sweep_seeds,
                )
                sweeps["lcm"].append({"weight": w, "score": asdict(r.score)})
                print(f"| {w} | {r.score.n} | {r.score.right:.1%} |", flush=True)
            print(
                "\n| demo-star weight (25 steps, CFG 5) | images "
                "| stars of the asked colour | all right |"
            )
            print("|---|---|---|---|")
            for w in STAR_WEIGHTS:
                r = run_row(
                    mm,
                    replace(demo_rows[STAR_25], loras=((STAR_NAME, w),)),
                    row_labels(demo_rows[STAR_25]),
                    sweep_seeds,
                )
                sweeps["star"].append({"weight": w, "score": asdict(r.score)})
                print(
                    f"| {w} | {r.score.n} | {r.score.shape_and_colour:.1%} | {r.score.right:.1%} |",
                    flush=True,
                )
            print("\n| LCM-LoRA + demo-star weights (4 steps, CFG 1) | images | all right |")
            print("|---|---|---|")
            for lcm_w, star_w in STACK_WEIGHTS:
                r = run_row(
                    mm,
                    replace(demo_rows[STACK_4], loras=((LCM_NAME, lcm_w), (STAR_NAME, star_w))),
                    row_labels(demo_rows[STACK_4]),
                    sweep_seeds,
                )
                sweeps["stack"].append({"weights": [lcm_w, star_w], "score": asdict(r.score)})
                print(f"| {lcm_w} + {star_w} | {r.score.n} | {r.score.right:.1%} |", flush=True)
            report["sweeps"] = sweeps
        mm.close()
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
