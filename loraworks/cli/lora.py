"""`loraworks lora …`: inspect, resize, merge, extract, bake and convert LoRAs.

A LoRA is a file/folder path or an installed LoRA's name; a main model (extract, bake) is an
installed model's name. Every command that writes takes ``--out PATH`` (refused if it exists,
unless ``--force``; written atomically) and ``--install`` (then installed through the models
root). Errors are one line on stderr and exit code 1. The work is `loraworks.lora.tools`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from loraworks.cli.console import err, fail, say

lora_app = typer.Typer(
    no_args_is_help=True, help="LoRA tools: inspect, resize, merge, extract, bake, convert."
)

RootOption = typer.Option(
    None, "--root", help="models root (default: $LORAWORKS_ROOT or ~/loraworks)"
)
OutOption = typer.Option(..., "--out", help="where to write the result")
ForceOption = typer.Option(False, "--force", help="replace an existing --out")
InstallOption = typer.Option(False, "--install", help="install the result in the models root")
RankOption = typer.Option(None, "--rank", help="rank of every layer (the cap with --dynamic)")
DynamicOption = typer.Option(
    None, "--dynamic", help="sv_ratio=X | sv_fro=X | sv_cumulative=X (kohya's rules)"
)


class SvdChoice(StrEnum):
    full = "full"
    lowrank = "lowrank"


class DtypeChoice(StrEnum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class FormatChoice(StrEnum):
    kohya = "kohya"
    diffusers = "diffusers"
    peft = "peft"


SvdOption = typer.Option(SvdChoice.full, "--svd", help="full (exact) or lowrank (randomised)")
DtypeOption = typer.Option(None, "--dtype", help="dtype of the written factors (default: input's)")


def register(app: typer.Typer) -> None:
    app.add_typer(lora_app, name="lora")


def _dtype(choice: DtypeChoice | None):
    import torch

    return {None: None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        None if choice is None else choice.value
    ]


class _Session:
    """The models root, opened only when a name or --install needs it."""

    def __init__(self, root: Path | None) -> None:
        self.root, self.mm = root, None

    def manager(self):
        if self.mm is None:
            from loraworks.models import ModelManager

            self.mm = ModelManager.open(self.root)
        return self.mm

    def lora(self, source: str):
        from loraworks.lora import load_lora

        path = Path(source)
        if path.exists() or "/" in source or path.suffix in (".safetensors", ".ckpt", ".pt"):
            return load_lora(path)  # a path, even a missing one: never looked up as a name
        record = self.manager().get(source, type="lora")
        return load_lora(Path(record.path), name=record.name)

    def install(self, path: Path) -> None:
        record = self.manager().install(path, copy=True)
        say(f"installed {record.type} '{record.name}' ({record.base})")


@contextmanager
def _session(root: Path | None) -> Iterator[_Session]:
    """Errors a user can cause become one line; so does a bug (never a traceback)."""
    from loraworks.lora import LoRAError
    from loraworks.models import ModelError

    s = _Session(root)
    try:
        yield s
    except typer.Exit:
        raise
    except (LoRAError, ModelError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"unexpected {type(exc).__name__}: {exc}")
    finally:
        if s.mm is not None:
            s.mm.close()


@contextmanager
def _bar(label: str) -> Iterator[Any]:
    """A per-layer bar on stderr (terminals only): ``progress(done, total, target)``."""
    if not err.is_terminal:
        yield None
        return
    columns = (
        TextColumn(f"{label:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[target]}", markup=False),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None, target="")

        def progress(done: int, total: int, target: str) -> None:
            bar.update(task, completed=done, total=total, target=target)

        yield progress


def _rule(rank: int | None, dynamic: str | None):
    from loraworks.lora.tools import RankRule

    return RankRule.parse(rank, dynamic)


def _report(result) -> None:
    for r in result.layers:
        before = f"{r.rank_before} → " if r.rank_before else ""
        say(f"{r.target}: rank {before}{r.rank}, keeps {100 * r.retained:.2f}% of ‖ΔW‖")
    for target in result.dropped:
        say(f"{target}: left out (no difference)", to_err=True)


def _write(s: _Session, lora, out: Path, force: bool, install: bool, to: str = "kohya") -> None:
    from loraworks.lora.tools import save_lora

    save_lora(lora, out, to, force)  # type: ignore[arg-type]
    say(f"wrote {out}")
    if install:
        s.install(out)


def _spec(text: str) -> tuple[str, float]:
    """``NAME:w`` (a weight after the last colon) or ``NAME`` (weight 1)."""
    name, sep, tail = text.rpartition(":")
    if sep:
        try:
            return name, float(tail)
        except ValueError:
            pass
    return text, 1.0


@lora_app.command("inspect")
def inspect_cmd(
    source: str = typer.Argument(..., help="a LoRA file/folder or an installed LoRA's name"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    root: Path | None = RootOption,
) -> None:
    """Format, base, kinds, rank and alpha per block, targets, trigger words, hashes."""
    from loraworks.lora.tools import inspect_lora
    from loraworks.models.metadata import split_words, triggers_from_tag_frequency

    with _session(root) as s:
        lora = s.lora(source)
        facts = inspect_lora(lora).as_dict()
        meta = lora.metadata
        if meta.get("modelspec.trigger_phrase"):
            facts["trigger_words"] = split_words(meta["modelspec.trigger_phrase"])
        else:
            raw = meta.get("ss_tag_frequency")
            facts["trigger_words"] = triggers_from_tag_frequency(raw) if raw else []
        if as_json:
            typer.echo(json.dumps(facts, indent=2, default=str))
            return
        say(f"{facts['name']}: {facts['format']} LoRA for {facts['base']}")
        say(f"  fits: {', '.join(facts['compatible_bases'])}")
        say(f"  kinds: {', '.join(f'{k} ×{n}' for k, n in facts['kinds'].items())}")
        say(f"  targets: {', '.join(f'{k} ×{n}' for k, n in facts['targets'].items())}")
        for block, b in facts["blocks"].items():
            ranks = ", ".join(map(str, b["ranks"])) or "-"
            alphas = ", ".join(f"{a:g}" for a in b["alphas"]) or "-"
            say(f"  {block}: {b['layers']} layers, rank {ranks}, alpha {alphas}")
        if facts["trigger_words"]:
            say(f"  trigger words: {', '.join(facts['trigger_words'])}")
        for k, v in facts["hashes"].items():
            say(f"  {k}: {v}")
        for k, v in facts["training"].items():
            say(f"  {k}: {v[:120]}")
        for w in facts["warnings"]:
            say(f"  warning: {w}", to_err=True)


@lora_app.command()
def resize(
    source: str = typer.Argument(..., help="a LoRA file/folder or an installed LoRA's name"),
    rank: int | None = RankOption,
    dynamic: str | None = DynamicOption,
    out: Path = OutOption,
    svd: SvdChoice = SvdOption,
    dtype: DtypeChoice | None = DtypeOption,
    force: bool = ForceOption,
    install: bool = InstallOption,
    root: Path | None = RootOption,
) -> None:
    """SVD of each layer's ΔW, cut to --rank or by a --dynamic rule; kohya output."""
    from loraworks.lora.tools import check_output, resize

    with _session(root) as s:
        rule = _rule(rank, dynamic)
        check_output(out, force)
        lora = s.lora(source)
        with _bar("resize") as progress:
            result = resize(lora, rule, svd=svd.value, dtype=_dtype(dtype), progress=progress)
        _report(result)
        _write(s, result.lora, out, force, install)


