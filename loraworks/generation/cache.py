"""Loaded main models (LRU under the config's RAM budget) and parsed LoRAs, shared by every
generation against one models root.

Each loaded model owns one long-lived `LoRAPatcher`: a generation only `set`s its stack, so an
unchanged LoRA set costs nothing and a changed one is restore + apply, never a model reload.
A lock per model serialises generations on it (the server's worker, tests, the CLI).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from loraworks.generation.conditioning import ConditioningCache
from loraworks.lora import LoRA, LoRAPatcher, load_lora
from loraworks.models import ModelManager, ModelRecord

GIB = 1024**3


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


def default_device() -> tuple[torch.device, torch.dtype]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


class ModelCache:
    def __init__(
        self,
        load_main: Callable[[ModelRecord], Any],
        ram_budget_gb: float,
        max_loras: int,
        device: torch.device | None = None,
    ):
        self._load_main = load_main
        self.budget = int(ram_budget_gb * GIB)
        self.max_loras = max_loras
        self.device = device or default_device()[0]
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loras: OrderedDict[tuple[str, str | None], LoRA] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # main-model loads so far (tests and benches read it)

    def model(self, record: ModelRecord) -> LoadedModel:
        """The loaded pipeline for `record` (loading it, and evicting others, when needed)."""
        with self._lock:
            loaded = self._models.get(record.key)
            if loaded is not None and loaded.hash == record.hash:
                self._models.move_to_end(record.key)
                return loaded
            pipe = self._load_main(record).to(self.device)
            self.loads += 1
            loaded = LoadedModel(
                record.key, record.hash, pipe, LoRAPatcher(pipe), pipeline_bytes(pipe)
            )
            self._models[record.key] = loaded
            self._evict(keep=record.key)
            return loaded

    def _evict(self, keep: str) -> None:
        """Drop least-recently-used idle models while over budget (a model in use stays)."""
        for key in list(self._models):
            if sum(m.nbytes for m in self._models.values()) <= self.budget:
                return
            victim = self._models[key]
            if key == keep or not victim.lock.acquire(blocking=False):
                continue
            try:
                victim.patcher.restore()
                del self._models[key]
            finally:
                victim.lock.release()

    def lora(self, record: ModelRecord) -> LoRA:
        """The parsed LoRA for `record`, read from disk once per content hash."""
        key = (record.key, record.hash)
        with self._lock:
            lora = self._loras.get(key)
            if lora is None:
                lora = load_lora(Path(record.path), name=record.name)
                if self.device.type != "cpu":
                    lora.to(self.device)
                self._loras[key] = lora
                while len(self._loras) > max(self.max_loras, 1):
                    self._loras.popitem(last=False)
            self._loras.move_to_end(key)
            return lora


_CACHES: dict[Path, ModelCache] = {}
_CACHES_LOCK = threading.Lock()


def cache_for(manager: ModelManager) -> ModelCache:
    """The one cache per models root (so CLI, server and tests share loaded models)."""
    root = manager.root.resolve()
    with _CACHES_LOCK:
        cache = _CACHES.get(root)
        if cache is None:
            _, dtype = default_device()
            # always named: transformers 5 loads a text encoder in its file's dtype otherwise,
            # so an fp16 model would run its CLIP in fp16 on the CPU beside an fp32 UNet
            cfg = manager.config.cache
            cache = ModelCache(
                lambda record: manager.load_main(record, dtype=dtype),
                cfg.ram_budget_gb,
                cfg.max_loras,
            )
            _CACHES[root] = cache
        return cache
