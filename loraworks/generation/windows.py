"""Step windows: a LoRA active only during some denoising steps (`start=`/`stop=`, as A1111's
LoRA Block Weight extension takes them), applied by changing the patch between steps.

Steps are the ones the denoise loop runs, counted from 1 as the progress shows them (img2img:
from the first step it runs). Step ``k`` of ``n`` lies at ``(k-1)/n`` of the denoising; a LoRA
is active at ``k`` when ``start`` (a step number or a fraction) is at or before it and ``stop``
after it. A missing end is open. The prompt is encoded once, before step 1, so a LoRA's
text-encoder part counts only when it is active at step 1 and then stays for the whole image:
the text encoders' weights never change within an image (their cached conditioning stays
true), only the UNet's.

Switching is `LoRAPatcher.set` on the model's long-lived patcher: a no-op while the active set
is unchanged, otherwise restore + apply of the stack (docs/benchmarks.md has the cost). After
an image's last step the step-1 stack is set again, so the next image (and the next request
with the same LoRAs) starts with nothing to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loraworks.generation.events import StepReporter
from loraworks.lora import Strength

TEXT = ("text_encoder", "text_encoder_2")


def _at_or_after(step: int, total: int, end: int | float) -> bool:
    """Step `step` (from 1) of `total` is at or after window end `end`."""
    if isinstance(end, float):
        return (step - 1) / total >= end
    return step >= end


def is_active(weight: Strength, step: int, total: int) -> bool:
    """Whether a LoRA with `weight` (checked) is active at step `step` of `total`."""
    if not isinstance(weight, Mapping):
        return True
    start, stop = weight.get("start"), weight.get("stop")
    if start is not None and not _at_or_after(step, total, start):
        return False
    return stop is None or not _at_or_after(step, total, stop)


def has_window(weight: Strength) -> bool:
    return isinstance(weight, Mapping) and ("start" in weight or "stop" in weight)


def steps_run(steps: int, strength: float, img2img: bool) -> int:
    """The steps the denoise loop runs (img2img starts part-way in, `denoise._timesteps`)."""
    return min(int(steps * strength), steps) if img2img else steps


def in_step_numbers(weight: Strength, total: int) -> Strength:
    """`weight` with its fraction window ends as the step numbers they fall on in a run of
    `total` steps — the same steps active — for A1111's extension, which takes step numbers
    only (infotext)."""
    if not has_window(weight):
        return weight
    out = dict(weight)  # type: ignore[arg-type]
    for key in ("start", "stop"):
        end = out.get(key)
        if isinstance(end, float):
            hits = (k for k in range(1, total + 1) if _at_or_after(k, total, end))
            out[key] = next(hits, total + 1)
    return out  # type: ignore[return-value]


def never_active(weight: Strength, total: int) -> bool:
    return not any(is_active(weight, k, total) for k in range(1, total + 1))


def _weight_at(weight: Strength, step: int, total: int) -> Strength | None:
    """`weight` as patched at `step`: the UNet part only inside the window, the text part
    only when active at step 1 (None: nothing of it to patch)."""
    unet, text = is_active(weight, step, total), is_active(weight, 1, total)
    if unet and text:
        return weight
    if not (unet or text) or not isinstance(weight, Mapping):  # a number has no window
        return None
    now: dict[str, Any] = {"unet": weight.get("unet", 1.0) if unet else 0.0}
    now.update({c: weight.get(c, 1.0) if text else 0.0 for c in TEXT})  # open: 1.0, as the engine
    if "block_weights" in weight:
        now["block_weights"] = weight["block_weights"]
    return now  # type: ignore[return-value]


def stack_at(stack: Sequence[tuple[Any, Strength]], step: int, total: int) -> list:
    """The (LoRA, weight) stack to patch for `step` of `total`."""
    out = []
    for lora, weight in stack:
        now = _weight_at(weight, step, total)
        if now is not None:
            out.append((lora, now))
    return out


def first_stack(stack: Sequence[tuple[Any, Strength]]) -> list:
    """The stack for step 1, whatever the number of steps (step 1 lies at 0.0): what the
    prompt is encoded with."""
    return stack_at(stack, 1, 1)


class StepWindows:
    """Changes `patcher`'s stack after each step to the next step's (`after_step` is the
    denoise loop's step hook)."""

    def __init__(self, patcher: Any, stack: Sequence[tuple[Any, Strength]]):
        self.patcher, self.stack = patcher, list(stack)

    def after_step(self, index: int, total: int) -> None:
        """After step `index` (from 0) of `total`: the next step's stack, or step 1's after
        the last step."""
        step = index + 2 if index + 1 < total else 1
        self.patcher.set(stack_at(self.stack, step, total) if step > 1 else first_stack(self.stack))


def follow_windows(
    steps: StepReporter, patcher: Any, stack: Sequence[tuple[Any, Strength]]
) -> None:
    """Have the step reporter `steps` switch `patcher` between steps when a LoRA of `stack`
    has a window (the model must hold `first_stack(stack)` before the first step)."""
    if any(has_window(weight) for _, weight in stack):
        steps.after_step = StepWindows(patcher, stack).after_step
