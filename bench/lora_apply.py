"""LoRA apply/restore speed: loraworks vs diffusers (and InvokeAI when importable).

Not a test. On the full-size SD1.5 UNet + CLIP-L text encoder (random weights, built offline by
tests/fixtures/models.py), three kohya-format LoRA files are written to a temporary folder:

* rank 16 and rank 64 on the 176 attention linears (to_q/to_k/to_v/to_out.0 of attn1/attn2 in
  the 16 transformer blocks = 128, plus q/k/v/out_proj of the 12 text-encoder layers = 48);
* a LoCon (rank 16) on every Linear and Conv2d of the UNet and every Linear of the text encoder.

For each file, in the same process and on the same pipeline, alternating per repeat:

* loraworks: ``load_lora(file)`` + ``LoRAPatcher.set`` (load+apply), ``restore()``;
  also apply alone with the LoRA already loaded (what the generation cache does);
* diffusers: ``load_lora_weights`` + ``fuse_lora`` (load+apply), ``unfuse_lora`` +
  ``unload_lora_weights`` (restore).

Medians over ``--repeats``; extra memory while patched (CPU: RSS delta; CUDA: allocated delta).

    .venv/bin/python bench/lora_apply.py --device cpu --size full --repeats 3 --write-docs
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
from pathlib import Path

import psutil
import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loraworks.lora import LoRAPatcher, apply_loras, load_lora  # noqa: E402
from loraworks.lora.keys import flatten  # noqa: E402
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
    m0 = mem(device)
    a = t.now()
    lora = load_lora(path)
    if device == "cuda":
        lora.to("cuda")
    b = t.now()
    ctx = apply_loras(pipe, [(lora, 1.0)])
    ctx.__enter__()
    c = t.now()
    extra = mem(device) - m0
    ctx.__exit__(None, None, None)
    d = t.now()
    return _pack(load=_d(a, b), apply=_d(b, c), restore=_d(c, d), extra=extra)


def bench_longlived(patcher: LoRAPatcher, path: Path, t: Timer, device: str) -> dict:
    """The generation cache's path: one ``LoRAPatcher(pipe, keep_buffers=True)`` per model."""
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
    m0 = mem(device)
    a = t.now()
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="bench")
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


def bench_invokeai(pipe, path: Path, t: Timer, device: str) -> dict | None:
    try:  # InvokeAI's direct patcher (not installed in this project's environment)
        from invokeai.backend.patches.layer_patcher import LayerPatcher  # type: ignore  # noqa: F401
    except Exception:
        return None
    return None


def check_agreement(pipe, path: Path) -> float:
    """max |loraworks − diffusers| over the patched UNet weights (sanity, not timing)."""
    lora = load_lora(path)
    with torch.no_grad():
        patcher = LoRAPatcher(pipe)
        patcher.set([(lora, 1.0)])
        ours = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
        patcher.restore()
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="check")
        pipe.fuse_lora(lora_scale=1.0)
        worst = 0.0
        for n, p in pipe.unet.named_parameters():
            n = n.replace(".base_layer", "")
            if n in ours and "lora_" not in n:
                worst = max(worst, (ours[n].float() - p.detach().float()).abs().max().item())
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
    return worst


