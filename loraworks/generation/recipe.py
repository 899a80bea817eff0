"""Recipes: everything needed to re-create an image, stored as JSON in the PNG's
`loraworks_recipe` text chunk (and in the gallery record), beside A1111's infotext
(`parameters`, `infotext.py`) for other tools."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin
from pydantic import BaseModel, ValidationError

import loraworks
from loraworks.generation.errors import GenerationError
from loraworks.generation.infotext import PARAMETERS_CHUNK, format_infotext
from loraworks.generation.presets import StackEntry
from loraworks.generation.render import RenderSettings
from loraworks.generation.request import GenerateRequest, LoRASpec, LoRAWeight
from loraworks.generation.textual_inversion import EmbeddingUse
from loraworks.models import ModelRecord

CHUNK = "loraworks_recipe"


class RecipeModel(BaseModel):
    name: str
    key: str
    hash: str | None
    base: str | None
    #: the record's A1111/Civitai hashes (`ModelRecord.hashes`), which the infotext names
    hashes: dict[str, str] = {}


class RecipeLoRA(RecipeModel):
    weight: LoRAWeight


class RecipeEmbedding(RecipeModel):
    """A textual-inversion embedding the prompts used (by trigger or `embedding:name`; the
    prompt text itself says where), and which of them used it."""

    used_in: list[str]


class Recipe(BaseModel):
    loraworks_version: str
    model: RecipeModel
    loras: list[RecipeLoRA]
    embeddings: list[RecipeEmbedding] = []
    prompt: str  # the text the encoder saw: tags removed, trigger words appended
    negative_prompt: str | None
    seed: int
    steps: int
    cfg: float
    scheduler: str
    #: timestep spacing (None: the model's own) and eta (None: the scheduler takes none);
    #: recipes from before #18 have neither, which re-runs them as they were made
    spacing: str | None = None
    eta: float | None = None
    width: int
    height: int
    init_image: Path | None = None
    strength: float | None = None
    #: the UNet's dtype (``float32``…) and device type (``cpu``, ``cuda``, ``mps``): both change
    #: the pixels, so `recall` warns when they differ (None: a recipe from before they were kept)
    precision: str | None = None
    device: str | None = None

    def to_request(self) -> GenerateRequest:
        """The request that re-creates this one image: every setting explicit, no preset."""
        return GenerateRequest(
            model=self.model.key,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width,
            height=self.height,
            steps=self.steps,
            cfg=self.cfg,
            scheduler=self.scheduler,
            spacing=self.spacing,
            eta=self.eta,
            seed=self.seed,
            loras=[LoRASpec(name=lora.key, weight=lora.weight) for lora in self.loras],
            init_image=self.init_image,
            strength=self.strength,
        )


def build_recipe(
    main: ModelRecord,
    loras: list[StackEntry],
    settings: RenderSettings,
    compute: tuple[torch.device, torch.dtype],
    embeddings: tuple[EmbeddingUse, ...] = (),
) -> Recipe:
    device, dtype = compute
    return Recipe(
        loraworks_version=loraworks.__version__,
        model=RecipeModel(
            name=main.name, key=main.key, hash=main.hash, base=main.base, hashes=main.hashes
        ),
        loras=[
            RecipeLoRA(
                name=entry.record.name,
                key=entry.record.key,
                hash=entry.record.hash,
                base=entry.record.base,
                hashes=entry.record.hashes,
                weight=entry.weight,
            )
            for entry in loras
        ],
        embeddings=[
            RecipeEmbedding(
                name=use.record.name,
                key=use.record.key,
                hash=use.record.hash,
                base=use.record.base,
                hashes=use.record.hashes,
                used_in=list(use.where),
            )
            for use in embeddings
        ],
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        seed=settings.seed,
        steps=settings.steps,
        cfg=settings.cfg,
        scheduler=settings.scheduler,
        spacing=settings.spacing,
        eta=settings.eta,
        width=settings.width,
        height=settings.height,
        init_image=settings.init_image,
        strength=settings.strength if settings.init_image else None,
        precision=str(dtype).removeprefix("torch."),
        device=device.type,
    )


def compute_notes(made: Recipe, now: Recipe) -> list[str]:
    """What differs between the precision and device an image was made with and a re-run's
    (either changes the pixels)."""
    then = (made.precision, made.device)
    if None in then or then == (now.precision, now.device):
        return []
    return [
        f"this image was made in {made.precision} on {made.device}; this run used "
        f"{now.precision} on {now.device}, so the pixels differ (set [compute] precision and "
        "device in config.toml to match)"
    ]


def save_png(image: Image.Image, folder: Path, recipe: Recipe) -> Path:
    """Write `image` with its recipe under `folder/<date>/` without overwriting anything.

    The PNG is written whole to a hidden temporary file, synced, and then linked to its name
    (which fails rather than overwrite), so a crash never leaves half an image under a name.
    A folder that cannot be written is a `GenerationError` saying so."""
    now = datetime.now(UTC)
    day = folder / now.strftime("%Y-%m-%d")
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_CHUNK, format_infotext(recipe))
    info.add_text(CHUNK, recipe.model_dump_json())
    stem = f"{now.strftime('%H%M%S')}-{recipe.seed}"
    try:
        day.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=day, prefix=f".{stem}-", suffix=".tmp") as tmp:
            image.save(tmp, format="PNG", pnginfo=info)
            tmp.flush()
            os.fsync(tmp.fileno())
            for n in range(1000):
                path = day / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png")
                try:
                    os.link(tmp.name, path)
                except FileExistsError:
                    continue
                return path
    except OSError as exc:
        raise GenerationError(
            f"cannot save the image in {day}: {exc.strerror or exc} (is outputs/ writable?)"
        ) from None
    raise GenerationError(f"cannot find a free file name for {stem}.png in {day}")


def read_recipe(path: Path) -> Recipe:
    try:
        with Image.open(path) as image:
            text = image.text.get(CHUNK) if hasattr(image, "text") else None
    except (OSError, ValueError) as exc:
        raise GenerationError(f"{path}: not a readable image ({exc})") from None
    if text is None:
        raise GenerationError(f"{path}: no loraworks recipe in this image")
    try:
        return Recipe.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        raise GenerationError(f"{path}: damaged loraworks recipe ({exc})") from None
