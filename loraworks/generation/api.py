"""`generate` and `recall`: the Python API the CLI, the server and tests all call.

Order matters for "bad input loses nothing": everything that can be refused (prompt syntax,
unknown names, LoRA files, base mismatch) is checked before the main model is loaded or any
weight is patched.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from loraworks.generation.cache import LoadedModel, cache_for
from loraworks.generation.conditioning import is_sdxl
from loraworks.generation.errors import (
    BaseMismatch,
    GenerationError,
    LoRANotFound,
    UnusableModel,
)
from loraworks.generation.events import CancelFlag, ProgressCallback, StepReporter
from loraworks.generation.foreign import png_text
from loraworks.generation.placement import placement
from loraworks.generation.presets import StackEntry, resolve
from loraworks.generation.prompt import parse_prompt
from loraworks.generation.recalled import recall_settings
from loraworks.generation.recipe import (
    CHUNK,
    Recipe,
    RecipeModel,
    build_recipe,
    compute_notes,
    read_recipe,
    save_png,
)
from loraworks.generation.render import RenderSettings, render_seeds, with_native_size
from loraworks.generation.request import GenerateRequest, LoRASpec
from loraworks.generation.textual_inversion import find_uses, prepare, word_warnings
from loraworks.lora import with_user_presets
from loraworks.models import ModelError, ModelManager, ModelNotFound, ModelRecord


@dataclass
class GenerateResult:
    images: list[Path]
    warnings: list[str]
    recipe: dict[str, Any]  # the first image's; the others differ only in `seed`
    seeds: list[int] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)  # gallery ids, same order as `images`

    def keep(self, mm: ModelManager, image: Image.Image, recipe: Recipe) -> None:
        """Save `image` with its recipe under `outputs/`, record it in the gallery, list it."""
        path = save_png(image, mm.paths.outputs, recipe)
        as_dict = recipe.model_dump(mode="json")
        self.image_ids.append(mm.images.add(path, as_dict).id)
        self.images.append(path)
        self.seeds.append(recipe.seed)
        self.recipe = self.recipe or as_dict


_default_manager: ModelManager | None = None
_default_lock = threading.Lock()


def _manager(manager: ModelManager | None) -> ModelManager:
    global _default_manager
    if manager is not None:
        return manager
    with _default_lock:
        if _default_manager is None:
            _default_manager = ModelManager.open()
        return _default_manager


def _usable(record: ModelRecord, what: str) -> ModelRecord:
    if record.status != "ok":
        raise UnusableModel(
            f"{what} '{record.name}' cannot be used: {record.error or record.status}"
        )
    return record


def _lora_record(mm: ModelManager, name: str, main: ModelRecord) -> ModelRecord:
    try:
        record = mm.get(name, type="lora")
    except ModelNotFound as exc:
        raise LoRANotFound(f"LoRA: {exc}") from None
    except ModelError:  # one name installed for several bases: the main model's is meant
        record = mm.get(name, type="lora", base=main.base)
    return _usable(record, "LoRA")


def _stack(mm: ModelManager, specs: list[LoRASpec], main: ModelRecord) -> list[StackEntry]:
    stack: list[StackEntry] = []
    for spec in specs:
        record = _lora_record(mm, spec.name, main)
        if any(e.record.key == record.key for e in stack):
            raise GenerationError(
                f"LoRA '{record.name}' is given twice (request and/or <lora:> tags); give it once"
            )
        weight = with_user_presets(spec.weight, main.base, mm.config.lbw_presets, record.name)
        stack.append(StackEntry(record, weight))
    return stack


@dataclass(frozen=True)
class CheckedRequest:
    main: ModelRecord
    stack: list[StackEntry]  # the request's LoRAs, then the prompt's `<lora:>` tags
    prompt: str  # the prompt without its `<lora:>` tags


def check_request(request: GenerateRequest, manager: ModelManager | None = None) -> CheckedRequest:
    """Everything about `request` that the records can refuse, in the order generation meets
    it: prompt syntax, the main model (known, usable), each LoRA (known — a name installed for
    several bases means the main model's —, usable, named once), the base rule and the
    prompts' textual-inversion embeddings (known, not too many, of a fitting base). Reads no
    file (the init image is only looked for), so the server's queue calls it to refuse a request
    before accepting it."""
    mm = _manager(manager)
    if request.init_image is not None and not request.init_image.is_file():
        raise GenerationError(f"init image not found: {request.init_image}")
    parsed = parse_prompt(request.prompt)
    main = _usable(mm.get(request.model, type="main"), "Model")
    stack = _stack(mm, [*request.loras, *parsed.loras], main)
    check_bases(main, [entry.record for entry in stack])
    find_uses(mm, main, parsed.text, request.negative_prompt)  # unknown, too many, wrong base
    return CheckedRequest(main, stack, parsed.text)


def check_bases(main: ModelRecord, loras: list[ModelRecord]) -> None:
    """The one base rule (part of `check_request`), read from the records: a
    LoRA fits when its `compatible_bases` — the engine's rule, recorded when it was probed —
    holds the main model's base (a CLIP-L-only LoRA fits SD1 and SDXL, whatever single base it
    names). No file is read; the patcher checks the parsed file again before any weight."""
    for record in loras:
        if main.base is None or not record.fits(main.base):
            raise BaseMismatch(record.name, str(record.base), main.name, str(main.base))


def generate(
    request: GenerateRequest,
    *,
    manager: ModelManager | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
) -> GenerateResult:
    """Generate `request.batch_size` images (seeds S…S+N−1), save them with their recipes
    under `outputs/` and record them in the gallery.

    Raises `GenerationError`/`ModelError`/`LoRAError` (all `ValueError`) for bad input before
    any work, `GenerationCancelled` when `cancel` is set. The model stays patched with the
    requested stack after success (so the same stack next time costs nothing); on cancel or
    error its weights are restored to the loaded ones.
    """
    mm = _manager(manager)
    checked = check_request(request, mm)
    main = checked.main
    resolved = resolve(request, checked.prompt, main, checked.stack, mm.config)
    s = resolved.settings
    used = prepare(mm, main, s.prompt, s.negative_prompt)
    cache = cache_for(mm)
    stack = [(cache.lora(entry.record), entry.weight) for entry in resolved.loras]
    noticed = [f"LoRA '{lora.name}': {note}" for lora, _ in stack for note in lora.warnings]
    loaded = cache.model(main)
    noticed += used.warnings + word_warnings(
        used, loaded.pipe.tokenizer, s.prompt, s.negative_prompt
    )
    s = replace(with_native_size(loaded.pipe, s), embeddings=used.embeddings)
    steps = StepReporter(progress, cancel, is_sdxl(loaded.pipe))
    result = GenerateResult([], list(resolved.warnings), {})
    try:
        with cache.patched(main, stack, [steps]) as (loaded, report):
            compute = placement(loaded.pipe.unet)
            for seeded, rendered in render_seeds(
                loaded.pipe, s, request.batch_size, steps, loaded.conds
            ):
                recipe = build_recipe(main, resolved.loras, seeded, compute, used.uses)
                result.keep(mm, rendered.image, recipe)
    except torch.OutOfMemoryError:
        raise _out_of_memory(loaded, s) from None
    result.warnings[:0] = [*noticed, *report.user_warnings()]  # the file's, then the patch's
    return result


def _out_of_memory(loaded: LoadedModel, s: RenderSettings) -> GenerationError:
    """What a user can change when the device ran out of memory mid-generation (the weights
    are restored by then; the allocator's cache is handed back so a smaller retry fits)."""
    device = placement(loaded.pipe.unet)[0]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return GenerationError(
        f"out of {device} memory generating {s.width}x{s.height}: try a smaller size, fewer "
        "LoRAs, or raise [cache] device_working_mem_gb in config.toml so that idle models are "
        "unloaded first"
    )


def _recalled_record(mm: ModelManager, ref: RecipeModel, type_: str, notes: list[str]) -> str:
    """Key of the recorded model, else the same name; notes when the content changed."""
    try:
        record = mm.get(ref.key, type=type_)
    except ModelError:
        record = mm.get(ref.name, type=type_)  # reinstalled under a new key
    if ref.hash and record.hash != ref.hash:
        notes.append(f"{type_} '{ref.name}' changed since this image was made; pixels will differ")
    return record.key


def recall(
    png: Path,
    *,
    manager: ModelManager | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelFlag | None = None,
    anyway: bool = False,
) -> GenerateResult:
    """Re-run the recipe stored in `png` (one image, same seed and settings). A PNG made by
    another tool (A1111, InvokeAI, ComfyUI: `recalled.py`) is refused while anything in it
    does not map to the installed models, unless `anyway`; what was left out is then the
    first warning."""
    mm = _manager(manager)
    if CHUNK not in png_text(Path(png)):
        recalled = recall_settings(Path(png), mm)
        result = generate(recalled.request(anyway), manager=mm, progress=progress, cancel=cancel)
        result.warnings[:0] = [f"not recalled: {item}" for item in recalled.unmapped]
        return result
    recipe = read_recipe(Path(png))
    notes: list[str] = []
    request = recipe.to_request().model_copy(
        update={
            "model": _recalled_record(mm, recipe.model, "main", notes),
            "loras": [
                LoRASpec(name=_recalled_record(mm, lora, "lora", notes), weight=lora.weight)
                for lora in recipe.loras
            ],
        }
    )
    for embedding in recipe.embeddings:  # the prompt names them; note any whose file changed
        _recalled_record(mm, embedding, "embedding", notes)
    result = generate(request, manager=mm, progress=progress, cancel=cancel)
    result.warnings[:0] = notes + compute_notes(recipe, Recipe.model_validate(result.recipe))
    return result
