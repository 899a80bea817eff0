r"""Loading a main model to a ready pipeline: loraworks vs diffusers.

Not a test. Random-weight full-size files in the published layouts are written to a temporary
folder (SD1.5 in fp32, 4.3 GB, like `v1-5-pruned-emaonly.safetensors`; SDXL in fp16, 6.9 GB,
like `sd_xl_base_1.0.safetensors`; `tests/fixtures/checkpoints.py`), with a diffusers config
folder per base: `from_single_file(path, config=folder, local_files_only=True)` reads the
architecture, tokenizer and scheduler from it instead of the hub, so it runs offline. A case
`<base>-folder` loads a diffusers folder of the same model in the same dtype instead
(`save_pretrained`'s layout) with `from_pretrained(folder, dtype=...)`.

Each load runs in its own process (`--child`), the engines alternating, and reports

* seconds from the call to the returned pipeline (imports excluded), and its CPU seconds;
* then the seconds to touch one byte per page of every weight: diffusers keeps weights that
  need no cast as views of its memory map of the file, read from disk only when first used;
* peak RSS (`ru_maxrss`: pages of a mapped file count too) and peak anonymous memory (RssAnon,
  sampled every 10 ms), both with the interpreter and its libraries (~0.4 GiB);
* the pipeline's size (parameters and buffers).

    .venv/bin/python bench/load.py --repeats 3
    .venv/bin/python bench/load.py --cases sd1-folder:float32,sd1-folder:bfloat16
    .venv/bin/python bench/load.py --cases sdxl:bfloat16 --repeats 1 --keep /tmp/lw_full

Cases whose pipeline alone exceeds `--max-gib` (default 12, this machine's share) are
refused: SDXL in fp32 is 13.9 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memwatch import PeakAnon  # noqa: E402  (bench/ is this script's folder)

from tests.fixtures.checkpoints import (  # noqa: E402
    layout_bytes,
    published_layout,
    write_checkpoint,
    write_pipeline_config,
    write_pipeline_folder,
)

FILE_DTYPES = {"sd1": torch.float32, "sdxl": torch.float16}
ENGINES = ("loraworks", "diffusers")
GIB = 2**30


def _load(engine: str, case: str, dtype: torch.dtype, path: Path, config: Path, cache: Path):
    from loraworks.models.folder import load_folder
    from loraworks.models.loading import pipeline_class
    from loraworks.models.singlefile import load_checkpoint

    base = case.removesuffix("-folder")
    cls = pipeline_class(base)
    extra = {} if base == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    if case.endswith("-folder"):
        if engine == "loraworks":
            return load_folder(cls, path, dtype, feature_extractor=None, **extra)
        return cls.from_pretrained(str(path), local_files_only=True, dtype=dtype, **extra)
    if engine == "loraworks":
        return load_checkpoint(cls, path, base, cache, dtype=dtype, feature_extractor=None, **extra)
    return cls.from_single_file(
        str(path), config=str(config), local_files_only=True, dtype=dtype, **extra
    )


def child(args: argparse.Namespace) -> None:
    """One load in this process; prints its numbers as JSON."""
    torch.set_num_threads(args.threads)
    import diffusers  # noqa: F401  (imported before timing, as loraworks' own imports are)

    from loraworks.models import singlefile  # noqa: F401

    dtype = getattr(torch, args.dtype)
    with PeakAnon() as sampler:
        cpu, wall = time.process_time(), time.perf_counter()
        pipe = _load(args.engine, args.case, dtype, args.file, args.config, args.cache)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
        tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
        touch = time.perf_counter()
        for t in tensors:  # one byte per 4 KiB page
            t.detach().reshape(-1).view(torch.uint8)[::4096].sum()
        touch = time.perf_counter() - touch
    dtypes = sorted({str(t.dtype) for t in tensors if t.is_floating_point()})
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "touch_seconds": touch,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "peak_anon": sampler.peak,
                "pipeline_bytes": sum(t.numel() * t.element_size() for t in tensors),
                "dtypes": dtypes,
            }
        )
    )


def _run_child(engine: str, case: str, dtype: str, files: dict, args) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        engine,
        "--case",
        case,
        "--dtype",
        dtype,
        "--file",
        str(files[case]),
        "--config",
        str(files[case + "-config"]),
        "--cache",
        str(files["cache"]),
        "--threads",
        str(args.threads),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{engine} {case} {dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _files(folder: Path, cases: set[str]) -> dict:
    files: dict = {"cache": folder / "cache"}
    for case in sorted(cases):
        base = case.removesuffix("-folder")
        if case.endswith("-folder"):
            path = folder / case
            if not (path / "model_index.json").exists():
                print(f"writing {path} ...", flush=True)
                write_pipeline_folder(path, base, FILE_DTYPES[base])
        else:
            path = folder / f"{base}.safetensors"
            if not path.exists():
                print(f"writing {path} ...", flush=True)
                write_checkpoint(path, published_layout(base), FILE_DTYPES[base])
        files[case] = path
        config = folder / f"{base}-config"
        if not (config / "model_index.json").exists():
            write_pipeline_config(config, base)
        files[case + "-config"] = config
    return files


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="sd1:float32,sd1:bfloat16,sdxl:bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--max-gib", type=float, default=12.0)
    ap.add_argument("--keep", type=Path, help="write the files here and keep them")
    ap.add_argument("--child", choices=ENGINES, dest="engine")
    for name in ("case", "dtype"):
        ap.add_argument(f"--{name}")
    for name in ("file", "config", "cache"):
        ap.add_argument(f"--{name}", type=Path)
    args = ap.parse_args()
    if args.engine:
        child(args)
        return
    cases = [tuple(c.split(":")) for c in args.cases.split(",")]
    for case, dtype in cases:
        base = case.removesuffix("-folder")
        size = layout_bytes(published_layout(base), getattr(torch, dtype)) / GIB
        if size > args.max_gib:
            raise SystemExit(f"{case} in {dtype} is {size:.1f} GiB, over --max-gib")
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = _files(folder, {case for case, _ in cases})
        results: dict = {}
        for repeat in range(args.repeats):
            for case, dtype in cases:
                engines = ENGINES if repeat % 2 == 0 else ENGINES[::-1]
                for engine in engines:
                    run = _run_child(engine, case, dtype, files, args)
                    results.setdefault((case, dtype, engine), []).append(run)
                    print(
                        f"{case} {dtype} {engine}: {run['seconds']:.1f} s, peak RSS "
                        f"{run['peak_rss'] / GIB:.2f} GiB, anon {run['peak_anon'] / GIB:.2f} GiB",
                        flush=True,
                    )
    print(_table(results, cases, args))


def _table(results: dict, cases: list, args) -> str:
    lines = [
        f"`{' '.join(['.venv/bin/python bench/load.py', *sys.argv[1:]])}` — "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch threads, torch {torch.__version__}, "
        f"diffusers {_version('diffusers')}, transformers {_version('transformers')}; "
        f"medians of {args.repeats}, each load in its own process.",
        "",
        "| file → dtype | pipeline GiB | engine | load s (CPU s) | touch weights s | "
        "peak RSS GiB (× pipeline) | peak anon GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, dtype in cases:
        for engine in ENGINES:
            runs = results[(case, dtype, engine)]
            size = _median(runs, "pipeline_bytes") / GIB
            rss = _median(runs, "peak_rss") / GIB
            file_dtype = str(FILE_DTYPES[case.removesuffix("-folder")]).removeprefix("torch.")
            lines.append(
                f"| {case} {file_dtype} → {dtype} | {size:.2f} | {engine} | "
                f"{_median(runs, 'seconds'):.1f} ({_median(runs, 'cpu_seconds'):.1f}) | "
                f"{_median(runs, 'touch_seconds'):.2f} | {rss:.2f} ({rss / size:.2f}×) | "
                f"{_median(runs, 'peak_anon') / GIB:.2f} |"
            )
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
