"""`loraworks models …`: list, show, install, remove, edit and rescan models.

Every command opens the root (which rescans the drop folders) and reports what that scan
found on stderr. Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from loraworks.cli.console import fail, out, say
from loraworks.cli.install_bar import install_bar

if TYPE_CHECKING:
    from loraworks.models import ModelRecord

models_app = typer.Typer(no_args_is_help=True, help="Installed models and the autoimport folders.")


class TypeChoice(StrEnum):
    main = "main"
    lora = "lora"
    vae = "vae"
    embedding = "embedding"


class FewStepChoice(StrEnum):
    """`models.fewstep.FewStep` (not imported: the CLI loads the models package lazily)."""

    lcm = "lcm"
    tcd = "tcd"
    lightning = "lightning"
    hyper = "hyper"
    pcm = "pcm"
    none = "none"


class BaseChoice(StrEnum):
    sd1 = "sd1"
    sd2 = "sd2"
    sdxl = "sdxl"


RootOption = typer.Option(
    None, "--root", help="models root (default: $LORAWORKS_ROOT or ~/loraworks)"
)
JsonOption = typer.Option(False, "--json", help="machine-readable output")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@contextmanager
def _manager(root: Path | None, quiet: bool = False) -> Iterator[Any]:
    """Open the root, print what its scan found, and turn errors into one clean line."""
    from loraworks.models import ModelError, ModelManager

    try:
        mm = ModelManager.open(root)
    except (ModelError, OSError) as exc:
        fail(str(exc))
    try:
        if not quiet:
            _print_scan(mm.last_scan)
        yield mm
    except typer.Exit:
        raise
    except (ModelError, OSError) as exc:
        fail(str(exc))
    except Exception as exc:  # a bug, still reported as one line rather than a traceback
        fail(f"unexpected {type(exc).__name__}: {exc}")
    finally:
        mm.close()


def _print_scan(report) -> None:
    for record in report.added:
        say(f"added {record.type} '{record.name}' ({record.base}) from {record.path}", to_err=True)
    for dup in report.duplicates:
        say(dup.message, to_err=True)
    for record in report.missing:
        say(f"missing: '{record.name}' ({record.path} is gone)", to_err=True)
    for record in report.errors:
        say(f"cannot use {record.path}: {record.error}", to_err=True)


def _value(choice: Enum | None) -> Any:
    return None if choice is None else choice.value


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _status(record) -> str:
    """The status with its reason on one line: a list row stays one row whatever the error."""
    if record.status == "ok":
        return "ok"
    return f"{record.status}: {' '.join(record.error.split())}" if record.error else record.status


def _format(record: ModelRecord) -> str:
    """The key family and, for a LoRA, its layer kinds and bundled embeddings: `kohya (loha
    ×120, embedding zkstar)`; for an embedding, its vector count: `a1111 (8 vectors)`."""
    parts = [f"{kind} ×{n}" for kind, n in record.layer_kinds.items()]
    parts += [f"embedding {e.name}" for e in record.bundled_embeddings]
    if record.vectors is not None:
        parts.append(f"{record.vectors} vector{'s' if record.vectors != 1 else ''}")
    return f"{record.format} ({', '.join(parts)})" if parts else record.format


def fewstep_label(record: ModelRecord) -> str:
    """`lightning 4-step`, `lcm`, or nothing for an ordinary model."""
    if record.fewstep == "none":
        return ""
    steps = f" {record.fewstep_steps}-step" if record.fewstep_steps else ""
    return record.fewstep + steps


def _base(record: ModelRecord) -> str:
    """The probed base, plus the others it fits: `--base sd1` lists a CLIP-L-only SDXL LoRA."""
    others = [b for b in record.compatible_bases if b != record.base]
    return (record.base or "?") + (f" (+{', '.join(others)})" if others else "")


LIST_COLUMNS = (
    "name",
    "type",
    "base",
    "format",
    "fast",  # the few-step family: a short header keeps the table within 80 columns
    "weight",
    "trigger words",
    "status",
    "key",
)

MIN_STATUS_WIDTH = 12
"""The status column's width when the other columns leave less (they wrap instead): an error
row still reads `error: …` on a terminal of 80 columns."""


def _list_row(r: ModelRecord) -> dict[str, Text]:
    cells = (
        r.name,
        r.type,
        _base(r),
        _format(r),
        fewstep_label(r),
        "" if r.default_weight is None else f"{r.default_weight:g}",
        ", ".join(r.trigger_words),
        _status(r),
        r.key[:8],
    )
    return dict(zip(LIST_COLUMNS, map(Text, cells), strict=True))


def _list_table(rows: list[dict[str, Text]], status_width: int | None = None) -> Table:
    """Borderless, as a boxed table's rules and padding took 28 of 80 columns from nine
    columns of content. The status is one line cut to `status_width` with an ellipsis (`models
    show` prints the whole error); a key is never split."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True)
    for column in LIST_COLUMNS:
        if column == "status":
            table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=status_width)
        else:
            table.add_column(column, overflow="fold", no_wrap=column == "key")
    for row in rows:
        table.add_row(*(row[column] for column in LIST_COLUMNS))
    return table


