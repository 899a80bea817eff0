"""Which LoRA files each engine reads, and whether it patches what their producer meant.

Not a test. Every file of the parity suite (`tests/lora_parity/catalogue.py`: LyCORIS 4.1.3
networks, PEFT 0.21.2 adapters and folders, diffusers' `save_lora_weights`, LCM-LoRA and
first-generation attn-procs files, hand-made kohya files with SDXL sgm names), on the tiny
SD1/SD2/SDXL models, at weight 1:

* loraworks: `load_lora` + `apply_loras`;
* diffusers: the call its users make — `pipe.load_lora_weights(file)` (a PEFT folder:
  `load_lora_weights(folder, weight_name="adapter_model.safetensors")`) — with the adapters
  active as loaded;
* InvokeAI (``--invokeai-path``, as in `bench/lora_apply.py`; never a dependency): what its
  `LoRALoader` does for an SD1/SD2/SDXL LoRA once its probe has accepted the file with the
  right base — `normalize_peft_adapter_names`, for SDXL `convert_sdxl_keys_to_diffusers_format`,
  `lora_model_from_sd_state_dict` — then its direct patcher on every component with its own
  prefixes. Its probe, which may refuse a file first, is not run: this is its best case.

Each result is the relative error of the model's outputs against the producer's own forward
(max|engine − reference| / max|reference − unpatched|, as in the parity tests): "same" ≤ 1e-3,
"nothing" ≈ 1 (the file changed nothing), else "wrong"; or the error the engine raised.
Warnings in which diffusers or PEFT say they left part of the file out are counted.

    .venv/bin/python bench/format_coverage.py \
        --invokeai-path /work/invokeai-pkg /work/invokeai-stubs
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from loraworks.lora import apply_loras, load_lora  # noqa: E402
from tests.fixtures.models import BASES  # noqa: E402
from tests.lora_parity import producers as P  # noqa: E402
from tests.lora_parity.catalogue import FACTORIES  # noqa: E402
from tests.lora_parity.inputs import Outputs, forward_all, relative_errors  # noqa: E402

SAME = 1e-3  # the parity tests' tolerance
#: what diffusers and PEFT log or warn when they leave part of a file out
LEFT_OUT = ("unexpected", "additional target modules", "not loaded", "were not used")
#: also said of a component the file has no layers for: not counted (a file whose layers all
#: go unread scores "nothing")
NO_KEYS = "No LoRA keys associated"


def _worst(ours: Outputs, ref: Outputs, unpatched: Outputs, targets) -> float:
    errors = relative_errors(ours, ref, unpatched)
    return max(errors.get(c, 0.0) for c in targets)


def _ours(produced: P.Produced) -> tuple[Outputs | None, str]:
    comps = P.fresh(produced.base)
    try:
        lora = load_lora(produced.source)
        with apply_loras(comps.as_mapping(), [(lora, 1.0)]):
            return forward_all(comps.as_mapping()), ""
    except ValueError as e:
        return None, f"refused: {str(e).splitlines()[0][:90]}"


class _Left(logging.Handler):
    """Counts diffusers' and PEFT's warnings about keys they did not load."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _diffusers(produced: P.Produced):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    comps = P.fresh(produced.base)
    parts = {"unet": comps.unet, "text_encoder": comps.text_encoder, "vae": None}
    parts |= {"tokenizer": None, "scheduler": None}
    if produced.base == "sdxl":
        parts |= {"text_encoder_2": comps.text_encoder_2, "tokenizer_2": None}
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        parts |= {"safety_checker": None, "feature_extractor": None}
        pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    source = Path(produced.source)
    if source.is_dir():
        args = (str(source),)
        if not (source / "pytorch_lora_weights.safetensors").exists():
            kwargs = {"weight_name": "adapter_model.safetensors"}
        else:
            kwargs = {}
    else:
        args, kwargs = (str(source.parent),), {"weight_name": source.name}
    left = _Left()
    loggers = [logging.getLogger(n) for n in ("diffusers", "peft")]
    for log in loggers:
        log.addHandler(left)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe.load_lora_weights(*args, **kwargs)
        notes = [str(w.message) for w in caught] + left.lines
    except Exception as e:  # whatever diffusers raises is the result
        return None, f"refused: {type(e).__name__}: {str(e).splitlines()[0][:80]}", []
    finally:
        for log in loggers:
            log.removeHandler(left)
    left_out = [n for n in notes if any(s in n for s in LEFT_OUT) and not n.startswith(NO_KEYS)]
    return forward_all(comps.as_mapping()), "", left_out


