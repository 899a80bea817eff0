"""Patching: in place, exact, fast, and restored bit-exactly.

How one module is patched (``W`` = its original weight tensor, never modified)::

    acc = W (fp32)  +  Σ_i  residual_i(W, m_i)      every layer of every LoRA in the stack
    new = acc.to(W.dtype)                            rounded once
    param.data = new                                 same Parameter object, new storage

``m_i`` is the weight of layer i's LoRA for the module's component (`strength`).

* **Order.** Every residual is computed from the *original* W and they are summed, so the
  result does not depend on the order of the stack — also for the kinds that read W (DoRA, IA³).
  This is how LyCORIS (each module's ``forward`` reads the untouched ``org_module.weight``) and
  PEFT (DoRA's norm is of the base weight plus its own adapter) stack adapters.
* **Restore by swapping** (strategy ``swap``). The original tensor is kept as the backup (no
  copy) and put back with ``param.data = original``: bit-exact and free. Only weights actually
  patched are kept. When that does not fit, the ``inplace`` strategies write into the
  parameter's own storage and keep the original in host memory or re-read it from the model
  file, also bit-exactly (`backups.py`).
  Consequence for CUDA graphs / ``torch.compile(mode="reduce-overhead")``: a captured graph
  holds storage addresses, and both patching and restoring change ``param.data``'s storage —
  re-capture after `apply_loras` / `LoRAPatcher.set` (or patch before capturing), or patch
  with ``strategy="inplace"``, which keeps every storage address. Code that
  holds ``param`` (optimisers, hooks) sees the new values; code that cached ``param.data``
  keeps the old tensor.
* **Before touching anything** a stack is fully planned: base check (`LoRABaseMismatch`),
  module resolution (unmatched keys reported, or `LoRAUnmatchedKeys` with ``strict=True``),
  shape checks (`LoRAShapeError`). A model is never left half-patched; if computing a patch
  fails midway, what was done is restored before the error propagates.
* **Lock.** A model (each component module) is held by at most one patcher while patched.
  A nested `apply_loras` on the same model, or a second `LoRAPatcher`, raises `LoRABusy`:
  pass all LoRAs as one stack instead. (Re-``set`` on the same `LoRAPatcher` is fine.)
* **Weight 0** entries (and components a weight dict does not name) are skipped entirely.
* **Block weights** (`blocks`): a layer's weight is its component's weight times the number of
  the slot its module lies in; a layer whose product is 0 is skipped like a weight-0 entry, so
  ``lbw=NONE`` patches nothing. ``start``/``stop`` are generation's: ignored here.
* If a patched model is moved to another device/dtype while patched, restore converts the
  original to the module's current device/dtype (exact unless the dtype changed).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .backups import Backups, OriginalWeights, StrategyName, plan_strategy
from .blocks import FORMS, LENGTHS, SLOTS, slot_of, slot_ratios
from .components import ModuleIndex, components_of, model_base
from .errors import LoRABaseMismatch, LoRABusy, LoRAError, LoRAShapeError, LoRAUnmatchedKeys
from .layers import Layer
from .model import LoRA
from .staging import give_back_freed_memory, is_out_of_memory, layers_away, stage
from .strength import Strength, component_weights, options_of

Stack = Sequence[tuple[LoRA, Strength]]


@dataclass
class PatchReport:
    """What a `LoRAPatcher.set` / `apply_loras` did."""

    applied: int = 0  # layers applied
    patched_params: int = 0  # parameters (weights + biases) swapped
    unmatched: list[str] = field(default_factory=list)  # "<lora>: <target> (<why>)"
    skipped: list[str] = field(default_factory=list)  # components with weight 0 / not named
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: where the originals wait (`backups.py`): "swap", "host" (in place, host copies) or
    #: "file" (in place, re-read from the model file)
    strategy: str = "swap"

    def __bool__(self) -> bool:  # a report is always truthy (even with nothing applied)
        return True

    def user_warnings(self) -> list[str]:
        """What a user is told: the warnings, and the unmatched layers counted in one line."""
        out = list(self.warnings)
        if self.unmatched:
            out.append(
                f"{len(self.unmatched)} LoRA layer(s) match no module of the model and were "
                f"ignored, e.g. {self.unmatched[0]}"
            )
        return out


@dataclass
class PatchTarget:
    """One module to patch and every (layer, weight) of the stack that patches it."""

    comp: str
    path: str
    module: nn.Module
    items: list[tuple[Layer, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Entry:
    """A checked stack entry: the LoRA, its name in messages, its weight per component and,
    with block weights, every slot's number and the slots its vector names."""

    lora: LoRA
    label: str
    weights: dict[str, float]
    ratios: dict[str, float] | None = None
    named: tuple[str, ...] = ()

    @property
    def key(self) -> tuple:
        ratios = tuple(self.ratios.values()) if self.ratios is not None else None
        return (id(self.lora), tuple(sorted(self.weights.items())), ratios)


