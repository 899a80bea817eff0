"""What a step window (`start=`/`stop=`) costs per denoising step on an SD1.5-size model.

    .venv/bin/python bench/step_windows.py --device cpu

Not a test. A window changes the patch between two steps through the model's long-lived
`LoRAPatcher` (`loraworks.generation.windows.StepWindows.after_step`). On the full SD1.5 UNet +
CLIP-L with random weights and two random kohya LoRAs (rank 16, UNet attention + text encoder
q/v), timed:

* the hook on a step where nothing changes (the stack is the same: `set` is a no-op);
* a window edge with one LoRA: it leaves (restore) and enters (apply of its UNet part; the text
  part stays as it was at step 1);
* a window edge with two LoRAs, one leaving: `set` restores both and applies the one that stays;
* one UNet step at 512 px (batch 1, as at CFG <= 1; a CFG > 1 step is batch 2, about twice).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lora_switch import arguments, sd15_with_loras, timed, unet_steps

from loraworks.generation.windows import StepWindows, first_stack
from loraworks.lora import LoRAPatcher

EVERY = ("unet", "text_encoder", "text_encoder_2")


def _edges(patcher: LoRAPatcher, stack: list, total: int, device: torch.device) -> list[float]:
    """Seconds of each `after_step` over a run of `total` steps (index 0..total-1)."""
    windows = StepWindows(patcher, stack)
    patcher.set(first_stack(stack))
    return [timed(lambda i=i: windows.after_step(i, total), device) for i in range(total)]


def main() -> None:
    args = arguments(__doc__, runs=3)
    device = torch.device(args.device)
    model, (a, b) = sd15_with_loras(device, 2)
    dtype = model.unet.dtype
    patcher = LoRAPatcher(model.as_mapping())

    # 8 steps; A active in steps 3-5 (start=3:stop=6): edges after steps 2 (enters), 5
    # (leaves) and 8 (back to step 1's stack, which is without A: nothing to do)
    windowed = {**dict.fromkeys(EVERY, 0.8), "start": 3, "stop": 6}
    alone, pair = [], []
    for _ in range(args.runs):
        alone.append(_edges(patcher, [(a, windowed)], 8, device))
        pair.append(_edges(patcher, [(a, windowed), (b, 0.7)], 8, device))
    patcher.restore()

    def at(runs: list[list[float]], index: int) -> float:
        return statistics.median(run[index] for run in runs)

    quiet = statistics.median(
        t for run in alone + pair for i, t in enumerate(run) if i in (0, 2, 3, 5, 6, 7)
    )
    step = statistics.median(unet_steps(model, device, args.unet_steps))
    rows = [
        ("hook, nothing changes (no-op set), median", quiet),
        ("one LoRA enters (apply UNet part)", at(alone, 1)),
        ("one LoRA leaves (restore)", at(alone, 4)),
        ("two LoRAs, A enters (restore B, apply A + B)", at(pair, 1)),
        ("two LoRAs, A leaves (restore A + B, apply B)", at(pair, 4)),
        (f"one UNet step, batch 1, 512 px, median of {args.unet_steps}", step),
    ]
    print(f"SD1.5 UNet + CLIP-L, {device.type} {dtype}, torch threads {torch.get_num_threads()}")
    print(f"medians of {args.runs} windowed runs of 8 steps")
    print("| what | seconds | / UNet step |")
    print("|---|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.4f} | {seconds / step:.4f} |")


if __name__ == "__main__":
    main()
