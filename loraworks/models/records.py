"""Typed records the manager hands out: installed models, scan outcomes, gallery images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, model_validator

from loraworks.models.fewstep import FewStep

ModelType = Literal["main", "lora", "vae", "embedding"]
BaseName = Literal["sd1", "sd2", "sdxl"]
Status = Literal["ok", "missing", "error"]

# Fields a user may edit; an edited field is never overwritten by a rescan.
EDITABLE_FIELDS = ("name", "trigger_words", "default_weight", "description", "fewstep")


class BundledEmbedding(BaseModel):
    """A textual-inversion embedding carried inside a LoRA file (``bundle_emb.<name>.…``)."""

    name: str
    base: BaseName
    vectors: int


class ModelRecord(BaseModel):
    """One installed (or drop-folder) model as stored in SQLite."""

    key: str
    name: str
    type: ModelType
    base: BaseName | None  # None only for records in `error` whose base could not be read
    #: every main-model base the tensors fit (the engine's rule: a CLIP-L-only LoRA fits sd1
    #: and sdxl); `[base]` when not given, `[]` when the base is unknown
    compatible_bases: list[BaseName] = []
    format: str
    #: a LoRA's layers by kind, as the engine read them (`{"lora": 176}`, `{"loha": 120}`);
    #: empty for other models and for a LoRA recorded before kinds were (until re-probed)
    layer_kinds: dict[str, int] = {}
    #: how the engine decided a LoRA's base (`LoRA.base_evidence`) and what it warned about
    #: when it read the file (`LoRA.warnings`: metadata contradicting the tensors, an ambiguous
    #: base, pickle entries left out); empty for other models
    base_evidence: list[str] = []
    warnings: list[str] = []
    #: an embedding's vector count (token slots it takes in a prompt); None for other models
    vectors: int | None = None
    #: the embeddings a LoRA file carries (listed with it); empty for other models
    bundled_embeddings: list[BundledEmbedding] = []
    path: Path
    in_place: bool
    hash: str | None
    #: the hashes A1111 and Civitai know it by (`autohashes`: SHA256, AutoV2, a LoRA's AutoV3,
    #: its file's own sshs_model_hash); empty for folders and for unreadable files
    hashes: dict[str, str] = {}
    size: int
    source: str
    trigger_words: list[str] = []
    default_weight: float | None = None
    #: a LoRA's few-step family (`models.fewstep`): which `config.toml` preset it brings
    #: (scheduler, spacing, eta, steps, CFG, weights); "none" for ordinary LoRAs
    fewstep: FewStep = "none"
    #: the step count the file was distilled for, as its name or metadata says (None: unstated)
    fewstep_steps: int | None = None
    description: str = ""
    metadata: dict[str, Any] = {}
    preview_path: Path | None = None
    status: Status = "ok"
    error: str | None = None
    created_at: str
    updated_at: str

    @model_validator(mode="after")
    def _default_compatible_bases(self) -> ModelRecord:
        """A record's own base always fits it; main models and VAEs fit only that."""
        if not self.compatible_bases and self.base is not None:
            self.compatible_bases = [self.base]
        return self

    def fits(self, base: BaseName) -> bool:
        """Whether this model can be used with a main model of `base` (the list/get filter)."""
        return base in self.compatible_bases


class ImageRecord(BaseModel):
    """A generated image in the gallery; `recipe` is what re-creates it."""

    id: int
    path: Path
    recipe: dict[str, Any]
    created_at: str


@dataclass
class Duplicate:
    """A drop-folder file skipped because the same content is already installed."""

    path: Path
    existing_key: str
    existing_name: str

    @property
    def message(self) -> str:
        return f"skipped {self.path}: same content as installed model '{self.existing_name}'"


@dataclass
class ScanReport:
    """What one autoimport scan changed; `unchanged` counts files skipped by size+mtime."""

    added: list[ModelRecord] = field(default_factory=list)
    updated: list[ModelRecord] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    missing: list[ModelRecord] = field(default_factory=list)
    errors: list[ModelRecord] = field(default_factory=list)
    unchanged: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.duplicates or self.missing or self.errors)
