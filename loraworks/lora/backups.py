"""Where a patched weight's original waits for the restore: the patching strategies.

* ``swap`` — the patched value goes into a new tensor (``param.data = new``) and the original
  tensor itself is the backup: the fastest, restored for free, but it costs every patched
  weight's size again while patched (an SDXL LoRA on every layer: 11 GiB in fp32).
* ``inplace`` — the patched value is written into the parameter's own storage
  (``param.data.copy_(new)``, the same rounding as ``new.to(dtype)``), so while patched the
  model costs nothing more, and storage addresses never change (CUDA graphs keep working).
  The originals are kept elsewhere:

  * **host** copies — on a GPU, in (pinned) host memory, copied back on restore (InvokeAI's
    way); on the CPU this costs what ``swap`` costs;
  * **file** — not copied at all: a model's loader knows where each weight came from
    (`OriginalWeights`) and reads it back on restore. This is exact because the loaded weights
    are the file's tensors cast once: reading and casting again gives the same bits (a weight
    the source does not cover gets a host copy). Before a
    weight is patched its digest (`digest`) is kept, and the source's own identity check
    (size, mtime, inode) runs before anything is read back; a weight that does not read back
    to its digest, or a file that changed, is `LoRARestoreError` — the caller reloads the
    model, never uses silently wrong weights.

``auto`` (the default) takes ``swap`` when its patched weights fit the free memory, else host
copies when those fit the host (a GPU model), else the file. ``inplace`` never swaps: on a GPU
host copies, else the file; on the CPU, where host copies cost what swapping costs, the file
first (host copies only for a model loaded from no file). A stack that fits none is refused
before anything is written, with the setting to change in the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from .errors import LoRAError, LoRARestoreError
from .staging import free_bytes

if TYPE_CHECKING:
    from .layers import Layer
    from .patcher import PatchTarget

StrategyName = Literal["auto", "swap", "inplace"]
STRATEGIES: tuple[StrategyName, ...] = ("auto", "swap", "inplace")
Plan = Literal["swap", "host", "file"]


class OriginalWeights(Protocol):
    """A loaded model's weights as its loader produced them, read again from their source."""

    def covers(self, component: str, name: str) -> bool:
        """Whether parameter `name` (a ``named_parameters`` name) of `component` can be read
        back; the others get a host copy."""

    def changed(self) -> str | None:
        """Why the source no longer holds what was loaded (e.g. the file was replaced), or
        None when it still does."""

    def read(self, component: str, names: Sequence[str]) -> Iterable[tuple[str, torch.Tensor]]:
        """The loaded value of each named (covered) parameter of `component`, in the dtype it
        was loaded in, one at a time: the caller copies each into place before the next is
        read, so a restore never holds more than one file tensor."""


#: elements summed at a time by `digest`: its int64 temporary stays at 2 MiB, where summing a
#: whole weight at once would cost twice an fp32 weight's size (SDXL's largest: +225 MiB)
DIGEST_CHUNK = 1 << 18


def digest(t: torch.Tensor) -> int:
    """A cheap fingerprint of a tensor's bits (the sum of its bit patterns as integers): a
    weight read back from the file must give the same one before it is trusted."""
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    flat = t.detach().reshape(-1).view(ints)
    return sum(int(part.sum(dtype=torch.int64)) for part in flat.split(DIGEST_CHUNK))


def plan_strategy(
    targets: list[PatchTarget],
    away: Mapping[torch.device, list[Layer]],
    strategy: StrategyName,
    originals: OriginalWeights | None,
) -> Plan:
    """The strategy this stack is patched with, before anything is allocated (the peaks are in
    the module docstrings of this module and ``staging.py``)."""
    if strategy not in STRATEGIES:
        raise LoRAError(f"unknown patch strategy {strategy!r} (use {', '.join(STRATEGIES)})")
    staged = {dev: sum(layer.nbytes() for layer in layers) for dev, layers in away.items()}
    patched: dict[torch.device, int] = {}
    temp: dict[torch.device, int] = {}
    for t in targets:
        w = t.module.weight
        patched[w.device] = patched.get(w.device, 0) + _nbytes(t)
        temp[w.device] = max(temp.get(w.device, 0), w.numel() * 4 * 2)  # fp32 copy + sum
    devices = set(patched) | set(staged)
    base = {dev: staged.get(dev, 0) + temp.get(dev, 0) for dev in devices}

    def short(extra: Mapping[torch.device, int]) -> tuple[torch.device, int, int] | None:
        """The first device this plan does not fit (need, free), or None when it fits."""
        need = dict(base)
        for dev, n in extra.items():
            need[dev] = need.get(dev, 0) + n
        for dev, n in need.items():
            free = free_bytes(dev)
            if free is not None and n > free:
                return dev, n, free
        return None

    host = torch.device("cpu")
    on_gpu = any(dev.type != "cpu" for dev in patched)
    extra: dict[Plan, Mapping[torch.device, int]] = {
        "swap": patched,
        "host": {host: sum(patched.values())},
        "file": {host: _uncovered_bytes(targets, originals)},
    }
    plans: list[Plan]
    if strategy == "swap":
        plans = ["swap"]
    elif strategy == "auto":  # on the CPU host copies cost what swap costs: never chosen
        plans = ["swap", "host", "file"] if on_gpu else ["swap", "file"]
    else:  # inplace: asked not to double the weights' memory
        plans = ["host", "file"] if on_gpu else ["file", "host"]
    plans = [plan for plan in plans if plan != "file" or originals is not None]
    missing = None
    for plan in plans:
        missing = short(extra[plan])
        if missing is None:
            return plan
    assert missing is not None
    dev, need, free = missing
    advice = (
        'set [patch] strategy = "inplace" (or "auto") in config.toml: the originals are then '
        "re-read from the model file instead of kept in memory"
        if strategy == "swap" and originals is not None
        else 'use a lower precision ([compute] precision = "bfloat16"), fewer LoRAs or '
        "components, or close what else uses memory"
    )
    raise LoRAError(
        f"patching this stack needs about {need / 2**30:.1f} GiB of {dev.type} memory "
        f"(patch strategy {strategy}) and only {free / 2**30:.1f} GiB is free; nothing is "
        f"patched. To fit it, {advice}"
    )