class Scratch:
    """One fp32 buffer per device, the size of the largest weight patched there, in which the
    in-place strategies sum each patched weight before copying it into place. Patching then
    adds one weight's size (SDXL in fp32: 112 MiB), where a fresh sum per weight costs an
    allocation each and leaves freed blocks of every size that the allocator may keep."""

    def __init__(self, targets: Sequence[PatchTarget]):
        self._sizes: dict[torch.device, int] = {}
        for t in targets:
            w = t.module.weight
            self._sizes[w.device] = max(self._sizes.get(w.device, 0), w.numel())
        self._buffers: dict[torch.device, torch.Tensor] = {}

    def like(self, w: torch.Tensor) -> torch.Tensor:
        """An fp32 tensor of `w`'s shape on its device (contents undefined)."""
        buf = self._buffers.get(w.device)
        if buf is None:
            size = self._sizes[w.device]
            buf = self._buffers[w.device] = torch.empty(size, dtype=torch.float32, device=w.device)
        return buf[: w.numel()].view(w.shape)


# A model (each component module) is held by at most one patcher while patched.
_REGISTRY_LOCK = threading.Lock()
_OWNERS: weakref.WeakKeyDictionary[nn.Module, LoRAPatcher] = weakref.WeakKeyDictionary()


class LoRAPatcher:
    """Long-lived patcher for one pipeline / component mapping.

    ``set(stack)`` is a no-op when the stack is unchanged (same LoRA objects in the same order
    with equal weights); otherwise it plans the new stack (raising before any change if it is
    invalid), restores the old one and applies the new. ``restore()`` puts back the originals;
    ``current`` is the applied stack (a tuple, empty when nothing is applied).

    Switching stacks with ``set`` reuses, for every weight patched before and after, the
    tensor that held its previous patched value (no new allocation, no page faults, the same
    storage address). ``keep_buffers=True`` also keeps those tensors across ``restore()`` for
    the next ``set`` — faster re-patching (no fresh memory, no page faults) for the price of
    holding the patched size in memory while unpatched; ``release_buffers()`` drops them.
    While patched, nothing beyond the patched weights is held either way.
    """

    def __init__(
        self,
        pipe: Any,
        keep_buffers: bool = False,
        strategy: StrategyName = "auto",
        originals: OriginalWeights | None = None,
    ):
        self.keep_buffers = keep_buffers
        self.strategy = strategy
        self.originals = originals
        self._pool: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        self.components = components_of(pipe)
        self.base = model_base(self.components)
        self._index: dict[str, ModuleIndex] = {}
        self._backups = Backups()
        self._current: tuple[tuple[LoRA, Strength], ...] = ()
        self._key: tuple | None = None
        self._report: PatchReport | None = None
        self._lock = threading.RLock()

    # --- public ------------------------------------------------------------------------------
    @property
    def current(self) -> tuple[tuple[LoRA, Strength], ...]:
        return self._current

    @property
    def report(self) -> PatchReport | None:
        return self._report

    def set(self, stack: Stack, strict: bool = False) -> PatchReport:
        with self._lock:
            stack = tuple((lora, w) for lora, w in stack)
            entries = self._checked(stack)
            key = tuple(entry.key for entry in entries)
            if key == self._key and self._report is not None:
                return self._report
            t0 = time.perf_counter()
            report = PatchReport()
            targets = self._plan(entries, strict, report)
            away = layers_away(targets)
            plan = plan_strategy(targets, away, self.strategy, self.originals)
            self._restore_locked(keep=True)
            self._backups = Backups(plan, self.originals)
            report.strategy = plan
            try:
                if targets:
                    self._claim()
                    try:
                        stage(targets, away)
                        self._apply(targets, report)
                    except BaseException as exc:
                        self._restore_locked(keep=False)
                        if isinstance(exc, RuntimeError) and is_out_of_memory(exc):
                            raise LoRAError(
                                f"not enough memory to patch this stack ({exc}); nothing is patched"
                            ) from None
                        raise
            finally:
                self._pool.clear()  # while patched, hold nothing beyond the patched weights
                if plan != "swap":
                    give_back_freed_memory()
            self._current, self._key = stack, key
            report.seconds = time.perf_counter() - t0
            self._report = report
            return report

    def restore(self) -> None:
        with self._lock:
            self._restore_locked(keep=self.keep_buffers)

    def release_buffers(self) -> None:
        """Drop the patched-weight tensors kept for reuse (``keep_buffers=True``)."""
        with self._lock:
            self._pool.clear()

    # --- internals -----------------------------------------------------------------------------
    def _checked(self, stack: tuple[tuple[LoRA, Strength], ...]) -> list[_Entry]:
        """Each entry's LoRA, label, weight per component and block numbers; `LoRAError` for
        a bad one (the stack comes from Python callers as given)."""
        out = []
        for i, (lora, weight) in enumerate(stack):
            if not isinstance(lora, LoRA):
                raise LoRAError(
                    f"stack entry {i}: expected a LoRA from load_lora(), got {type(lora).__name__}"
                )
            label = lora.name or f"LoRA #{i}"
            weights = component_weights(weight, label)
            blocks = options_of(weight).get("block_weights")
            if blocks is None:
                out.append(_Entry(lora, label, weights))
                continue
            ratios = slot_ratios(blocks, self.base or lora.base, label)
            named = tuple(ratios) if isinstance(blocks, str) else FORMS[len(blocks)]
            out.append(_Entry(lora, label, weights, ratios, named))
        return out

    def _idx(self, comp: str) -> ModuleIndex:
        if comp not in self._index:
            self._index[comp] = ModuleIndex(self.components[comp])
        return self._index[comp]

    def _plan(self, entries: list[_Entry], strict: bool, report: PatchReport) -> list[PatchTarget]:
        targets: dict[tuple[str, str], PatchTarget] = {}
        errors: list[str] = []
        for entry in entries:
            lora, label = entry.lora, entry.label
            weights = {c: w for c, w in entry.weights.items() if w != 0.0}
            unnamed: dict[str, int] = {}
            used = {c for c in lora.components if c in weights}
            if not used:
                report.skipped.append(f"{label}: weight 0 / no component named")
                continue
            if self.base is not None and self.base not in lora.compatible_bases:
                raise LoRABaseMismatch(lora.base, self.base, lora.name)
            for c in sorted(lora.components - used):
                report.skipped.append(f"{label}: {c} not patched (weight 0 or not named)")
            for target, layer in lora.layers.items():
                comp, _, path = target.partition(".")
                if comp not in used:
                    continue
                if comp not in self.components:
                    report.unmatched.append(f"{label}: {target} (the model has no {comp})")
                    continue
                found = self._idx(comp).resolve(comp, path)
                if found is None:
                    report.unmatched.append(f"{label}: {target} (no such module)")
                    continue
                weight = weights[comp]
                if entry.ratios is not None:
                    slot = slot_of(comp, found, self.base or lora.base)
                    if slot is not None and slot not in entry.named:
                        unnamed[slot] = unnamed.get(slot, 0) + 1
                    weight *= entry.ratios[slot] if slot is not None else 1.0
                    if weight == 0.0:
                        continue
                module = self._idx(comp).modules[found]
                param = getattr(module, "weight", None)
                if not isinstance(param, torch.Tensor):
                    report.unmatched.append(f"{label}: {target} (module has no weight)")
                    continue
                problem = layer.check(tuple(param.shape)) or self._check_bound(
                    layer, weight, param.dtype
                )
                if problem:
                    errors.append(f"{label}: {target}: {problem}")
                    continue
                if layer.touches_bias and getattr(module, "bias", None) is None:
                    report.warnings.append(
                        f"{label}: {target}: the module has no bias; the bias part is ignored"
                    )
                t = targets.setdefault((comp, found), PatchTarget(comp, found, module))
                t.items.append((layer, weight))
                t.labels.append(label)
            if unnamed:
                slots = ", ".join(sorted(unnamed, key=SLOTS.index))
                report.warnings.append(
                    f"{label}: {sum(unnamed.values())} layer(s) in {slots}, which its "
                    f"{len(entry.named)}-value lbw vector does not name, get weight 0 (give "
                    f"{LENGTHS.get(self.base or lora.base, (0, 26))[1]} values to set them)"
                )
        if errors:
            shown = "\n  ".join(errors[:20])
            more = f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else ""
            cls = LoRAShapeError if any("does not fit" in e for e in errors) else LoRAError
            raise cls(
                f"{len(errors)} LoRA layer(s) do not fit the model (nothing was patched):\n  "
                f"{shown}{more}"
            )
        if strict and report.unmatched:
            shown = "\n  ".join(report.unmatched[:20])
            raise LoRAUnmatchedKeys(
                f"{len(report.unmatched)} LoRA layer(s) match no module (strict mode, nothing "
                f"was patched):\n  {shown}"
            )
        return list(targets.values())

    @staticmethod
    def _check_bound(layer: Layer, weight: float, dtype: torch.dtype) -> str | None:
        bound = layer.magnitude_bound(weight)
        if bound is None or not dtype.is_floating_point:
            return None
        if not bound < torch.finfo(dtype).max / 4:
            return (
                f"the patched weight would not be finite in {dtype} (|ΔW| up to {bound:.3g}; "
                "is the weight or alpha far too large?)"
            )
        return None

    def _claim(self) -> None:
        with _REGISTRY_LOCK:
            for name, m in self.components.items():
                owner = _OWNERS.get(m)
                if owner is not None and owner is not self:
                    raise LoRABusy(
                        f"the {name} is already patched by another apply_loras/LoRAPatcher; "
                        "nested apply_loras on the same model is not allowed — pass all LoRAs "
                        "in one stack"
                    )
            for m in self.components.values():
                _OWNERS[m] = self

    def _release(self) -> None:
        with _REGISTRY_LOCK:
            for m in self.components.values():
                if _OWNERS.get(m) is self:
                    del _OWNERS[m]

    @torch.no_grad()
    def _apply(self, targets: list[PatchTarget], report: PatchReport) -> None:
        scratch = Scratch(targets) if self._backups.plan != "swap" else None
        for t in targets:
            wparam: torch.Tensor = t.module.weight
            bparam = getattr(t.module, "bias", None)
            w0 = wparam.data
            wf = w0 if w0.dtype == torch.float32 else w0.float()
            wbuf = self._take(wparam)
            bbuf = self._take(bparam) if isinstance(bparam, torch.Tensor) else None
            bf = None
            if isinstance(bparam, torch.Tensor):
                b0 = bparam.data
                bf = b0 if b0.dtype == torch.float32 else b0.float()
            acc: torch.Tensor | None = None
            bacc: torch.Tensor | None = None
            if wbuf is not None and wbuf.dtype == torch.float32:
                acc = wbuf.copy_(wf)  # accumulate straight into last patch's tensor
            elif scratch is not None:  # in place: the sum is copied into the weight after
                acc = scratch.like(wf).copy_(wf)
            for layer, weight in t.items:
                if layer.linear and not layer.touches_bias:
                    acc = layer.add_weight(acc, wf, weight)
                else:
                    res = layer.residuals({"weight": wf, "bias": bf}, weight)
                    dw, db = res.get("weight"), res.get("bias")
                    if dw is not None:
                        dw = dw.reshape(wf.shape)
                        acc = wf + dw if acc is None else acc.add_(dw)
                    if db is not None and bf is not None:
                        db = db.reshape(bf.shape)
                        bacc = bf + db if bacc is None else bacc.add_(db)
                report.applied += 1
            if acc is not None:
                self._backups.write(wparam, acc, wbuf, f"{t.comp}/{t.path}.weight")
                report.patched_params += 1
                self._check_finite(t, wparam.data, "weight")
            if bacc is not None:
                self._backups.write(bparam, bacc, bbuf, f"{t.comp}/{t.path}.bias")
                report.patched_params += 1
                self._check_finite(t, bparam.data, "bias")

    @staticmethod
    def _check_finite(t: PatchTarget, value: torch.Tensor, what: str) -> None:
        """Refuse a patch that overflows the module's dtype (e.g. a huge alpha on fp16). Plain
        LoRA layers are checked by a cheap bound; other kinds by looking at the result."""
        bounds = [layer.magnitude_bound(w) for layer, w in t.items]
        if what == "weight" and None not in bounds:
            return  # plain LoRA: bounded in the plan
        lo, hi = torch.aminmax(value.reshape(-1))
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            return
        names = ", ".join(sorted(set(t.labels)))
        raise LoRAError(
            f"refusing to patch {t.comp}.{t.path}: the {what} would not be finite in "
            f"{value.dtype} ({names}; is a weight or alpha far too large?). Nothing is patched."
        )

    def _take(self, param: torch.Tensor) -> torch.Tensor | None:
        """The tensor that held ``param``'s previous patched value, if it still fits."""
        hit = self._pool.pop(id(param), None)
        if hit is None or hit[0] is not param:
            return None
        buf, orig = hit[1], param.data
        fits = buf.shape == orig.shape and buf.stride() == orig.stride()
        fits = fits and buf.device == orig.device and buf.dtype == orig.dtype
        return buf if fits else None

    def _restore_locked(self, keep: bool = False) -> None:
        backups, self._backups = self._backups, Backups()
        in_place = backups.plan != "swap" and bool(backups)
        try:
            backups.restore(self._pool if keep else None)
        finally:
            self._current, self._key, self._report = (), None, None
            self._release()
            if in_place:
                give_back_freed_memory()
