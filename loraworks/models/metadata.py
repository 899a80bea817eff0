"""Card facts from a model's header and its sidecar files: trigger words, preferred weight,
description and preview image. Sidecars are read only as `sidecars` allows (regular files in
their own folder, never a link to elsewhere).

Sources, most specific first: the A1111 sidecar `<name>.json` (`activation text`,
`preferred weight`, `description`), `<name>.txt` (A1111's description file), the
`modelspec.*` header keys, and kohya's `ss_tag_frequency` (the most frequent caption tags).

JSON in sidecars and header values is parsed with a size and depth limit (`boundedjson`): one
file nested 100,000 levels deep must be that file's problem, not every scan's. A record keeps
the header metadata up to `[limits] metadata_kept_kb`; what the product reads from it is taken
before that, and the rest stays in the file.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from loraworks.lora import boundedjson
from loraworks.models import sidecars

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_TAG_TRIGGERS = 3
MAX_SIDECAR_BYTES = 1024 * 1024
#: kohya's tag table for a large dataset is a few MB; beyond this no triggers are taken from it
MAX_TAG_FREQUENCY_BYTES = 16 * 1024 * 1024


@dataclass
class CardFacts:
    """Editable facts found for one model (empty when nothing says)."""

    trigger_words: list[str] = field(default_factory=list)
    default_weight: float | None = None
    description: str = ""
    preview_path: Path | None = None
    #: the header metadata the record keeps (`kept_metadata`)
    metadata: dict[str, str] = field(default_factory=dict)


def split_words(text: str) -> list[str]:
    """`"zkstar, shiny star"` → `["zkstar", "shiny star"]`, order kept, duplicates dropped."""
    words = (w.strip() for w in re.split(r"[,\n]", text))
    return list(dict.fromkeys(w for w in words if w))


def triggers_from_tag_frequency(raw: str) -> list[str]:
    """The most frequent tags of kohya's `ss_tag_frequency` ({dataset: {tag: count}})."""
    try:
        table = boundedjson.loads(raw, MAX_TAG_FREQUENCY_BYTES)
    except (ValueError, TypeError):
        return []
    if not isinstance(table, dict):
        return []
    counts: Counter[str] = Counter()
    for tags in table.values():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if isinstance(count, int | float):
                    counts[str(tag).strip()] += count
    counts.pop("", None)
    if not counts:
        return []
    # A trigger word is captioned on every image: keep the tags tied for the top count.
    top = max(counts.values())
    return [tag for tag, count in counts.most_common(MAX_TAG_TRIGGERS) if count == top]


def sidecar_base(weights: Path, model_path: Path) -> Path:
    """Sidecars sit next to the file, or next to the folder for folder models."""
    return model_path if model_path.is_dir() else weights.with_suffix("")


def _read_sidecar_text(path: Path) -> str | None:
    data = sidecars.read(path, MAX_SIDECAR_BYTES)
    return None if data is None else data.decode("utf-8", errors="replace")


def _read_sidecar_json(path: Path) -> dict:
    text = _read_sidecar_text(path)
    try:
        data = boundedjson.loads(text, MAX_SIDECAR_BYTES) if text is not None else None
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _weight(value: object) -> float | None:
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    # A1111 writes 0 for "not set".
    return weight if math.isfinite(weight) and weight != 0 else None


def find_preview(stem: Path) -> Path | None:
    candidates = [stem.with_name(stem.name + ext) for ext in PREVIEW_SUFFIXES]
    candidates += [stem.with_name(stem.name + ".preview" + ext) for ext in PREVIEW_SUFFIXES]
    if stem.is_dir():
        candidates += [stem / ("preview" + ext) for ext in PREVIEW_SUFFIXES]
    usable = (c for c in candidates if sidecars.usable(c, sidecars.MAX_PREVIEW_BYTES))
    return next(usable, None)


def kept_metadata(metadata: dict[str, str], budget: int) -> dict[str, str]:
    """The entries a record keeps: all of them when they fit `budget` bytes, else the smallest
    first until it is spent (a 60 MB `ss_tag_frequency` made every record lookup read it)."""
    sizes = {key: len(key) + len(str(value)) for key, value in metadata.items()}
    if sum(sizes.values()) <= budget:
        return dict(metadata)
    kept: set[str] = set()
    for key in sorted(metadata, key=sizes.__getitem__):
        if sizes[key] > budget:
            break
        budget -= sizes[key]
        kept.add(key)
    return {key: value for key, value in metadata.items() if key in kept}


def card_facts(metadata: dict[str, str], stem: Path, kept_bytes: int) -> CardFacts:
    """Facts for the model whose sidecars are named `stem` + suffix, and the metadata its
    record keeps (`kept_bytes` of it)."""
    sidecar = _read_sidecar_json(stem.with_name(stem.name + ".json"))
    facts = CardFacts(preview_path=find_preview(stem), metadata=kept_metadata(metadata, kept_bytes))
    activation = sidecar.get("activation text")
    if isinstance(activation, str) and split_words(activation):
        facts.trigger_words = split_words(activation)
    elif metadata.get("modelspec.trigger_phrase"):
        facts.trigger_words = split_words(metadata["modelspec.trigger_phrase"])
    elif metadata.get("ss_tag_frequency"):
        facts.trigger_words = triggers_from_tag_frequency(metadata["ss_tag_frequency"])
    facts.default_weight = _weight(sidecar.get("preferred weight"))
    description = sidecar.get("description")
    txt = stem.with_name(stem.name + ".txt")
    if isinstance(description, str) and description.strip():
        facts.description = description.strip()
    elif (text := _read_sidecar_text(txt)) is not None:
        facts.description = text.strip()
    elif metadata.get("modelspec.description"):
        facts.description = metadata["modelspec.description"].strip()
    return facts