def _patched(t: PatchTarget) -> list[tuple[str, torch.Tensor]]:
    """The parameters of `t` the stack writes, by name in its component."""
    params = [(f"{t.path}.weight", t.module.weight)]
    bias = getattr(t.module, "bias", None)
    if isinstance(bias, torch.Tensor) and any(layer.touches_bias for layer, _ in t.items):
        params.append((f"{t.path}.bias", bias))
    return params


def _nbytes(t: PatchTarget) -> int:
    return sum(p.numel() * p.element_size() for _, p in _patched(t))


def _uncovered_bytes(targets: list[PatchTarget], originals: OriginalWeights | None) -> int:
    """What the *file* plan still copies to the host: the weights it cannot read back."""
    if originals is None:
        return 0
    return sum(
        p.numel() * p.element_size()
        for t in targets
        for name, p in _patched(t)
        if not originals.covers(t.comp, name)
    )


@dataclass
class Backups:
    """The originals of the weights patched by one `LoRAPatcher.set`, kept per `plan`."""

    plan: Plan = "swap"
    originals: OriginalWeights | None = None
    #: swap: (param, its original tensor); host, and file for what it does not cover:
    #: (param, a host copy)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    #: file: (param, component, parameter name, digest of the original)
    in_file: list[tuple[torch.Tensor, str, str, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.kept or self.in_file)

    def write(
        self, param: torch.Tensor, value: torch.Tensor, buf: torch.Tensor | None, where: str
    ) -> None:
        """Put `value` (fp32, or `buf` already holding it) into `param`, keeping its original.
        `buf`: the tensor that held this parameter's previous patched value (swap only);
        `where`: ``component/parameter name`` for the file."""
        orig = param.data
        if self.plan == "swap":
            if buf is not None:
                new = buf if value is buf else buf.copy_(value)  # rounds once into the dtype
            else:
                new = value if value.dtype == orig.dtype else value.to(orig.dtype)
                if new.stride() != orig.stride():
                    new = torch.empty_like(orig).copy_(new)
            if new.data_ptr() == orig.data_ptr():  # never alias the backup
                new = new.clone()
            param.data = new
            self.kept.append((param, orig))
            return
        component, name = where.split("/", 1)
        if self.plan == "file" and self.originals is not None:
            if self.originals.covers(component, name):
                self.in_file.append((param, component, name, digest(orig)))
            else:
                self.kept.append((param, _host_copy(orig)))
        else:
            self.kept.append((param, _host_copy(orig)))
        orig.copy_(value)

    def restore(self, pool: dict[int, tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Put every original back (newest first); `pool` receives swapped-out patched tensors
        for reuse. The file's weights are read back per component and checked."""
        kept, in_file = self.kept, self.in_file
        self.kept, self.in_file = [], []
        failed: list[str] = []
        try:
            for param, orig in reversed(kept):
                if self.plan != "swap":  # host copies
                    param.data.copy_(orig)
                    continue
                if pool is not None:
                    pool[id(param)] = (param, param.data)
                if param.device != orig.device or param.dtype != orig.dtype:
                    orig = orig.to(device=param.device, dtype=param.dtype)
                param.data = orig
        finally:
            if in_file:
                failed = self._read_back(in_file)
        if failed:
            raise LoRARestoreError(
                "the original weights could not be read back from the model file ("
                + "; ".join(failed[:3])
                + (f"; … {len(failed) - 3} more" if len(failed) > 3 else "")
                + "): the model must be loaded again"
            )

    def _read_back(self, entries: list[tuple[torch.Tensor, str, str, int]]) -> list[str]:
        assert self.originals is not None
        why = self.originals.changed()
        if why is not None:
            return [why]
        failed = []
        for component, group in _by_component(entries).items():
            wanted = {name: (param, want) for param, name, want in group}
            try:
                for name, value in self.originals.read(component, list(wanted)):
                    param, want = wanted.pop(name)
                    if tuple(value.shape) != tuple(param.shape):
                        failed.append(f"{component}.{name} has another shape in the file")
                        continue
                    param.data.copy_(value)
                    if digest(param.data) != want:
                        failed.append(f"{component}.{name} reads back different bits")
            except (OSError, ValueError) as exc:
                failed.append(f"{component}: {exc}")
                continue
            failed.extend(f"{component}.{name} is not in the file" for name in wanted)
        return failed


def _by_component(
    entries: Iterable[tuple[torch.Tensor, str, str, int]],
) -> dict[str, list[tuple[torch.Tensor, str, int]]]:
    out: dict[str, list[tuple[torch.Tensor, str, int]]] = {}
    for param, component, name, want in entries:
        out.setdefault(component, []).append((param, name, want))
    return out


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` in host memory, pinned when it comes from a GPU (an asynchronous-capable
    copy back; unpinned when the pinned pool is exhausted)."""
    if t.device.type == "cpu":
        return t.clone()
    try:
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
    except RuntimeError:
        return t.to("cpu", copy=True)