@lora_app.command()
def merge(
    sources: list[str] = typer.Argument(..., help="LoRAs as NAME:weight (weight 1 if left out)"),
    concat: bool = typer.Option(False, "--concat", help="stack the factors: exact, LoRA only"),
    rank: int | None = RankOption,
    dynamic: str | None = DynamicOption,
    out: Path = OutOption,
    svd: SvdChoice = SvdOption,
    dtype: DtypeChoice | None = DtypeOption,
    force: bool = ForceOption,
    install: bool = InstallOption,
    root: Path | None = RootOption,
) -> None:
    """Several LoRAs into one: --concat (exact) or SVD to --rank / --dynamic."""
    from loraworks.lora.tools import check_output, merge

    with _session(root) as s:
        if concat == (rank is not None or dynamic is not None):
            fail("give either --concat or --rank/--dynamic")
        rule = None if concat else _rule(rank, dynamic)
        check_output(out, force)
        stack = [(s.lora(name), w) for name, w in map(_spec, sources)]
        with _bar("merge") as progress:
            result = merge(stack, rule, svd=svd.value, dtype=_dtype(dtype), progress=progress)
        _report(result)
        _write(s, result.lora, out, force, install)


@lora_app.command()
def extract(
    base: str = typer.Option(..., "--base", help="the installed main model tuned from"),
    tuned: str = typer.Option(..., "--tuned", help="the installed tuned main model"),
    rank: int | None = RankOption,
    dynamic: str | None = DynamicOption,
    min_diff: float = typer.Option(0.0, "--min-diff", help="ignore modules differing ≤ this"),
    out: Path = OutOption,
    svd: SvdChoice = SvdOption,
    dtype: DtypeChoice | None = DtypeOption,
    force: bool = ForceOption,
    install: bool = InstallOption,
    root: Path | None = RootOption,
) -> None:
    """A LoRA/LoCon from the difference of two main models of the same base."""
    from loraworks.lora.tools import check_output, extract

    with _session(root) as s:
        rule = _rule(rank, dynamic)
        check_output(out, force)
        mm = s.manager()
        a, b = mm.load_main(base), mm.load_main(tuned)
        with _bar("extract") as progress:
            result = extract(
                a, b, rule, min_diff=min_diff, svd=svd.value, dtype=_dtype(dtype), progress=progress
            )
        _report(result)
        _write(s, result.lora, out, force, install)


