"""Patching: in place, exact, fast, and restored bit-exactly.

How one module is patched (``W`` = its original weight tensor, never modified)::

    acc = W (fp32)  +  Σ_i  residual_i(W, m_i)      every layer of every LoRA in the stack
    new = acc.to(W.dtype)                            rounded once
    param.data = new                                 same Parameter object, new storage

* **Order.** Every residual is computed from the *original* W and they are summed, so the
  result does not depend on the order of the stack — also for the kinds that read W (DoRA, IA³).
  This is how LyCORIS (each module's ``forward`` reads the untouched ``org_module.weight``) and
  PEFT (DoRA's norm is of the base weight plus its own adapter) stack adapters.
* **Restore by swapping.** The original tensor is kept as the backup (no copy) and put back with
  ``param.data = original``: bit-exact and free. Only weights actually patched are kept.
  Consequence for CUDA graphs / ``torch.compile(mode="reduce-overhead")``: a captured graph
  holds storage addresses, and both patching and restoring change ``param.data``'s storage —
  re-capture after `apply_loras` / `LoRAPatcher.set` (or patch before capturing). Code that
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
* If a patched model is moved to another device/dtype while patched, restore converts the
  original to the module's current device/dtype (exact unless the dtype changed).
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
from torch import nn

from .errors import LoRABaseMismatch, LoRABusy, LoRAError, LoRAShapeError, LoRAUnmatchedKeys
from .keys import flatten, text_encoder_candidates
from .layers import Layer
from .bases import COMPONENTS
from .model import LoRA, layer_copies_on

Weight = float | Mapping[str, float]
Stack = Sequence[tuple[LoRA, Weight]]


@dataclass
class PatchReport:
    """What a `LoRAPatcher.set` / `apply_loras` did."""

    applied: int = 0  # layers applied
    patched_params: int = 0  # parameters (weights + biases) swapped
    unmatched: list[str] = field(default_factory=list)  # "<lora>: <target> (<why>)"
    skipped: list[str] = field(default_factory=list)  # components with weight 0 / not named
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __bool__(self) -> bool:  # a report is always truthy (even with nothing applied)
        return True


# --- components and the model's base ----------------------------------------------------


def components_of(pipe: Any) -> dict[str, nn.Module]:
    if isinstance(pipe, Mapping):
        unknown = set(pipe) - set(COMPONENTS) - {"vae", "tokenizer", "tokenizer_2", "scheduler"}
        if unknown:
            raise LoRAError(
                f"unknown component name(s) {sorted(unknown)}; expected {', '.join(COMPONENTS)}"
            )
        comps = {k: pipe[k] for k in COMPONENTS if pipe.get(k) is not None}
    else:
        comps = {k: getattr(pipe, k) for k in COMPONENTS if getattr(pipe, k, None) is not None}
    for k, m in list(comps.items()):
        m = getattr(m, "_orig_mod", m)  # a torch.compile'd module patches its original
        comps[k] = m
        if not isinstance(m, nn.Module):
            raise LoRAError(f"component {k!r} is a {type(m).__name__}, not a torch module")
    if not comps:
        raise LoRAError("no unet / text_encoder / text_encoder_2 to patch in the given pipeline")
    return comps


def model_base(comps: Mapping[str, nn.Module]) -> str | None:
    """sd1/sd2/sdxl from the modules' widths; None when the components do not tell."""
    unet = comps.get("unet")
    if unet is not None:
        width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        if isinstance(width, list | tuple):
            width = width[0] if width else None
        if width is None:
            for name, m in unet.named_modules():
                if name.endswith("attn2.to_k") and isinstance(m, nn.Linear):
                    width = m.in_features
                    break
        found = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
        if found:
            return found
    if comps.get("text_encoder_2") is not None:
        return "sdxl"
    te = comps.get("text_encoder")
    if te is not None:
        hidden = getattr(getattr(te, "config", None), "hidden_size", None)
        if hidden == 1024:
            return "sd2"
    return None


# --- module index ------------------------------------------------------------------------

_AMBIGUOUS = object()


class _Index:
    """Dotted and flattened lookup of one component's modules (built once per patcher)."""

    def __init__(self, root: nn.Module):
        self.modules: dict[str, nn.Module] = dict(root.named_modules())
        self.flat: dict[str, Any] = {}
        for name in self.modules:
            f = flatten(name)
            self.flat[f] = _AMBIGUOUS if f in self.flat else name

    def resolve(self, comp: str, path: str) -> str | None:
        cands = text_encoder_candidates(path) if comp.startswith("text_encoder") else [path]
        for c in cands:
            if c in self.modules:
                return c
        for c in cands:
            hit = self.flat.get(flatten(c))
            if isinstance(hit, str):
                return hit
        return None


# --- the lock ----------------------------------------------------------------------------

_REGISTRY_LOCK = threading.Lock()
_OWNERS: weakref.WeakKeyDictionary[nn.Module, LoRAPatcher] = weakref.WeakKeyDictionary()


