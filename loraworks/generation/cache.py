"""Loaded main models (LRU under the config's RAM budget) and parsed LoRAs, shared by every
generation against one models root.

Each loaded model owns one long-lived `LoRAPatcher`: a generation only `set`s its stack, so an
unchanged LoRA set costs nothing and a changed one is restore + apply, never a model reload.
A lock per model serialises generations on it (the server's worker, tests, the CLI, a cluster
replica): all of them go through `ModelCache.patched`. The patcher's strategy is the config's
`[patch] strategy`; the loader tells it where each weight came from (`FileOriginals`), so the
*file* strategy can re-read originals instead of keeping them, and a model whose file changed
on disk meanwhile is loaded again rather than used with wrong weights.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loraworks.generation.conditioning import ConditioningCache
from loraworks.generation.errors import GenerationError
from loraworks.generation.events import StepReporter, load_listener
from loraworks.generation.windows import first_stack, follow_windows
from loraworks.lora import (
    LoRA,
    LoRAPatcher,
    LoRARestoreError,
    PatchReport,
    Stack,
    StrategyName,
    free_bytes,
    load_lora,
    same_device,
)
from loraworks.models import ModelManager, ModelRecord
from loraworks.models.config import ComputeSettings, Config
from loraworks.models.loadevents import LoadProgress
from loraworks.models.loading import model_bytes
from loraworks.models.originals import FileOriginals

GIB = 1024**3
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    key: str
    hash: str | None
    pipe: Any
    patcher: LoRAPatcher
    nbytes: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    conds: ConditioningCache = field(default_factory=ConditioningCache)


def pipeline_bytes(pipe: Any) -> int:
    """RAM held by a pipeline's torch modules (parameters and buffers)."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compute_placement(settings: ComputeSettings) -> tuple[torch.device, torch.dtype]:
    """Where models run (the config's `[compute]`): `auto` is a CUDA GPU when torch sees one,
    else the CPU (MPS only when named: untested here); `auto` precision is float16 on CUDA and
    float32 elsewhere (CPUs have no fast float16). A device this machine lacks is refused with
    what to write instead, before anything loads."""
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    ):
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise GenerationError(
            f"[compute] device = {settings.device!r} in config.toml, but torch sees {seen} CUDA "
            'GPU(s) here; set it to "auto" or "cpu"'
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GenerationError(
            "[compute] device = 'mps' in config.toml, but torch sees no Apple GPU here; set it "
            'to "auto" or "cpu"'
        )
    if settings.precision != "auto":
        return device, _PRECISIONS[settings.precision]
    return device, torch.float16 if device.type == "cuda" else torch.float32


def compute_summary(settings: ComputeSettings) -> str:
    """`cuda:0 (NVIDIA H100 80GB HBM3), float16` or `cpu, float32`: printed at start-up so a
    user sees at once whether the GPU is used (a CPU-only torch wheel is the usual surprise)."""
    device, dtype = compute_placement(settings)
    where = str(device)
    if device.type == "cuda":
        index = device.index or 0
        where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{where}, {str(dtype).removeprefix('torch.')}"


def device_residents(sizes: list[tuple[object, int]], budget: int) -> set[object]:
    """Which LoRAs to keep on the device: `sizes` is (key, bytes), most recently used first;
    as many as fit in `budget` bytes, in that order (the first that does not fit ends it)."""
    kept: set[object] = set()
    used = 0
    for key, size in sizes:
        if used + size > budget:
            break
        kept.add(key)
        used += size
    return kept


#: loads a main model: its record, the listener for its components, the originals to fill
LoadMain = Callable[[ModelRecord, LoadProgress | None, FileOriginals], Any]
#: the same, told the dtype the config asks for
LoadInDtype = Callable[[ModelRecord, torch.dtype, LoadProgress | None, FileOriginals], Any]


class ModelCache:
    def __init__(
        self,
        load_main: LoadMain,
        ram_budget_gb: float,
        max_loras: int,
        device: torch.device = torch.device("cpu"),
        lora_device_gb: float = 0.0,
        working_mem_gb: float = 0.0,
        estimate: Callable[[ModelRecord], int] = lambda record: 0,
        strategy: StrategyName = "auto",
    ):
        self._load_main = load_main
        self.strategy = strategy
        #: bytes a model will hold once loaded, read before loading it (0: not known, room
        #: is then made once it is loaded)
        self._estimate = estimate
        self.budget = int(ram_budget_gb * GIB)
        self.max_loras = max_loras
        self.device = device
        self.lora_device_budget = int(lora_device_gb * GIB)
        #: device memory kept free beside the models for what a generation allocates
        #: (activations, the VAE decode, patched weights); InvokeAI's device_working_mem_gb
        self.working_mem = int(working_mem_gb * GIB)
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loras: OrderedDict[tuple[str, str | None], LoRA] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # main-model loads so far (tests and benches read it)

    @classmethod
    def from_config(cls, config: Config, load: LoadInDtype) -> ModelCache:
        """A cache placed and sized by `config` (`[compute]`, `[cache]`, `[patch]`)."""
        device, dtype = compute_placement(config.compute)
        cfg = config.cache
        return cls(
            lambda record, progress, originals: load(record, dtype, progress, originals),
            cfg.ram_budget_gb,
            cfg.max_loras,
            device,
            cfg.lora_gpu_gb,
            cfg.device_working_mem_gb,
            lambda record: model_bytes(record, dtype),
            config.patch.strategy,
        )

    def loaded(self) -> list[LoadedModel]:
        """The loaded main models, least recently used first."""
        with self._lock:
            return list(self._models.values())

    @contextmanager
    def patched(
        self, record: ModelRecord, stack: Stack, steps: Sequence[StepReporter] = ()
    ) -> Iterator[tuple[LoadedModel, PatchReport]]:
        """`record`'s model with `stack` patched in, held (its lock) for the body.

        What is patched is the stack's LoRAs active at step 1 (`windows.first_stack`); each
        reporter of `steps` then switches the patch between steps for LoRAs with a window, and
        the model's encoded prompts follow the patch. The model stays patched after the body
        (the same stack next time costs nothing); an exception in the body restores its
        weights. When the originals cannot be read back (`LoRARestoreError`: the model file
        changed on disk while patched in place), the model is dropped — never used with wrong
        weights — and loaded again from the file as it is now, once."""
        for attempt in (1, 2):
            loaded = self.model(record)
            with loaded.lock:
                try:
                    report = loaded.patcher.set(first_stack(stack))
                except LoRARestoreError:
                    self._drop(loaded)
                    if attempt == 2:
                        raise
                    log.warning("'%s' changed on disk while patched: loading it again", record.name)
                    continue
                loaded.conds.sync(report)
                for reporter in steps:  # start=/stop=: switched between steps
                    follow_windows(reporter, loaded.patcher, stack)
                try:
                    yield loaded, report
                except BaseException:
                    try:
                        loaded.patcher.restore()
                    except LoRARestoreError:
                        self._drop(loaded)
                    raise
                return

    def _drop(self, loaded: LoadedModel) -> None:
        """Forget a model whose weights can no longer be trusted."""
        with self._lock:
            if self._models.get(loaded.key) is loaded:
                del self._models[loaded.key]

    def model(self, record: ModelRecord) -> LoadedModel:
        """The loaded pipeline for `record` (loading it, and evicting others, when needed).

        Room is made (idle models evicted, least recently used first) before the model is
        read, for the size its file headers give, so host memory never holds the old models
        and the new one at once; a model larger than the whole budget is loaded anyway, alone,
        with a warning. Room is made again for the size it turned out to have before it moves
        to the device, so a GPU never holds them together either and keeps `working_mem` free
        beside it when evicting idle models can make that room. Not enough device memory for
        the model itself even then → GenerationError, and nothing is cached. The load reports
        its components to the listener of `reporting_loads`, if any."""
        with self._lock:
            loaded = self._models.get(record.key)
            if loaded is not None and loaded.hash == record.hash:
                self._models.move_to_end(record.key)
                return loaded
            size = self._estimate(record)
            if size > self.budget:
                log.warning(
                    "'%s' needs about %.1f GiB, more than [cache] ram_budget_gb = %.1f in "
                    "config.toml: it is loaded alone, every idle model unloaded first",
                    record.name,
                    size / GIB,
                    self.budget / GIB,
                )
            self._make_room(size, loading=record.key)
            originals = FileOriginals()
            pipe = self._load_main(record, load_listener.get(), originals)
            size = pipeline_bytes(pipe)
            self._make_room(size, loading=record.key)
            try:
                pipe = pipe.to(self.device)
            except torch.OutOfMemoryError:
                raise GenerationError(
                    f"not enough {self.device} memory to load '{record.name}' "
                    f"({size / GIB:.1f} GiB) beside the models in use; set [compute] device = "
                    '"cpu" or use a smaller model'
                ) from None
            self.loads += 1
            patcher = LoRAPatcher(pipe, strategy=self.strategy, originals=originals or None)
            loaded = LoadedModel(record.key, record.hash, pipe, patcher, size)
            self._models[record.key] = loaded
            return loaded

    def _fits(self, size: int) -> bool:
        if sum(m.nbytes for m in self._models.values()) + size > self.budget:
            return False
        free = free_bytes(self.device) if self.device.type == "cuda" else None
        return free is None or size + self.working_mem <= free

    def _make_room(self, size: int, loading: str) -> None:
        """Drop least-recently-used idle models until `size` more bytes fit the budget (and,
        on CUDA, the device's free memory). A model in use stays; an older version of the
        one being loaded goes first."""
        for key in sorted(self._models, key=lambda k: k != loading):
            if self._fits(size):
                return
            lock = self._models[key].lock
            if not lock.acquire(blocking=False):
                continue
            try:
                self._models[key].patcher.restore()
                del self._models[key]
            finally:
                lock.release()
            if self.device.type == "cuda":
                gc.collect()  # pipelines hold reference cycles; free the memory before measuring

    def lora(self, record: ModelRecord) -> LoRA:
        """The parsed LoRA for `record`, read from disk once per content hash.

        On a GPU the most recently used LoRAs, up to `lora_device_gb`, are kept there too, so
        switching among them copies nothing; the others stay in host memory and the patcher
        copies each layer over as it applies it (all `max_loras` on the GPU could fill it:
        SDXL LoRAs weigh hundreds of MB)."""
        key = (record.key, record.hash)
        with self._lock:
            lora = self._loras.get(key)
            if lora is None:
                lora = load_lora(Path(record.path), name=record.name)
                self._loras[key] = lora
                while len(self._loras) > max(self.max_loras, 1):
                    self._loras.popitem(last=False)
            self._loras.move_to_end(key)
            # a LoRA already on the device stays in the budget when it becomes the newest:
            # only a new or host-side one can change which LoRAs fit
            if self.device.type != "cpu" and not same_device(lora.device, self.device):
                self._place_loras()
            return lora

    def _place_loras(self) -> None:
        newest_first = list(reversed(self._loras.items()))
        sizes = [(key, lora.nbytes()) for key, lora in newest_first]
        resident = device_residents(sizes, self.lora_device_budget)
        for key, lora in newest_first:
            want = self.device if key in resident else torch.device("cpu")
            if not same_device(lora.device, want):
                lora.to(want)


_CACHES: dict[Path, ModelCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_for(manager: ModelManager) -> ModelCache:
    """The one cache per models root (so CLI, server and tests share loaded models)."""
    root = manager.root.resolve()
    with _CACHES_LOCK:
        cache = _CACHES.get(root)
        if cache is None:
            # dtype always named: transformers 5 loads a text encoder in its file's dtype
            # otherwise, so an fp16 model would run its CLIP in fp16 beside an fp32 UNet
            cache = ModelCache.from_config(
                manager.config,
                lambda record, dtype, progress, originals: manager.load_main(
                    record, dtype=dtype, progress=progress, originals=originals
                ),
            )
            _CACHES[root] = cache
        return cache
