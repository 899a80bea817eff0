"""Judging what the engine, the manager and the API do with one hostile file.

Every path must end in one of a few outcomes — loaded (and patched cleanly), or refused with a
typed error a person can read. Anything else (another exception, a hang, a model left patched,
non-finite weights, a half-written record, a payload that ran) is a `Failure`.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from loraworks.lora import LoRAError, LoRAPatcher, load_lora
from loraworks.models import ModelError, ModelManager
from tests.reliability.hostile import HostileCase, Written

OK = "ok"
REFUSED_LOAD = "refused at load"
REFUSED_APPLY = "refused at apply"
#: per-case hang guard (seconds); a case that takes longer is a failure, not a slow pass
CASE_LIMIT_S = 30.0


class Failure(AssertionError):
    """A hostile file got something other than a clean load or a typed, readable refusal."""


class Hang(Failure):
    pass


@contextmanager
def time_limit(seconds: float = CASE_LIMIT_S) -> Iterator[None]:
    """Raise `Hang` if the block runs longer than `seconds` (main thread only)."""

    def _alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def readable(exc: BaseException, label: str) -> str:
    """The message, checked to be a sentence for a person (not empty, no traceback)."""
    message = str(exc)
    if not message.strip() or "Traceback" in message or len(message) > 5000:
        raise Failure(f"{label}: unreadable message {message[:200]!r}")
    return message


_INT_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (unlike `torch.equal`, tells -0.0 from 0.0; and integer compares are
    much faster than fp16 ones on CPU)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = _INT_OF[a.element_size()]
    return torch.equal(a.detach().view(ints), b.detach().view(ints))


class Model:
    """A tiny model to patch, with the bit-exact state every refused apply must leave."""

    def __init__(
        self,
        components: dict[str, torch.nn.Module],
        params: dict[str, torch.nn.Parameter],
        values: dict[str, torch.Tensor],
    ):
        self.components, self.params, self.values = components, params, values
        self.original_ptrs = {k: p.data_ptr() for k, p in params.items()}

    def __repr__(self) -> str:  # hypothesis prints fixtures of failing examples
        return f"Model({len(self.params)} parameters)"

    @classmethod
    def of(cls, components: dict[str, torch.nn.Module]) -> Model:
        params = {f"{c}.{n}": p for c, m in components.items() for n, p in m.named_parameters()}
        return cls(components, params, {k: p.detach().clone() for k, p in params.items()})

    def assert_untouched(self, label: str) -> None:
        now = {f"{c}.{n}": p for c, m in self.components.items() for n, p in m.named_parameters()}
        swapped = [k for k in self.params if now.get(k) is not self.params[k]]
        changed = [k for k, v in self.values.items() if not same_bits(now[k], v)]
        if swapped or changed:
            raise Failure(f"{label}: model not restored ({(swapped + changed)[:3]})")

    def assert_restored_storage(self, label: str) -> None:
        """Same `Parameter` objects holding their original storage: cheap, for use between
        steps; the bit-exact `assert_untouched` also catches in-place writes."""
        now = {f"{c}.{n}": p for c, m in self.components.items() for n, p in m.named_parameters()}
        bad = [
            k
            for k, p in self.params.items()
            if now.get(k) is not p or p.data_ptr() != self.original_ptrs[k]
        ]
        if bad:
            raise Failure(f"{label}: {len(bad)} parameters not restored, e.g. {bad[:3]}")

    def changed_finite(self, label: str) -> None:
        bad = [
            k
            for k, p in self.params.items()
            if p.data_ptr() != self.original_ptrs[k] and not bool(torch.isfinite(p).all())
        ]
        if bad:
            raise Failure(f"{label}: patched weights are not finite: {bad[:3]}")


def engine_outcome(case: HostileCase, written: Written, model: Model) -> str:
    """`load_lora`, then (if it loaded) `LoRAPatcher.set` + restore on `model`."""
    label = case.label
    try:
        with time_limit():
            lora = load_lora(written.path)
    except LoRAError as exc:
        message = readable(exc, label)
        if written.layer and case.mutation == "nan_or_inf" and written.layer not in message:
            raise Failure(
                f"{label}: NaN/Inf refusal does not name {written.layer}: {message}"
            ) from exc
        _no_payload(written, label)
        return REFUSED_LOAD
    except Hang:
        raise
    except Exception as exc:
        raise Failure(f"{label}: load_lora raised {type(exc).__name__}: {exc}") from exc
    _no_payload(written, label)
    if case.stage == "load":
        raise Failure(f"{label}: a broken file loaded (layers {list(lora.layers)[:3]})")
    patcher = LoRAPatcher(model.components)
    try:
        with time_limit():
            patcher.set([(lora, 1.0)])
            model.changed_finite(label)
    except LoRAError as exc:
        readable(exc, label)
        model.assert_untouched(label)
        return REFUSED_APPLY
    except Failure:
        patcher.restore()
        raise
    except Exception as exc:
        patcher.restore()
        raise Failure(f"{label}: apply raised {type(exc).__name__}: {exc}") from exc
    patcher.restore()
    model.assert_untouched(label)
    if case.stage == "apply":
        raise Failure(f"{label}: a file that cannot fit the model was applied")
    return OK


def _no_payload(written: Written, label: str) -> None:
    if written.marker is not None and written.marker.exists():
        raise Failure(f"{label}: the pickle payload ran (created {written.marker.name})")


def install_outcome(case: HostileCase, written: Written, mm: ModelManager, engine: str) -> str:
    """`mm.install`: a refusal must leave no record and nothing under models/."""
    label = case.label
    before = {m.key for m in mm.list()}
    try:
        with time_limit():
            record = mm.install(written.path)
    except ModelError as exc:
        readable(exc, label)
        _no_payload(written, label)
        after = {m.key for m in mm.list()}
        if after != before:
            raise Failure(
                f"{label}: refused install left records {sorted(after - before)}"
            ) from exc
        leftovers = {p.name for p in mm.paths.models.iterdir()} - before
        if leftovers:
            raise Failure(f"{label}: refused install left files {sorted(leftovers)}") from exc
        return REFUSED_LOAD
    except Hang:
        raise
    except Exception as exc:
        raise Failure(f"{label}: install raised {type(exc).__name__}: {exc}") from exc
    _no_payload(written, label)
    if engine == REFUSED_LOAD:
        raise Failure(f"{label}: install accepted a file the engine refuses")
    if not Path(record.path).exists() or record.status != "ok":
        raise Failure(f"{label}: installed record is not usable: {record.status} {record.path}")
    return OK


def scan_outcomes(
    batch: list[tuple[HostileCase, Written, str]], mm: ModelManager
) -> dict[str, str | Failure]:
    """Scan the drop folder holding `batch`; every file the engine refuses must get an
    `error` record with a reason, and the scan itself must not raise (that is a `Failure` for
    the whole batch). Returns each case's outcome, or its `Failure`."""
    try:
        with time_limit(CASE_LIMIT_S * 4):
            report = mm.scan()
    except Hang:
        raise
    except Exception as exc:
        raise Failure(f"scan raised {type(exc).__name__}: {exc}") from exc
    by_path = {str(Path(m.path)): m for m in mm.list(type="lora")}
    duplicates = {str(d.path) for d in report.duplicates}
    out: dict[str, str | Failure] = {}
    for case, written, engine in batch:
        try:
            out[case.label] = _scan_judgement(
                case, written, engine, by_path.get(str(written.path)), duplicates
            )
        except Failure as exc:
            out[case.label] = exc
    return out


