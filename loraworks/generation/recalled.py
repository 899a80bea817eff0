"""A PNG's settings as a request for the installed models: `recall_settings(png, mm)`.

Our own PNGs carry the recipe; others are read by `foreign.py`. Each model the image names is
found among the records **by hash first** (A1111's AutoV2/AutoV3 and full SHA-256, InvokeAI's
and our blake3), **then by name** (case-insensitive, also as our install would have cleaned
it). What cannot be found or has no counterpart is listed in `unmapped`, never guessed: a
missing LoRA is left out *and listed*, and `request()` refuses while anything is listed unless
the caller accepts the rest (`anyway`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loraworks.generation.foreign import (
    ForeignLoRA,
    ForeignRef,
    ForeignSettings,
    RecallError,
    png_text,
    read_foreign,
)
from loraworks.generation.recipe import CHUNK, Recipe, RecipeModel
from loraworks.generation.request import GenerateRequest
from loraworks.models import ModelManager, ModelRecord
from loraworks.models.autohashes import hash_matches
from loraworks.models.names import sanitize_name

_FIELDS = ("prompt", "negative_prompt", "steps", "cfg", "seed", "width", "height", "scheduler")


@dataclass
class RecalledSettings:
    """What a PNG asks for, in request fields (models and LoRAs by record key)."""

    source: str  # "loraworks", "A1111", "InvokeAI", "ComfyUI"
    settings: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)

    def request(self, anyway: bool = False) -> GenerateRequest:
        """The request; a `RecallError` listing what could not be mapped unless `anyway` (then
        the rest is used), or when no main model was found."""
        if "model" not in self.settings or (self.unmapped and not anyway):
            listed = "; ".join(self.unmapped) or "no main model"
            hint = "" if "model" not in self.settings else " (recall anyway to use the rest)"
            raise RecallError(f"{self.source} image: not everything maps here: {listed}{hint}")
        try:
            return GenerateRequest.model_validate(self.settings)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise RecallError(f"{self.source} image: unusable settings ({problems})") from None


def _describe(ref: ForeignRef) -> str:
    hashes = f" (hash {', '.join(ref.hashes)})" if ref.hashes else ""
    return f"'{ref.name}'{hashes}" if ref.name else hashes.strip(" ()")


def find_record(
    mm: ModelManager, type_: str, ref: ForeignRef, base: str | None, notes: list[str]
) -> ModelRecord | None:
    """The usable record `ref` names: by any of its hashes, then by its name; None if none.
    Several records with one hash (same tensors, other metadata) go to the one of that name,
    else the first, with a note."""
    records = [r for r in mm.list(type=type_, base=base) if r.status == "ok"]  # type: ignore[arg-type]
    for digest in ref.hashes:
        found = [r for r in records if r.hash == digest or hash_matches(r.hashes, digest)]
        if found:
            named = [r for r in found if r.name.casefold() == ref.name.casefold()]
            if len(found) > 1 and not named:
                notes.append(
                    f"{type_} {_describe(ref)}: {len(found)} installed files share the hash; "
                    f"used '{found[0].name}'"
                )
            return (named or found)[0]
    wanted = {ref.name.casefold(), sanitize_name(ref.name).casefold()} - {""}
    by_name = [r for r in records if r.name.casefold() in wanted]
    return by_name[0] if by_name else None


def _loras(
    mm: ModelManager, loras: list[ForeignLoRA], main: ModelRecord | None, unmapped: list[str]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = main.base if main is not None else None
    for lora in loras:
        record = find_record(mm, "lora", lora.ref, base, unmapped)
        if record is None:
            where = f" for {base}" if base else ""
            unmapped.append(f"LoRA {_describe(lora.ref)} is not installed{where}; left out")
        elif any(entry["name"] == record.key for entry in out):
            unmapped.append(f"LoRA '{record.name}' is named twice; used once")
        else:
            out.append({"name": record.key, "weight": lora.weight})
    return out


def resolve(foreign: ForeignSettings, mm: ModelManager) -> RecalledSettings:
    """`foreign`'s settings with its models found among the records."""
    unmapped = list(foreign.unmapped)
    settings: dict[str, Any] = {
        name: getattr(foreign, name) for name in _FIELDS if getattr(foreign, name) is not None
    }
    main = None
    if foreign.model is None:
        unmapped.append("the image names no main model")
    else:
        main = find_record(mm, "main", foreign.model, None, unmapped)
        if main is None:
            unmapped.append(f"main model {_describe(foreign.model)} is not installed")
        else:
            settings["model"] = main.key
    settings["loras"] = _loras(mm, foreign.loras, main, unmapped)
    for ref in foreign.embeddings:
        if find_record(mm, "embedding", ref, None, unmapped) is None:
            unmapped.append(f"embedding {_describe(ref)} is not installed; its word stays text")
    return RecalledSettings(foreign.source, settings, unmapped)


def _own(text: str, label: str, mm: ModelManager) -> RecalledSettings:
    """Our recipe, its models found by key, then by content hash, then by name."""
    try:
        recipe = Recipe.model_validate_json(text)
    except ValueError as exc:
        raise RecallError(f"{label}: damaged loraworks recipe ({exc})") from None
    unmapped: list[str] = []

    def find(ref: RecipeModel, type_: str) -> str | None:
        if any(r.key == ref.key and r.status == "ok" for r in mm.list(type=type_)):  # type: ignore[arg-type]
            return ref.key
        foreign = ForeignRef(ref.name, (ref.hash,) if ref.hash else ())
        found = find_record(mm, type_, foreign, None, unmapped)
        if found is None:
            unmapped.append(f"{type_} '{ref.name}' is not installed")
        return found.key if found else None

    settings = recipe.to_request().model_dump(mode="json", exclude_none=True)
    settings.pop("model")
    if (main := find(recipe.model, "main")) is not None:
        settings["model"] = main
    settings["loras"] = [
        {"name": key, "weight": lora.weight}
        for lora in recipe.loras
        if (key := find(lora, "lora")) is not None
    ]
    return RecalledSettings("loraworks", settings, unmapped)


def settings_from_chunks(chunks: dict[str, str], label: str, mm: ModelManager) -> RecalledSettings:
    """The settings a PNG's text chunks hold (the web UI sends only those), for the installed
    models; `label` names the image in errors."""
    if CHUNK in chunks:
        return _own(chunks[CHUNK], label, mm)
    return resolve(read_foreign(chunks, label), mm)


def recall_settings(png: Path, mm: ModelManager) -> RecalledSettings:
    """The settings `png` holds, for the installed models (see the module docstring)."""
    return settings_from_chunks(png_text(png), str(png), mm)