def _total(r: dict, suffix: str = "") -> float:
    """load + apply + restore (the keys a run has)."""
    return sum(r.get(k + suffix, 0.0) for k in ("load", "apply", "restore"))


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
    ap.add_argument("--write-docs", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]

    tmp = Path(tempfile.mkdtemp(prefix="lora_bench_"))
    t0 = time.perf_counter()
    pipe = build_pipeline("sd1", tmp / "pipe", size=args.size)
    pipe.to(args.device, dtype)
    print(f"built {args.size} SD1.5 pipeline in {time.perf_counter() - t0:.0f}s", flush=True)

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
        agree = check_agreement(pipe, path)
        ones, longs, theirs = [], [], []
        patcher = LoRAPatcher(pipe, keep_buffers=True)
        for rep in range(args.repeats):
            runs = [
                (ones, bench_oneshot, pipe),
                (longs, bench_longlived, patcher),
                (theirs, bench_diffusers, pipe),
            ]
            for out, fn, target in runs if rep % 2 == 0 else runs[::-1]:
                out.append(fn(target, path, timer, args.device))
            print(
                f"  repeat {rep}: loraworks one-shot {_total(ones[-1]):.3f}s, long-lived "
                f"{_total(longs[-1]):.3f}s, diffusers {_total(theirs[-1]):.3f}s",
                flush=True,
            )
        patcher.release_buffers()

        def med(rs, key):
            return statistics.median(r[key] for r in rs)

        row = {"desc": desc, "layers": n, "patched": patched_bytes, "agree": agree}
        for tag, rs in (("one", ones), ("long", longs), ("df", theirs)):
            for key in ("load", "apply", "restore", "switch", "extra"):
                if key in rs[0]:
                    row[f"{tag}_{key}"] = med(rs, key)
            row[f"{tag}_total"] = statistics.median(_total(r) for r in rs)
            row[f"{tag}_cpu"] = statistics.median(_total(r, "_cpu") for r in rs)
        rows.append(row)
        print(
            f"  -> one-shot {row['df_total'] / row['one_total']:.1f}x, long-lived "
            f"{row['df_total'] / row['long_total']:.1f}x faster (wall); CPU time "
            f"{row['df_cpu'] / row['one_cpu']:.1f}x / {row['df_cpu'] / row['long_cpu']:.1f}x less",
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
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; medians of {args.repeats} "
        f"repeats, seconds. Load average during the run: {load_before:.1f} → "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        + (" (other jobs were running)." if load_before > 0.75 * (os.cpu_count() or 1) else "."),
        "",
        "| LoRA | layers | loraworks one-shot: load / apply / restore / **total** "
        "| loraworks long-lived: load+apply / restore / **total** | switch stacks "
        "| diffusers: load+fuse / unfuse+unload / **total** | speed-up one-shot / long-lived "
        "| CPU-s one-shot / long-lived / diffusers | CPU speed-up one-shot / long-lived "
        "| extra MiB while patched (one-shot / diffusers / patched weights) "
        "| max \\|Δ\\| vs diffusers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['desc']} | {r['layers']} "
            f"| {fmt_s(r['one_load'])} / {fmt_s(r['one_apply'])} / {fmt_s(r['one_restore'])} / "
            f"**{fmt_s(r['one_total'])}** "
            f"| {fmt_s(r['long_apply'])} / {fmt_s(r['long_restore'])} / "
            f"**{fmt_s(r['long_total'])}** "
            f"| {fmt_s(r['long_switch'])} "
            f"| {fmt_s(r['df_apply'])} / {fmt_s(r['df_restore'])} / **{fmt_s(r['df_total'])}** "
            f"| **{r['df_total'] / r['one_total']:.1f}x / {r['df_total'] / r['long_total']:.1f}x** "
            f"| {fmt_s(r['one_cpu'])} / {fmt_s(r['long_cpu'])} / {fmt_s(r['df_cpu'])} "
            f"| **{r['df_cpu'] / r['one_cpu']:.1f}x / {r['df_cpu'] / r['long_cpu']:.1f}x** "
            f"| {fmt_mb(r['one_extra'])} / {fmt_mb(r['df_extra'])} / {fmt_mb(r['patched'])} "
            f"| {r['agree']:.1e} |"
        )
    lines += ["", "InvokeAI: not importable in this environment (not measured)."]
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
* *long-lived*: what the generation model cache does — one `LoRAPatcher(pipe,
  keep_buffers=True)` per loaded model, `load_lora` + `set`, `restore()`; from the second cycle
  on it writes into the tensors of its previous patch (it keeps the patched size in memory).
* *switch stacks*: `set` from one stack to another on the same patcher (LoRAs loaded).

Times are wall seconds (medians); the CPU-seconds columns (this process, all threads) are the
fairer comparison when other jobs share the machine."""


if __name__ == "__main__":
    main()