def _scan_judgement(case, written, engine: str, record, duplicates: set[str]) -> str:
    _no_payload(written, case.label)
    if record is None and str(written.path) in duplicates:
        return "duplicate"  # same bytes as another file: skipped, with a message naming it
    if engine == REFUSED_LOAD:
        if record is None or record.status != "error" or not (record.error or "").strip():
            got = None if record is None else (record.status, record.error)
            raise Failure(f"{case.label}: scan did not record the refusal: {got}")
        readable(ValueError(record.error), case.label)
        return "error record"
    if record is None or record.status != "ok":
        raise Failure(f"{case.label}: a file the engine reads was not recorded as ok")
    return "ok record"


def api_outcome(case: HostileCase, written: Written, client: Any) -> str:
    """POST /api/models/install: a 2xx or a 4xx JSON refusal, and the server keeps serving."""
    label = case.label
    with time_limit():
        response = client.post("/api/models/install", json={"source": str(written.path)})
    if response.status_code >= 500 or response.status_code < 200:
        raise Failure(f"{label}: API answered {response.status_code}: {response.text[:300]}")
    if response.status_code >= 400:
        body = response.json()
        if not isinstance(body, dict) or not str(body.get("error", "")).strip():
            raise Failure(f"{label}: API refusal without a message: {response.text[:300]}")
        readable(ValueError(body["error"]), label)
    _no_payload(written, label)
    if client.get("/api/models").status_code != 200:
        raise Failure(f"{label}: the server stopped serving after this file")
    return OK if response.status_code < 300 else f"HTTP {response.status_code}"