@lora_app.command()
def bake(
    main: str = typer.Argument(..., help="the installed main model"),
    loras: list[str] = typer.Argument(..., help="LoRAs as NAME:weight"),
    out: Path = OutOption,
    dtype: DtypeChoice = typer.Option(DtypeChoice.fp16, "--dtype", help="the model's dtype"),
    single_file: bool = typer.Option(
        False, "--single-file", help="one NAME.safetensors in the original (A1111) layout"
    ),
    force: bool = ForceOption,
    install: bool = typer.Option(True, "--install/--no-install", help="install the result"),
    root: Path | None = RootOption,
) -> None:
    """A new main model (diffusers folder, or one file) with the LoRAs merged in, installed."""
    from loraworks.lora.tools import SINGLE_FILE_SUFFIX, bake, check_output

    with _session(root) as s:
        check_output(out, force, SINGLE_FILE_SUFFIX if single_file else None)
        stack = [(s.lora(name), w) for name, w in map(_spec, loras)]
        pipe = s.manager().load_main(main, dtype=_dtype(dtype))
        status = err.status("baking") if err.is_terminal else nullcontext()
        with status:
            bake(pipe, stack, out, force=force, single_file=single_file)
        say(f"wrote {out}")
        if install:
            s.install(out)


@lora_app.command()
def convert(
    source: str = typer.Argument(..., help="a LoRA file/folder or an installed LoRA's name"),
    to: FormatChoice = typer.Option(..., "--to", help="kohya, diffusers or peft"),
    out: Path = OutOption,
    force: bool = ForceOption,
    install: bool = InstallOption,
    root: Path | None = RootOption,
) -> None:
    """The same layers in another format (a PEFT folder for peft)."""
    from loraworks.lora.tools import check_output, convert

    with _session(root) as s:
        check_output(out, force)
        convert(s.lora(source), to.value, out, force=force)
        say(f"wrote {out}")
        if install:
            s.install(out)