def _status_width(rows: list[dict[str, Text]]) -> int:
    """What the other columns leave of the terminal at their natural widths (measured on the
    table without the status texts), or MIN_STATUS_WIDTH when that is less."""
    rest = _list_table([{**row, "status": Text()} for row in rows])
    others = Measurement.get(out, out.options, rest).maximum - len("status")
    return max(MIN_STATUS_WIDTH, out.width - others)


@models_app.command("list")
def list_models(
    type: TypeChoice | None = typer.Option(None, "--type", help="model type"),
    base: BaseChoice | None = typer.Option(None, "--base", help="base model"),
    as_json: bool = JsonOption,
    root: Path | None = RootOption,
) -> None:
    """List models with their base, format, few-step family, trigger words and status."""
    with _manager(root, quiet=as_json) as mm:
        records = mm.list(type=_value(type), base=_value(base))
        if as_json:
            _dump([r.model_dump(mode="json") for r in records])
            return
        rows = [_list_row(r) for r in records]
        out.print(_list_table(rows, _status_width(rows)))
        say(f"{len(records)} model(s) in {mm.root}")


@models_app.command()
def show(
    name: str = typer.Argument(..., help="name or key"),
    as_json: bool = JsonOption,
    root: Path | None = RootOption,
) -> None:
    """Everything known about one model, including raw training metadata."""
    with _manager(root, quiet=as_json) as mm:
        record = mm.get(name)
        facts = _main_facts(record)
        if as_json:
            _dump({**record.model_dump(mode="json"), **facts})
            return
        table = Table(show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        for field, value in record.model_dump().items():
            if field in ("metadata", "layer_kinds"):
                continue
            if field == "format":
                value = _format(record)
            if field == "hashes":  # A1111/Civitai hashes (docs/interop.md)
                value = "\n".join(f"{kind} {digest}" for kind, digest in value.items())
            if isinstance(value, list):  # evidence and warnings are sentences: one per line
                sep = "\n" if field in ("base_evidence", "warnings") else ", "
                value = sep.join(map(str, value))
            table.add_row(field, Text("" if value is None else str(value)))
        for field, value in facts.items():
            if field == "memory":
                value = ", ".join(f"{p} {n / 2**30:.1f} GiB" for p, n in value.items())
            table.add_row(field, Text(str(value)))
        for key, value in sorted(record.metadata.items()):
            table.add_row(Text(f"metadata.{key}"), Text(_short(str(value))))
        out.print(table)


def _main_facts(record: ModelRecord) -> dict[str, Any]:
    """A main model's prediction type, native size and weight memory per precision (read from
    its configs and headers); what cannot be read says why."""
    from loraworks.models import ModelError
    from loraworks.models.mainfacts import main_model_facts

    if record.type != "main" or record.status != "ok":
        return {}
    try:
        found = main_model_facts(record)
    except ModelError as exc:
        return {"facts": str(exc)}
    return {
        "prediction_type": found.prediction_type,
        "native_size": found.native_size,
        "memory": found.memory(),
    }


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


@models_app.command()
def install(
    source: str = typer.Argument(..., help="file, folder, URL or Hugging Face repo id"),
    name: str | None = typer.Option(None, "--name", help="name to install under"),
    in_place: bool = typer.Option(False, "--in-place", help="register without copying"),
    type: TypeChoice | None = typer.Option(None, "--type", help="model type (default: detect)"),
    as_json: bool = JsonOption,
    root: Path | None = RootOption,
) -> None:
    """Install a model (copied into models/ unless --in-place); a terminal shows its progress."""
    with _manager(root, quiet=as_json) as mm:
        before = {r.key for r in mm.list()}
        with install_bar(show=not as_json) as progress:
            record = mm.install(
                source, copy=not in_place, name=name, type=_value(type), progress=progress
            )
        if as_json:
            _dump(record.model_dump(mode="json"))
        elif record.key in before:
            say(f"already installed as '{record.name}' (same content)")
        else:
            family = f", {fewstep_label(record)}" if record.fewstep != "none" else ""
            say(
                f"installed {record.type} '{record.name}' ({record.base}, {record.format}{family}) "
                f"key {record.key}"
            )


@models_app.command()
def remove(
    name: str = typer.Argument(..., help="name or key"),
    keep_file: bool = typer.Option(
        False, "--keep-file", help="keep a drop-folder or in-place file on disk"
    ),
    root: Path | None = RootOption,
) -> None:
    """Forget a model; copies in models/ and drop-folder files are deleted."""
    with _manager(root) as mm:
        record = mm.get(name)
        mm.remove(record.key, delete_files=False if keep_file else None)
        say(f"removed '{record.name}'")


@models_app.command()
def edit(
    name: str = typer.Argument(..., help="name or key"),
    new_name: str | None = typer.Option(None, "--name", help="rename"),
    triggers: str | None = typer.Option(None, "--triggers", help="comma-separated trigger words"),
    weight: float | None = typer.Option(None, "--weight", help="default weight"),
    clear_weight: bool = typer.Option(False, "--clear-weight", help="forget the default weight"),
    description: str | None = typer.Option(None, "--description"),
    fewstep: FewStepChoice | None = typer.Option(
        None, "--fewstep", help="few-step family: which config.toml preset the LoRA brings"
    ),
    as_json: bool = JsonOption,
    root: Path | None = RootOption,
) -> None:
    """Change name, trigger words, default weight, description or few-step family (kept across
    rescans)."""
    from loraworks.models.metadata import split_words

    changes: dict[str, Any] = {}
    for key, value in (
        ("name", new_name),
        ("description", description),
        ("fewstep", _value(fewstep)),
    ):
        if value is not None:
            changes[key] = value
    if triggers is not None:
        changes["trigger_words"] = split_words(triggers)
    if weight is not None:
        changes["default_weight"] = weight
    if clear_weight:
        changes["default_weight"] = None
    with _manager(root, quiet=as_json) as mm:
        if not changes:
            fail("nothing to change: give --name, --triggers, --weight, --description or --fewstep")
        record = mm.update(mm.get(name).key, **changes)
        if as_json:
            _dump(record.model_dump(mode="json"))
        else:
            say(f"updated '{record.name}'")


@models_app.command()
def scan(
    full: bool = typer.Option(False, "--full", help="re-read unchanged files too"),
    as_json: bool = JsonOption,
    root: Path | None = RootOption,
) -> None:
    """Rescan the autoimport folders and say what changed."""
    with _manager(root, quiet=True) as mm:
        first = mm.last_scan
        report = mm.scan(full=True) if full else first
        if as_json:
            _dump(_report_json(report))
            return
        _print_scan(report)
        say(
            f"{len(report.added)} added, {len(report.updated)} updated, "
            f"{len(report.duplicates)} duplicate(s), {len(report.missing)} missing, "
            f"{len(report.errors)} error(s), {report.unchanged} unchanged"
        )


def _report_json(report) -> dict[str, Any]:
    def records(items: list) -> list[dict]:
        return [r.model_dump(mode="json") for r in items]

    return {
        "added": records(report.added),
        "updated": records(report.updated),
        "missing": records(report.missing),
        "errors": records(report.errors),
        "duplicates": [
            {"path": str(d.path), "existing_key": d.existing_key, "existing_name": d.existing_name}
            for d in report.duplicates
        ],
        "unchanged": report.unchanged,
    }
