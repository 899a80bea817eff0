r"""LoRA apply/restore speed: loraworks vs diffusers and InvokeAI (when importable).

Not a test. On the full-size SD1.5 UNet + CLIP-L text encoder (random weights, built offline by
tests/fixtures/models.py), three kohya-format LoRA files are written to a temporary folder:

* rank 16 and rank 64 on the 176 attention linears (to_q/to_k/to_v/to_out.0 of attn1/attn2 in
  the 16 transformer blocks = 128, plus q/k/v/out_proj of the 12 text-encoder layers = 48);
* a LoCon (rank 16) on every Linear and Conv2d of the UNet and every Linear of the text encoder.

For each file, in the same process and on the same pipeline, alternating per repeat:

* loraworks: ``load_lora(file)`` + ``LoRAPatcher.set`` (load+apply), ``restore()``;
  also apply alone with the LoRA already loaded (what the generation cache does);
* diffusers: ``load_lora_weights`` + ``fuse_lora`` (load+apply), ``unfuse_lora`` +
  ``unload_lora_weights`` (restore);
* InvokeAI (``--invokeai-path``, never a dependency of this project): its SD1 LoRA loader
  (``safetensors.torch.load_file`` + ``lora_model_from_sd_state_dict``, load) and its direct
  patcher (``LayerPatcher.apply_smart_model_patches(..., force_direct_patching=True)`` on the
  UNet with prefix ``lora_unet_`` and the text encoder with ``lora_te_``, apply), leaving its
  context managers (restore). Without ``force_direct_patching`` it picks sidecar wrappers for
  modules on the CPU.

Medians over ``--repeats``; extra memory while patched, from the LoRA loaded to the LoRA applied
(CPU: RSS delta; CUDA: allocated delta).

    .venv/bin/python bench/lora_apply.py --device cpu --size full --repeats 3 --write-docs
    .venv/bin/python bench/lora_apply.py --device cpu --size full --repeats 5 \
        --threads 1 --invokeai-path /work/invokeai-pkg /work/invokeai-stubs --write-docs

``--strategies`` compares the patch strategies instead (`loraworks.lora.backups`): *swap*, in
place with *host* copies, in place re-reading the *file*, on a model loaded by loraworks from a
published-layout single file (``--model sd1|sdxl``, ``--dtype``): apply and restore times and
the anonymous memory (RssAnon, sampled every ms) the patch adds at its peak, holds while patched
and adds while restoring::

    .venv/bin/python bench/lora_apply.py --strategies --model sdxl --dtype fp32 --repeats 3
    python bench/lora_apply.py --strategies --device cuda --model sdxl --dtype fp16 --cap-gb 12

On CUDA ``--cap-gb`` caps the process's GPU memory (`torch.cuda.set_per_process_memory_fraction`)
as a 12 GB card would, and memory is CUDA's allocated bytes; the *file* column is left out (on a
GPU ``inplace`` keeps host copies while the host holds them).

``--invokeai-path`` folders go on ``sys.path`` only when InvokeAI is imported, after the pipeline
is built, so stub modules there (empty torchvision/cv2/onnx/onnxruntime that InvokeAI imports but
never calls on this path) cannot change what transformers and diffusers decided was installed.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file, save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from memwatch import PeakAnon, anon_bytes  # noqa: E402  (bench/ is this script's folder)

from loraworks.lora import LoRAError, LoRAPatcher, apply_loras, load_lora  # noqa: E402
from loraworks.lora.keys import flatten  # noqa: E402
from loraworks.lora.staging import give_back_freed_memory  # noqa: E402
from tests.fixtures.models import build_pipeline  # noqa: E402

ATTN = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
ATTN += tuple(a.replace("attn1", "attn2") for a in ATTN)
TE_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def _targets(pipe, kind: str):
    out = []
    for comp, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
        model = getattr(pipe, comp)
        for name, mod in model.named_modules():
            if kind == "attention":
                ok = isinstance(mod, nn.Linear) and name.endswith(
                    ATTN if comp == "unet" else TE_ATTN
                )
            else:
                ok = (
                    isinstance(mod, nn.Linear | nn.Conv2d)
                    if comp == "unet"
                    else isinstance(mod, nn.Linear)
                )
            if ok:
                spelled = name
                if comp == "text_encoder" and not name.startswith("text_model."):
                    spelled = "text_model." + name  # real files name the text_model level
                out.append((prefix + flatten(spelled), mod))
    return out


def make_lora_file(pipe, kind: str, rank: int, path: Path, seed: int = 0) -> tuple[int, int]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    targets = _targets(pipe, kind)
    for key, mod in targets:
        w = mod.weight
        sd[f"{key}.lora_down.weight"] = (torch.randn(rank, *w.shape[1:], generator=g) * 0.01).half()
        up = (w.shape[0], rank) + ((1, 1) if w.dim() == 4 else ())
        sd[f"{key}.lora_up.weight"] = (torch.randn(*up, generator=g) * 0.01).half()
        sd[f"{key}.alpha"] = torch.tensor(rank / 2, dtype=torch.float16)
    save_file(sd, str(path), {"ss_network_dim": str(rank), "ss_network_alpha": str(rank / 2)})
    patched_bytes = sum(m.weight.numel() * m.weight.element_size() for _, m in targets)
    return len(targets), patched_bytes


class Timer:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def now(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process — all its threads)."""
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()