def _normalise_weight(w: Weight, label: str) -> dict[str, float]:
    if isinstance(w, bool):
        raise LoRAError(f"{label}: weight must be a number or a dict, not {w!r}")
    if isinstance(w, int | float):
        if not math.isfinite(w):
            raise LoRAError(f"{label}: weight {w!r} is not finite")
        return dict.fromkeys(COMPONENTS, float(w))
    if isinstance(w, Mapping):
        out = {}
        for k, v in w.items():
            if k not in COMPONENTS:
                raise LoRAError(
                    f"{label}: unknown component {k!r} in weight (use {', '.join(COMPONENTS)})"
                )
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise LoRAError(f"{label}: weight for {k!r} must be a finite number, not {v!r}")
            out[k] = float(v)
        return out
    raise LoRAError(f"{label}: weight must be a number or a dict, not {type(w).__name__}")


def _is_out_of_memory(exc: RuntimeError) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "allocate" in text or "out of memory" in text


def free_bytes(dev: torch.device) -> int | None:
    """Memory a new tensor on `dev` can take. On CUDA that includes what PyTorch's caching
    allocator holds unused (e.g. the patched weights of the last stack, freed on restore): the
    driver counts it as taken, so its figure alone would refuse stacks that fit. None: unknown."""
    if dev.type == "cuda":
        unused_cache = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return torch.cuda.mem_get_info(dev)[0] + unused_cache
    if dev.type == "cpu":
        return psutil.virtual_memory().available
    return None


def _layers_away(targets: list[_Target]) -> dict[torch.device, list[Layer]]:
    """Per device, the layers whose tensors are elsewhere (a LoRA in host memory patching a
    GPU model), each once."""
    away: dict[torch.device, dict[int, Layer]] = {}
    for t in targets:
        dev = t.module.weight.device
        for layer, _ in t.items:
            first = next(iter(layer.all_tensors().values()), None)
            if first is not None and first.device != dev:
                away.setdefault(dev, {})[id(layer)] = layer
    return {dev: list(layers.values()) for dev, layers in away.items()}


def _stage(targets: list[_Target], away: dict[torch.device, list[Layer]]) -> None:
    """Swap the layers in `away` for copies on their module's device, moved in one transfer
    per device and dtype instead of two synchronous copies per layer as each is applied. The
    copies live as long as `targets`; the LoRA objects are not changed."""
    copies: dict[int, Layer] = {}
    for dev, layers in away.items():
        copies.update(layer_copies_on(layers, dev))
    if copies:
        for t in targets:
            t.items = [(copies.get(id(layer), layer), m) for layer, m in t.items]


def _check_memory(targets: list[_Target], away: dict[torch.device, list[Layer]]) -> None:
    """Refuse, before allocating anything, a stack whose patched weights cannot fit.

    Peak while applying: every patched weight's new tensor (kept while patched), the LoRA
    layers copied over from another device, plus, for the largest module, an fp32 copy of the
    original and an fp32 accumulator."""
    need = {dev: sum(layer.nbytes() for layer in layers) for dev, layers in away.items()}
    biggest: dict[torch.device, int] = {}
    for t in targets:
        w = t.module.weight
        dev = w.device
        need[dev] = need.get(dev, 0) + w.numel() * w.element_size()
        biggest[dev] = max(biggest.get(dev, 0), w.numel() * 4 * 2)
    for dev, n in need.items():
        total = n + biggest[dev]
        free = free_bytes(dev)
        if free is not None and total > free:
            raise LoRAError(
                f"patching this stack needs about {total / 2**30:.1f} GiB of {dev.type} memory "
                f"and only {free / 2**30:.1f} GiB is free; nothing is patched"
            )


