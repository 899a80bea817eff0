r"""Memory per main model and precision (not a test): the table in docs/benchmarks.md, "Memory".

For SD1.5 and SDXL (random values in the published single-file layouts: SD1.5 fp32 4.3 GB,
SDXL fp16 6.9 GB) × float32 / float16 / bfloat16, each in its own process on the CPU:

* **load peak**: the process's anonymous memory (RssAnon, sampled every ms; the file's pages,
  which the kernel can drop, are not in it) while loraworks loads the file in that dtype, and
  the pipeline's own size;
* **generation peak**: RssAnon while one image is generated (`--size` px, 1 step, CFG 1:
  no unconditional pass), above the loaded model — for the dtypes in `--generate` (default
  float32 and bfloat16: float16 on a CPU runs without fast kernels, minutes per step);
* **extra while patched**, per patching strategy, for a kohya LoRA (rank 16) on every UNet and
  text-encoder linear and convolution: the peak while applying and what stays while patched,
  above the loaded model — *swap*, in place with *host* copies, in place re-reading the
  *file*. A strategy the free memory cannot hold is refused by the patcher before anything is
  written; its message (with the GiB it needs) is shown instead.

    .venv/bin/python bench/memory.py --size 256 --write-docs
    .venv/bin/python bench/memory.py --models sd1 --dtypes float32 --generate float32
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memwatch import PeakAnon, anon_bytes  # noqa: E402  (bench/ is this script's folder)

from tests.fixtures.checkpoints import published_layout, write_checkpoint  # noqa: E402

FILE_DTYPES = {"sd1": torch.float32, "sdxl": torch.float16}
GIB = 2**30
#: column -> (strategy asked, whether the loader's originals are passed)
STRATEGIES = {"swap": ("swap", False), "host": ("inplace", False), "file": ("inplace", True)}


def child(args: argparse.Namespace) -> None:
    """One model in one dtype, in this process; prints its numbers as JSON."""
    from torch import nn

    from loraworks.generation.render import RenderSettings, render
    from loraworks.lora import LoRAError, LoRAPatcher, load_lora
    from loraworks.lora.staging import give_back_freed_memory
    from loraworks.models.loading import pipeline_class
    from loraworks.models.originals import FileOriginals
    from loraworks.models.singlefile import load_checkpoint
    from tests.fixtures.models import Components
    from tests.lora.util import kohya_lora

    base, dtype = args.model, getattr(torch, args.dtype)
    extra = {} if base == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    out: dict = {}
    originals = FileOriginals()
    with PeakAnon() as load:
        start = anon_bytes()
        pipe = load_checkpoint(
            pipeline_class(base),
            args.file,
            base,
            args.cache,
            dtype=dtype,
            originals=originals,
            feature_extractor=None,
            **extra,
        )
    modules = [m for m in pipe.components.values() if isinstance(m, nn.Module)]
    out["pipeline"] = sum(t.nbytes for m in modules for t in (*m.parameters(), *m.buffers()))
    out["load_peak"] = load.peak - start
    if args.dtype in args.generate:
        loaded = anon_bytes()
        settings = RenderSettings("a red fox", None, args.size, args.size, 1, 1.0, "euler", 0)
        t = time.perf_counter()
        with PeakAnon() as gen:
            render(pipe, settings)
        out["generate_s"] = time.perf_counter() - t
        out["generation_peak"] = gen.peak - loaded
    c = Components(base, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    state = kohya_lora(c, rank=16, scale=0.01, kinds=(nn.Linear, nn.Conv2d), suffixes=None)
    lora = load_lora((state, {}), name="every-layer")
    del state
    for column, (strategy, with_file) in STRATEGIES.items():
        patcher = LoRAPatcher(pipe, strategy=strategy, originals=originals if with_file else None)
        gc.collect()
        give_back_freed_memory()  # what the last run freed is not reused unseen by this one
        before = anon_bytes()
        try:
            with PeakAnon() as peak:
                report = patcher.set([(lora, 1.0)])
        except LoRAError as exc:
            out[column] = {"refused": str(exc).split(" and only")[0]}
            continue
        held = anon_bytes() - before
        patcher.restore()
        out[column] = {"plan": report.strategy, "peak": peak.peak - before, "held": held}
    print(json.dumps(out))


def _gib(value: int | None) -> str:
    return "—" if value is None else f"{value / GIB:.2f}"


def _cell(value: dict) -> str:
    if "refused" in value:
        need = value["refused"].split("needs about ")[-1].split(" of")[0]
        return f"does not fit (needs {need})"
    return f"{value['peak'] / GIB:.2f} / {value['held'] / GIB:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="*", default=["sd1", "sdxl"])
    ap.add_argument("--dtypes", nargs="*", default=["float32", "float16", "bfloat16"])
    ap.add_argument("--size", type=int, default=256, help="generated image side, px")
    ap.add_argument(
        "--generate", nargs="*", default=["float32", "bfloat16"], help="dtypes to generate in"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="folder for the model files")
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="lw_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rows = []
    for base in args.models:
        path = work / f"{base}.safetensors"
        if not path.exists():
            print(f"writing {path}", flush=True)
            write_checkpoint(path, published_layout(base), FILE_DTYPES[base])
        for dtype in args.dtypes:
            command = [sys.executable, __file__, "--child", "--model", base, "--dtype", dtype]
            command += ["--file", str(path), "--cache", str(work / "cache")]
            command += ["--size", str(args.size), "--threads", str(args.threads)]
            command += ["--generate", *args.generate]
            run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if run.returncode != 0:
                print(run.stderr[-2000:], flush=True)
                rows.append((base, dtype, None))
                continue
            result = json.loads(run.stdout.strip().splitlines()[-1])
            print(base, dtype, result, flush=True)
            rows.append((base, dtype, result))
    cmd = "python " + " ".join(["bench/memory.py", *sys.argv[1:]])
    lines = [
        f"`{cmd}` — cpu, {args.threads} torch threads, torch {torch.__version__}; load average "
        f"{load_before:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. GiB of "
        "RssAnon (the file's pages not counted); generation: one "
        f"{args.size}×{args.size} image, 1 step, CFG 1; patch: a kohya LoRA (rank 16) on every "
        "UNet and text-encoder linear and conv, *peak while applying / held while patched*.",
        "",
        "| model | dtype | pipeline | load peak | generation peak (above the model) "
        "| swap | in place, host copies | in place, file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for base, dtype, r in rows:
        if r is None:
            lines.append(f"| {base} | {dtype} | failed (see the bench's output) |||||||")
            continue
        lines.append(
            f"| {base.upper()} | {dtype} | {r['pipeline'] / GIB:.2f} | {r['load_peak'] / GIB:.2f} "
            f"| {_gib(r.get('generation_peak'))} | {_cell(r['swap'])} | {_cell(r['host'])} "
            f"| {_cell(r['file'])} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    if args.write_docs:
        _write_docs(table)


def _write_docs(table: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text()
    key, end = "<!-- memory -->", "<!-- end memory -->"
    block = f"{key}\n{table}\n{end}"
    if key in text:
        text = text[: text.index(key)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## Memory — `bench/memory.py`\n\n{block}\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