def _d(a, b) -> tuple[float, float]:
    return b[0] - a[0], b[1] - a[1]


def mem(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return psutil.Process(os.getpid()).memory_info().rss


def bench_oneshot(pipe, path: Path, t: Timer, device: str) -> dict:
    """The public one-shot path: ``load_lora`` + ``with apply_loras(...)``."""
    gc.collect()
    a = t.now()
    lora = load_lora(path)
    if device == "cuda":
        lora.to("cuda")
    b = t.now()
    m0 = mem(device)
    ctx = apply_loras(pipe, [(lora, 1.0)])
    ctx.__enter__()
    c = t.now()
    extra = mem(device) - m0
    ctx.__exit__(None, None, None)
    d = t.now()
    return _pack(load=_d(a, b), apply=_d(b, c), restore=_d(c, d), extra=extra)


def bench_longlived(patcher: LoRAPatcher, path: Path, t: Timer, device: str) -> dict:
    """A patcher kept for the model (``keep_buffers=True``): load+apply, restore, re-apply."""
    gc.collect()
    a = t.now()
    lora = load_lora(path)
    if device == "cuda":
        lora.to("cuda")
    patcher.set([(lora, 1.0)])
    b = t.now()
    patcher.restore()
    c = t.now()
    other = load_lora(path)  # a different LoRA object: a full re-patch, not a no-op
    if device == "cuda":
        other.to("cuda")
    patcher.set([(lora, 1.0)])
    d = t.now()
    patcher.set([(other, 0.5)])  # switch stacks
    e = t.now()
    patcher.restore()
    return _pack(apply=_d(a, b), restore=_d(b, c), switch=_d(d, e), extra=0)


def bench_diffusers(pipe, path: Path, t: Timer, device: str) -> dict:
    gc.collect()
    a = t.now()
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="bench")
    m0 = mem(device)  # its LoRA loaded (a CUDA sync inside the timed span: a few µs)
    pipe.fuse_lora(lora_scale=1.0)
    b = t.now()
    extra = mem(device) - m0
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    c = t.now()
    return _pack(apply=_d(a, b), restore=_d(b, c), extra=extra)


def _pack(extra: int, **spans: tuple[float, float]) -> dict:
    out: dict = {"extra": extra}
    for k, (wall, cpu) in spans.items():
        out[k], out[k + "_cpu"] = wall, cpu
    return out


InvokeAI = tuple[Callable, Callable]  # (LayerPatcher, lora_model_from_sd_state_dict)


def import_invokeai(paths: list[str]) -> tuple[InvokeAI | None, str]:
    """InvokeAI's patcher and SD loader, imported lazily: it is never this project's dependency."""
    from transformers.utils import is_torchvision_available

    is_torchvision_available()  # cached now, so a torchvision stub in `paths` cannot change it
    sys.path[:0] = paths
    try:
        from invokeai.backend.patches.layer_patcher import LayerPatcher  # type: ignore
        from invokeai.backend.patches.lora_conversions.sd_lora_conversion_utils import (  # type: ignore
            lora_model_from_sd_state_dict,
        )
        from invokeai.version import __version__  # type: ignore
    except Exception as e:  # any import-time failure just means "not measured"
        return None, f"not importable ({type(e).__name__}: {e})"
    return (LayerPatcher, lora_model_from_sd_state_dict), __version__