def _invokeai(produced: P.Produced, inv):
    """InvokeAI's SD LoRA loading and direct patching (see the module docstring)."""
    from lora_apply import SD_PREFIXES, invokeai_apply
    from safetensors.torch import load_file

    patcher, from_sd, normalize, sdxl_keys = inv
    source = Path(produced.source)
    if source.is_dir():
        names = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors")
        source = next(source / n for n in names if (source / n).exists())
    comps = P.fresh(produced.base)
    prefixes = SD_PREFIXES
    if produced.base == "sdxl":
        prefixes = {**SD_PREFIXES, "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    try:
        sd = normalize(load_file(str(source)))
        if produced.base == "sdxl":
            sd = sdxl_keys(sd)
        with invokeai_apply(comps.as_mapping(), from_sd(sd), patcher, prefixes):
            return forward_all(comps.as_mapping()), ""
    except Exception as e:  # whatever InvokeAI raises is the result
        return None, f"refused: {type(e).__name__}: {str(e).splitlines()[0][:80]}"


def import_invokeai(paths: list[str]):
    """(patcher, loader, PEFT-name normaliser, SDXL key converter) and its version, or None."""
    from lora_apply import import_invokeai as import_patcher

    found, version = import_patcher(paths)
    if found is None:
        return None, version
    from invokeai.backend.patches.lora_conversions.peft_adapter_utils import (  # type: ignore
        normalize_peft_adapter_names,
    )
    from invokeai.backend.patches.lora_conversions.sdxl_lora_conversion_utils import (  # type: ignore
        convert_sdxl_keys_to_diffusers_format,
    )

    return (*found, normalize_peft_adapter_names, convert_sdxl_keys_to_diffusers_format), version


def _cell(outputs, message: str, produced, reference, unpatched, notes=()) -> str:
    if outputs is None:
        return message
    err = _worst(outputs, reference, unpatched, produced.targets)
    verdict = "same" if err <= SAME else ("nothing" if abs(err - 1) < 0.05 else "wrong")
    extra = f"; warned it left layers out ({len(notes)}x)" if notes else ""
    return f"{verdict} ({err:.1e}){extra}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    ap.add_argument("--only", nargs="*", default=None, help="catalogue names (default: all)")
    ap.add_argument("--invokeai-path", nargs="*", default=[], help="see bench/lora_apply.py")
    args = ap.parse_args()
    torch.manual_seed(0)
    import diffusers
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # its load reports of the PEFT-wrapped CLIPs

    folder = Path(tempfile.mkdtemp(prefix="coverage_"))
    inv, inv_version = import_invokeai(args.invokeai_path) if args.invokeai_path else (None, "")
    print(
        f"diffusers {diffusers.__version__}, InvokeAI {inv_version or 'not run'}, "
        f"torch {torch.__version__}; weight 1, fp32"
    )
    header = "| file (producer, kind) | base | loraworks | diffusers `load_lora_weights` |"
    print(header + (" InvokeAI loader + direct patcher |" if inv else ""))
    print("|---|---|---|---|" + ("---|" if inv else ""))
    counts = {"loraworks": 0, "diffusers": 0, "InvokeAI": 0, "files": 0}
    for name in args.only or FACTORIES:
        for base in args.bases:
            produced = FACTORIES[name](base, folder)
            if 1.0 not in produced.weights:
                continue
            reference = produced.reference(1.0)
            unpatched = forward_all(P.fresh(base).as_mapping())
            ours = _cell(*_ours(produced), produced, reference, unpatched)
            outputs, message, notes = _diffusers(produced)
            theirs = _cell(outputs, message, produced, reference, unpatched, notes)
            row = f"| {name} | {base} | {ours} | {theirs} |"
            if inv:
                invoke = _cell(*_invokeai(produced, inv), produced, reference, unpatched)
                counts["InvokeAI"] += invoke.startswith("same")
                row += f" {invoke} |"
            counts["files"] += 1
            counts["loraworks"] += ours.startswith("same")
            counts["diffusers"] += theirs.startswith("same") and not notes
            print(row, flush=True)
    engines = ["loraworks", "diffusers"] + (["InvokeAI"] if inv else [])
    scores = ", ".join(f"{e} {counts[e]} of {counts['files']}" for e in engines)
    print(f"\nPatched as the producer meant: {scores}.")


if __name__ == "__main__":
    main()