@dataclass
class _Target:
    comp: str
    path: str
    module: nn.Module
    items: list[tuple[Layer, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


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

    def __init__(self, pipe: Any, keep_buffers: bool = False):
        self.keep_buffers = keep_buffers
        self._pool: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        self.components = components_of(pipe)
        self.base = model_base(self.components)
        self._index: dict[str, _Index] = {}
        self._backups: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._current: tuple[tuple[LoRA, Weight], ...] = ()
        self._key: tuple | None = None
        self._report: PatchReport | None = None
        self._lock = threading.RLock()

    # --- public ------------------------------------------------------------------------------
    @property
    def current(self) -> tuple[tuple[LoRA, Weight], ...]:
        return self._current

    @property
    def report(self) -> PatchReport | None:
        return self._report

    def set(self, stack: Stack, strict: bool = False) -> PatchReport:
        with self._lock:
            stack = tuple((lora, w) for lora, w in stack)
            key = self._stack_key(stack)
            if key == self._key and self._report is not None:
                return self._report
            t0 = time.perf_counter()
            report = PatchReport()
            targets = self._plan(stack, strict, report)
            away = _layers_away(targets)
            _check_memory(targets, away)
            self._restore_locked(keep=True)
            try:
                if targets:
                    self._claim()
                    try:
                        _stage(targets, away)
                        self._apply(targets, report)
                    except BaseException as exc:
                        self._restore_locked(keep=False)
                        if isinstance(exc, RuntimeError) and _is_out_of_memory(exc):
                            raise LoRAError(
                                f"not enough memory to patch this stack ({exc}); nothing is patched"
                            ) from None
                        raise
            finally:
                self._pool.clear()  # while patched, hold nothing beyond the patched weights
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
    @staticmethod
    def _stack_key(stack) -> tuple:
        out = []
        for i, (lora, w) in enumerate(stack):
            if not isinstance(lora, LoRA):
                raise LoRAError(
                    f"stack entry {i}: expected a LoRA from load_lora(), got {type(lora).__name__}"
                )
            nw = _normalise_weight(w, lora.name or f"LoRA #{i}")
            out.append((id(lora), tuple(sorted(nw.items()))))
        return tuple(out)

    def _idx(self, comp: str) -> _Index:
        if comp not in self._index:
            self._index[comp] = _Index(self.components[comp])
        return self._index[comp]

    def _plan(self, stack, strict: bool, report: PatchReport) -> list[_Target]:
        targets: dict[tuple[str, str], _Target] = {}
        errors: list[str] = []
        for i, (lora, w) in enumerate(stack):
            label = lora.name or f"LoRA #{i}"
            strengths = {c: s for c, s in _normalise_weight(w, label).items() if s != 0.0}
            used = {c for c in lora.components if c in strengths}
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
                module = self._idx(comp).modules[found]
                weight = getattr(module, "weight", None)
                if not isinstance(weight, torch.Tensor):
                    report.unmatched.append(f"{label}: {target} (module has no weight)")
                    continue
                problem = layer.check(tuple(weight.shape)) or self._check_bound(
                    layer, strengths[comp], weight.dtype
                )
                if problem:
                    errors.append(f"{label}: {target}: {problem}")
                    continue
                if layer.touches_bias and getattr(module, "bias", None) is None:
                    report.warnings.append(
                        f"{label}: {target}: the module has no bias; the bias part is ignored"
                    )
                t = targets.setdefault((comp, found), _Target(comp, found, module))
                t.items.append((layer, strengths[comp]))
                t.labels.append(label)
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
    def _check_bound(layer: Layer, strength: float, dtype: torch.dtype) -> str | None:
        bound = layer.magnitude_bound(strength)
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
    def _apply(self, targets: list[_Target], report: PatchReport) -> None:
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
            for layer, strength in t.items:
                if layer.linear and not layer.touches_bias:
                    acc = layer.add_weight(acc, wf, strength)
                else:
                    res = layer.residuals({"weight": wf, "bias": bf}, strength)
                    dw, db = res.get("weight"), res.get("bias")
                    if dw is not None:
                        dw = dw.reshape(wf.shape)
                        acc = wf + dw if acc is None else acc.add_(dw)
                    if db is not None and bf is not None:
                        db = db.reshape(bf.shape)
                        bacc = bf + db if bacc is None else bacc.add_(db)
                report.applied += 1
            if acc is not None:
                self._swap(wparam, acc, wbuf)
                report.patched_params += 1
                self._check_finite(t, wparam.data, "weight")
            if bacc is not None:
                self._swap(bparam, bacc, bbuf)
                report.patched_params += 1
                self._check_finite(t, bparam.data, "bias")

    @staticmethod
    def _check_finite(t: _Target, value: torch.Tensor, what: str) -> None:
        """Refuse a patch that overflows the module's dtype (e.g. a huge alpha on fp16). Plain
        LoRA layers are checked by a cheap bound; other kinds by looking at the result."""
        bounds = [layer.magnitude_bound(s) for layer, s in t.items]
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

    def _swap(self, param: torch.Tensor, value: torch.Tensor, buf: torch.Tensor | None) -> None:
        orig = param.data
        if buf is not None:
            new = buf if value is buf else buf.copy_(value)  # rounds once into the dtype
        else:
            new = value if value.dtype == orig.dtype else value.to(orig.dtype)
            if new.stride() != orig.stride():
                new = torch.empty_like(orig).copy_(new)
        if new.data_ptr() == orig.data_ptr():  # never alias the backup
            new = new.clone()
        param.data = new
        self._backups.append((param, orig))

    def _restore_locked(self, keep: bool = False) -> None:
        backups, self._backups = self._backups, []
        try:
            for param, orig in reversed(backups):
                if keep:
                    self._pool[id(param)] = (param, param.data)
                if param.device != orig.device or param.dtype != orig.dtype:
                    orig = orig.to(device=param.device, dtype=param.dtype)
                param.data = orig
        finally:
            self._current, self._key, self._report = (), None, None
            self._release()


@contextmanager
def apply_loras(pipe: Any, stack: Stack, strict: bool = False):
    """Patch ``pipe`` with ``stack`` for the duration of the ``with`` block.

    ``stack``: ``[(lora, weight), ...]`` where weight is a float (every component) or a dict
    naming components (``unet``, ``text_encoder``, ``text_encoder_2``; unnamed ones are not
    patched). Yields a `PatchReport`; restores bit-exactly on exit, also on exception.
    """
    patcher = LoRAPatcher(pipe)
    report = patcher.set(stack, strict=strict)
    try:
        yield report
    finally:
        patcher.restore()