#: InvokeAI's key prefixes per component (SD1/SD2; SDXL names its text encoders te1/te2)
SD_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def invokeai_apply(
    models: Mapping[str, nn.Module], patch, patcher, prefixes: Mapping[str, str] = SD_PREFIXES
) -> ExitStack:
    """InvokeAI's direct patcher on each of `models`, with its own key prefixes.

    InvokeAI 6.14 pins transformers 5.5, whose CLIPTextModel has a ``text_model`` level; from
    5.16 on it has none, so that level goes into the text encoders' prefixes here (else it
    finds no text-encoder module).
    """
    stack = ExitStack()
    for comp, model in models.items():
        level = "" if comp == "unet" or hasattr(model, "text_model") else "text_model_"
        stack.enter_context(
            patcher.apply_smart_model_patches(
                model=model,
                patches=[(patch, 1.0)],
                prefix=prefixes[comp] + level,
                dtype=model.dtype,
                force_direct_patching=True,
            )
        )
    return stack


def _sd_parts(pipe) -> dict[str, nn.Module]:
    return {"unet": pipe.unet, "text_encoder": pipe.text_encoder}


def bench_invokeai(pipe, path: Path, t: Timer, device: str, inv: InvokeAI) -> dict:
    """InvokeAI's path: its SD1 loader, its direct patcher, restore on leaving its contexts."""
    gc.collect()
    a = t.now()
    patch = inv[1](load_file(str(path), device="cpu"))
    b = t.now()
    m0 = mem(device)
    stack = invokeai_apply(_sd_parts(pipe), patch, inv[0])
    c = t.now()
    extra = mem(device) - m0
    stack.close()
    d = t.now()
    return _pack(load=_d(a, b), apply=_d(b, c), restore=_d(c, d), extra=extra)


def _weights(pipe) -> Iterator[tuple[str, torch.Tensor]]:
    """The UNet's and text encoder's weights by name."""
    for comp in ("unet", "text_encoder"):
        for n, p in getattr(pipe, comp).named_parameters():
            yield f"{comp}.{n}", p.detach()


def _max_delta(ours: dict[str, torch.Tensor], pipe) -> float:
    """max |ours − pipe| over the weights both name (PEFT's ``base_layer`` level dropped)."""
    worst = 0.0
    for n, p in _weights(pipe):
        n = n.replace(".base_layer", "")
        if n in ours and "lora_" not in n:
            worst = max(worst, (ours[n].float() - p.float()).abs().max().item())
    return worst


def check_agreement(pipe, path: Path, inv: InvokeAI | None) -> tuple[float, float | None]:
    """max |loraworks − diffusers| and |loraworks − InvokeAI| over UNet + text-encoder weights."""
    lora = load_lora(path)
    with torch.no_grad():
        patcher = LoRAPatcher(pipe)
        patcher.set([(lora, 1.0)])
        ours = {n: p.clone() for n, p in _weights(pipe)}
        patcher.restore()
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="check")
        pipe.fuse_lora(lora_scale=1.0)
        vs_df = _max_delta(ours, pipe)
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        vs_inv = None
        if inv is not None:
            with invokeai_apply(_sd_parts(pipe), inv[1](load_file(str(path))), inv[0]):
                vs_inv = _max_delta(ours, pipe)
    return vs_df, vs_inv


def _total(r: dict, suffix: str = "") -> float:
    """load + apply + restore (the keys a run has)."""
    return sum(r.get(k + suffix, 0.0) for k in ("load", "apply", "restore"))


def _ratio(r: dict, ref: str, of: str, suffix: str = "total") -> str:
    """How many times faster ``of`` is than ``ref`` ("—" when ``ref`` was not run)."""
    key = f"{ref}_{suffix}"
    return f"{r[key] / r[f'{of}_{suffix}']:.1f}x" if key in r else "—"


def _opt_s(r: dict, tag: str, key: str) -> str:
    """Seconds of a run that may be missing (InvokeAI not importable)."""
    return fmt_s(r[f"{tag}_{key}"]) if f"{tag}_{key}" in r else "—"


def fmt_s(x: float) -> str:
    return f"{x:.3f}"


