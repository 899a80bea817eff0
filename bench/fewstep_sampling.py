"""Few-step sampling of the demo model (#18): the base model and the demo LCM-LoRA under LCM
and TCD sampling (eta 0, 0.3, 0.5) and DDIM/Euler with trailing timesteps, at 1, 2, 4 and 8
steps, CFG 1, judged over the 24 base prompts × `--seeds` seeds through `generate`. Prints the
Markdown table of docs/benchmarks.md ("Few-step sampling") and, per step count, the paired
LoRA-vs-base and TCD-vs-LCM counts (McNemar z) on the same pictures.

    .venv/bin/python bench/fewstep_sampling.py --seeds 10 --json /tmp/fewstep.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from loraworks.demo.run import LCM_NAME, LCM_WEIGHT, Row, install_demo, row_labels, run_row
from loraworks.models import ModelManager

# (label, scheduler, spacing, eta)
SAMPLERS = (
    ("LCM", "lcm", None, None),
    ("TCD eta 0", "tcd", None, 0.0),
    ("TCD eta 0.3", "tcd", None, 0.3),
    ("TCD eta 0.5", "tcd", None, 0.5),
    ("DDIM trailing", "ddim", "trailing", 0.0),
    ("Euler trailing", "euler", "trailing", None),
)


def _paired(a, b) -> tuple[int, int, float]:
    """b right where a is wrong, the reverse, McNemar's z (same labels × seeds, same order)."""
    right_a, right_b = a["right_each"], b["right_each"]
    gained = sum(1 for x, y in zip(right_a, right_b, strict=True) if y and not x)
    lost = sum(1 for x, y in zip(right_a, right_b, strict=True) if x and not y)
    n = gained + lost
    return gained, lost, (gained - lost) / n**0.5 if n else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--lcm-weight", type=float, default=LCM_WEIGHT)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # two threads under load wait on each other (docs/demo.md)
    from loraworks.demo.judge import judge

    seeds = list(range(args.seeds))
    results: dict[tuple[int, str, str], dict] = {}
    with tempfile.TemporaryDirectory() as root:
        mm = ModelManager.open(Path(root))
        install_demo(mm)
        print("| steps | sampling | base (no LoRA) | LCM-LoRA | LoRA − base | s/image (LoRA) |")
        print("|---|---|---|---|---|---|")
        for steps in args.steps:
            for label, scheduler, spacing, eta in SAMPLERS:
                scores = {}
                for who, loras in (("base", ()), ("lora", ((LCM_NAME, args.lcm_weight),))):
                    row = Row(
                        f"{who} {label} {steps}", steps, 1.0, scheduler, loras, False, spacing, eta
                    )
                    labels = row_labels(row)
                    r = run_row(mm, row, labels, seeds)
                    expected = [lab for lab in labels for _ in seeds]
                    right_each = [
                        judge(np.asarray(im)) == e for im, e in zip(r.images, expected, strict=True)
                    ]
                    scores[who] = {
                        "right": r.score.right,
                        "n": r.score.n,
                        "s_per_image": r.seconds / r.score.n,
                        "right_each": right_each,
                    }
                results_key = (steps, label)
                results[results_key] = scores
                b, lo = scores["base"], scores["lora"]
                print(
                    f"| {steps} | {label} | {b['right']:.1%} | {lo['right']:.1%} | "
                    f"{(lo['right'] - b['right']) * 100:+.1f} | {lo['s_per_image']:.3f} |",
                    flush=True,
                )
        mm.close()
    print("\nPaired, same pictures (right where the first is wrong / the reverse, McNemar z):")
    for steps in args.steps:
        base_lcm, lora_lcm = results[(steps, "LCM")]["base"], results[(steps, "LCM")]["lora"]
        g, lost, z = _paired(base_lcm, lora_lcm)
        print(f"- {steps} steps, LCM sampling, LoRA vs scheduler alone: {g} / {lost}, z = {z:.2f}")
        for tcd in ("TCD eta 0", "TCD eta 0.3", "TCD eta 0.5"):
            g, lost, z = _paired(lora_lcm, results[(steps, tcd)]["lora"])
            print(f"- {steps} steps, LCM-LoRA, {tcd} vs LCM: {g} / {lost}, z = {z:.2f}")
    if args.json is not None:
        out = {
            f"{steps}|{label}": {
                who: {k: v for k, v in s.items() if k != "right_each"} for who, s in sc.items()
            }
            for (steps, label), sc in results.items()
        }
        args.json.write_text(json.dumps({"seeds": args.seeds, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