def fmt_mb(x: float) -> str:
    return f"{x / 2**20:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size", choices=["full", "tiny"], default="full")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", nargs="*", default=None, help="subset of: r16 r64 locon")
    ap.add_argument(
        "--invokeai-path",
        nargs="*",
        default=[],
        help="folders to import InvokeAI from (its package; stubs for its import-time-only deps)",
    )
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    ap.add_argument(
        "--strategies",
        action="store_true",
        help="compare the patch strategies (swap, host copies, file) instead, on a full model "
        "loaded from a published-layout file (CPU)",
    )
    ap.add_argument("--model", choices=["sd1", "sdxl"], default="sd1", help="with --strategies")
    ap.add_argument(
        "--cap-gb",
        type=float,
        default=None,
        help="with --strategies on CUDA: the GPU memory this process may use (a 12 GB card: 12)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.strategies:
        strategies_main(args)
        return
    dtype_name = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]

    tmp = Path(tempfile.mkdtemp(prefix="lora_bench_"))
    t0 = time.perf_counter()
    pipe = build_pipeline("sd1", tmp / "pipe", size=args.size)
    pipe.to(args.device, dtype)
    print(f"built {args.size} SD1.5 pipeline in {time.perf_counter() - t0:.0f}s", flush=True)
    inv, inv_version = import_invokeai(args.invokeai_path)
    print(f"InvokeAI: {inv_version}", flush=True)

    cases = [("r16", "attention", 16), ("r64", "attention", 64), ("locon", "all", 16)]
    if args.only:
        cases = [c for c in cases if c[0] in args.only]
    timer = Timer(args.device)
    load_before = os.getloadavg()[0]
    rows = []
    for label, kind, rank in cases:
        path = tmp / f"{label}.safetensors"
        n, patched_bytes = make_lora_file(pipe, kind, rank, path)
        desc = {
            "r16": "rank 16, attention",
            "r64": "rank 64, attention",
            "locon": "LoCon r16, all",
        }[label]
        print(f"{desc}: {n} layers, file {path.stat().st_size / 2**20:.1f} MiB", flush=True)
        agree, agree_inv = check_agreement(pipe, path, inv)
        results: dict[str, list[dict]] = {"one": [], "long": [], "df": [], "inv": []}
        patcher = LoRAPatcher(pipe, keep_buffers=True)
        runs = [
            ("one", partial(bench_oneshot, pipe)),
            ("long", partial(bench_longlived, patcher)),
            ("df", partial(bench_diffusers, pipe)),
        ]
        if inv is not None:
            runs.append(("inv", partial(bench_invokeai, pipe, inv=inv)))
        for rep in range(args.repeats):
            for tag, fn in runs if rep % 2 == 0 else runs[::-1]:
                results[tag].append(fn(path, timer, args.device))
            print(
                f"  repeat {rep}: "
                + ", ".join(f"{tag} {_total(results[tag][-1]):.3f}s" for tag, _ in runs),
                flush=True,
            )
        patcher.release_buffers()

        row = {"desc": desc, "layers": n, "patched": patched_bytes}
        row |= {"agree": agree, "agree_inv": agree_inv}
        for tag, rs in results.items():
            if not rs:
                continue
            for key in ("load", "apply", "restore", "switch", "extra"):
                if key in rs[0]:
                    row[f"{tag}_{key}"] = statistics.median(r[key] for r in rs)
            row[f"{tag}_total"] = statistics.median(_total(r) for r in rs)
            row[f"{tag}_cpu"] = statistics.median(_total(r, "_cpu") for r in rs)
        rows.append(row)
        for ref in ("df", "inv"):
            if f"{ref}_total" in row:
                print(
                    f"  -> vs {ref}: one-shot {row[f'{ref}_total'] / row['one_total']:.1f}x, "
                    f"long-lived {row[f'{ref}_total'] / row['long_total']:.1f}x faster (wall); "
                    f"CPU time {row[f'{ref}_cpu'] / row['one_cpu']:.1f}x / "
                    f"{row[f'{ref}_cpu'] / row['long_cpu']:.1f}x less",
                    flush=True,
                )

    device_desc = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    import diffusers

    cmd = "python " + " ".join(["bench/lora_apply.py", *sys.argv[1:]])
    lines = [
        f"`{cmd}` — {args.size} SD1.5 UNet + CLIP-L, {dtype_name}, {args.device} ({device_desc}), "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, InvokeAI "
        f"{inv_version if inv else 'not measured'}; medians of {args.repeats} "
        f"repeats, seconds. Load average during the run: {load_before:.1f} → "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        + (" (other jobs were running)." if load_before > 0.75 * (os.cpu_count() or 1) else "."),
        "",
        "| LoRA | layers | loraworks one-shot: load / apply / restore / **total** "
        "| loraworks long-lived: load+apply / restore / **total** | switch stacks "
        "| diffusers: load+fuse / unfuse+unload / **total** "
        "| InvokeAI direct: load / apply / restore / **total** "
        "| speed-up vs diffusers one-shot / long-lived "
        "| speed-up vs InvokeAI one-shot / long-lived "
        "| CPU-s one-shot / long-lived / diffusers / InvokeAI "
        "| CPU speed-up vs diffusers / vs InvokeAI (one-shot, long-lived) "
        "| extra MiB while patched, LoRA loaded before (one-shot / diffusers / InvokeAI / "
        "patched weights) "
        "| max \\|Δ\\| vs diffusers / InvokeAI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        has_inv = "inv_total" in r
        ratio = partial(_ratio, r)
        inv_s = partial(_opt_s, r, "inv")
        lines.append(
            f"| {r['desc']} | {r['layers']} "
            f"| {fmt_s(r['one_load'])} / {fmt_s(r['one_apply'])} / {fmt_s(r['one_restore'])} / "
            f"**{fmt_s(r['one_total'])}** "
            f"| {fmt_s(r['long_apply'])} / {fmt_s(r['long_restore'])} / "
            f"**{fmt_s(r['long_total'])}** "
            f"| {fmt_s(r['long_switch'])} "
            f"| {fmt_s(r['df_apply'])} / {fmt_s(r['df_restore'])} / **{fmt_s(r['df_total'])}** "
            f"| {inv_s('load')} / {inv_s('apply')} / {inv_s('restore')} / **{inv_s('total')}** "
            f"| **{ratio('df', 'one')} / {ratio('df', 'long')}** "
            f"| **{ratio('inv', 'one')} / {ratio('inv', 'long')}** "
            f"| {fmt_s(r['one_cpu'])} / {fmt_s(r['long_cpu'])} / {fmt_s(r['df_cpu'])} / "
            f"{inv_s('cpu')} "
            f"| **{ratio('df', 'one', 'cpu')}, {ratio('df', 'long', 'cpu')} / "
            f"{ratio('inv', 'one', 'cpu')}, {ratio('inv', 'long', 'cpu')}** "
            f"| {fmt_mb(r['one_extra'])} / {fmt_mb(r['df_extra'])} / "
            f"{fmt_mb(r['inv_extra']) if has_inv else '—'} / {fmt_mb(r['patched'])} "
            f"| {r['agree']:.1e} / "
            f"{'—' if r['agree_inv'] is None else format(r['agree_inv'], '.1e')} |"
        )
    if inv is None:
        lines += ["", f"InvokeAI: {inv_version} (not measured)."]
    table = "\n".join(lines)
    print("\n" + table)
    if args.write_docs:
        write_section(table, args)


SECTION = "## LoRA apply"


def write_section(table: str, args) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    key = f"<!-- lora_apply {args.device} {args.size} -->"
    block = f"{key}\n{table}\n{key.replace('<!--', '<!-- end')}"
    if SECTION not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{INTRO}\n\n{block}\n"
    else:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        section = text[start:] if nxt == -1 else text[start:nxt]
        end_key = key.replace("<!--", "<!-- end")
        if key in section:
            a = section.index(key)
            b = section.index(end_key) + len(end_key)
            section = section[:a] + block + section[b:]
        else:
            section = section.rstrip("\n") + f"\n\n{block}\n"
        text = text[:start] + section + ("" if nxt == -1 else text[nxt:])
    path.write_text(text)
    print(f"wrote {path}")


INTRO = """\
`bench/lora_apply.py` (not a test). loraworks computes each patched weight in fp32 straight into
a fresh tensor (one GEMM per LoRA layer: `addmm(W, up, down)`), rounds once into the module's
dtype and swaps it into the same `Parameter` (`param.data = new`); restore swaps the untouched
original back — exact and nearly free. diffusers wraps every target in a PEFT layer, fuses by
adding `B@A` into the weight in place, and restores by subtracting (`unfuse_lora`, which drifts)
and unwrapping.

* *one-shot*: `load_lora` + `with apply_loras(...)`, a new patcher each time. Its apply pays for
  fresh memory for the patched weights (page faults); extra memory while patched is by design
  the size of the patched weights (the originals are the backup).
* *long-lived*: one `LoRAPatcher(pipe, keep_buffers=True)` kept for the model, `load_lora` +
  `set`, `restore()`; from the second cycle on it writes into the tensors of its previous patch
  (it keeps the patched size in memory). The generation cache also keeps one patcher per
  loaded model; there a new stack goes straight from the old one with `set`, which reuses those
  tensors without `keep_buffers` (the "switch stacks" column).
* *switch stacks*: `set` from one stack to another on the same patcher (LoRAs loaded).
* *InvokeAI direct* (`--invokeai-path`, never a dependency): its SD1 loader
  (`lora_model_from_sd_state_dict`) and `LayerPatcher.apply_smart_model_patches(...,
  force_direct_patching=True)` on the UNet and the text encoder; restore = leaving its contexts.

Times are wall seconds (medians); the CPU-seconds columns (this process, all threads) are the
fairer comparison when other jobs share the machine."""


# --- patching strategies (`--strategies`) ---------------------------------------------------


#: column -> (strategy asked, whether the loader's originals are passed)
STRATEGY_RUNS = {"swap": ("swap", False), "host": ("inplace", False), "file": ("inplace", True)}


class DeviceMemory:
    """Memory of the device the model is on, above a level: the CPU's RssAnon (sampled every
    ms) or CUDA's allocated bytes (the allocator's own peak)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def now(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.memory_allocated()
        return anon_bytes()

    def peak_of(self, fn: Callable[[], object]) -> tuple[object, int]:
        """`fn()` and the highest level while it ran."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            out = fn()
            torch.cuda.synchronize()
            return out, torch.cuda.max_memory_allocated()
        with PeakAnon() as peak:
            out = fn()
        return out, peak.peak


def bench_strategy(pipe, lora, strategy: str, originals, t: Timer, memory: DeviceMemory) -> dict:
    """One patch and restore with `strategy`: times, and memory above the level before the
    patch (its peak while patching, what it holds while patched, its peak while restoring).
    A stack the strategy cannot fit is refused by the patcher: {"refused": its message}."""
    gc.collect()
    give_back_freed_memory()  # what the last run freed is not reused unseen by this one
    patcher = LoRAPatcher(pipe, strategy=strategy, originals=originals)
    m0 = memory.now()
    a = t.now()
    try:
        report, apply_peak = memory.peak_of(lambda: patcher.set([(lora, 1.0)]))
    except LoRAError as exc:
        return {"refused": str(exc)}
    b = t.now()
    held = memory.now() - m0
    c = t.now()
    _, restore_peak = memory.peak_of(patcher.restore)
    d = t.now()
    return {
        "plan": report.strategy,
        "apply": b[0] - a[0],
        "restore": d[0] - c[0],
        "peak": apply_peak - m0,
        "held": held,
        "restore_peak": restore_peak - m0,
    }


def _strategy_cell(r: dict, c: str) -> str:
    if f"{c}_refused" in r:
        need = r[f"{c}_refused"].split("needs about ")[-1].split(" (patch")[0]
        return f"| does not fit (needs {need}) "
    return (
        f"| {r[f'{c}_apply']:.2f} / {r[f'{c}_restore']:.2f} / {fmt_mb(r[f'{c}_peak'])} / "
        f"{fmt_mb(r[f'{c}_held'])} / {fmt_mb(r[f'{c}_restore_peak'])} "
    )


def strategies_main(args) -> None:
    """Swap vs in place with host copies vs in place re-reading the model file, on a main model
    loaded by loraworks from a published-layout single file (random values). On CUDA
    (`--cap-gb`: the process may use that much of the GPU, as a smaller card would) the file
    column is left out: there ``inplace`` keeps host copies whenever the host holds them."""
    from loraworks.models.loading import pipeline_class
    from loraworks.models.originals import FileOriginals
    from loraworks.models.singlefile import load_checkpoint
    from tests.fixtures.checkpoints import published_layout, write_checkpoint
    from tests.fixtures.models import Components
    from tests.lora.util import kohya_lora, targets

    base = args.model
    dtype_name = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    tmp = Path(tempfile.mkdtemp(prefix="lora_strategies_"))
    file_dtype = torch.float16 if base == "sdxl" else torch.float32  # as published
    layout = published_layout(base, args.size)
    path = write_checkpoint(tmp / f"{base}.safetensors", layout, file_dtype)
    originals = FileOriginals()
    sd_only = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipe = load_checkpoint(
        pipeline_class(base),
        path,
        base,
        tmp / "cache",
        dtype=dtype,
        originals=originals,
        **({} if base == "sdxl" else sd_only),
    )
    cap = ""
    if args.device == "cuda":
        if args.cap_gb:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * 2**30 / total))
            cap = f", capped at {args.cap_gb:g} GiB of {total / 2**30:.0f}"
        pipe.to("cuda")
    runs_of = {k: v for k, v in STRATEGY_RUNS.items() if args.device == "cpu" or k != "file"}
    c = Components(base, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None))
    cases = [
        ("rank 16, attention", {"rank": 16}),
        ("LoCon r16, every linear and conv", {"rank": 16, "kinds": (nn.Linear, nn.Conv2d)}),
    ]
    timer, memory = Timer(args.device), DeviceMemory(args.device)
    load_before = os.getloadavg()[0]
    rows = []
    for desc, kw in cases:
        if "kinds" in kw:
            kw = {**kw, "suffixes": None}
        mods = [m.weight for *_, m in targets(c, **{k: v for k, v in kw.items() if k != "rank"})]
        lora = load_lora((kohya_lora(c, scale=0.01, **kw), {}), name=desc)
        if args.device == "cuda":
            lora.to("cuda")
        row = {
            "desc": desc,
            "layers": len(mods),
            "patched": sum(w.nbytes for w in mods),
            "largest": max(w.nbytes for w in mods),
        }
        for column, (strategy, with_file) in runs_of.items():
            runs = [
                bench_strategy(
                    pipe, lora, strategy, originals if with_file else None, timer, memory
                )
                for _ in range(args.repeats)
            ]
            if "refused" in runs[0]:
                row[f"{column}_refused"] = runs[0]["refused"]
                print(f"{desc}: {column} refused: {runs[0]['refused']}")
                continue
            assert {r["plan"] for r in runs} == {column}, (column, runs[0]["plan"])
            for key in ("apply", "restore", "peak", "held", "restore_peak"):
                row[f"{column}_{key}"] = statistics.median(r[key] for r in runs)
            print(f"{desc}: {column} " + str({k: row[k] for k in row if k.startswith(column)}))
        rows.append(row)
    cmd = "python " + " ".join(["bench/lora_apply.py", *sys.argv[1:]])
    where = (
        f"{torch.cuda.get_device_name()}{cap}"
        if args.device == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    measured = (
        "CUDA allocated bytes above their level before the patch (the allocator's peak)"
        if args.device == "cuda"
        else "RssAnon above its level before the patch, sampled every ms"
    )
    lines = [
        f"`{cmd}` — {args.size} {base.upper()} loaded from a published-layout single file "
        f"({str(file_dtype).removeprefix('torch.')}) in {dtype_name}, {where}, torch "
        f"{torch.__version__}; medians of {args.repeats}; load average {load_before:.1f} → "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. Memory: {measured} (MiB).",
        "",
        "| LoRA | layers | patched MiB / largest tensor MiB "
        + "".join(
            f"| {c}: apply s / restore s / peak MiB / held MiB / restore peak MiB " for c in runs_of
        )
        + "|",
        "|---|---|---|" + "---|" * len(runs_of),
    ]
    for r in rows:
        lines.append(
            f"| {r['desc']} | {r['layers']} | {fmt_mb(r['patched'])} / {fmt_mb(r['largest'])} "
            + "".join(_strategy_cell(r, c) for c in runs_of)
            + "|"
        )
    table = "\n".join(lines)
    print("\n" + table)
    if args.write_docs:
        args.size = f"strategies {base} {dtype_name}"
        write_section(table, args)


if __name__ == "__main__":
    main()
