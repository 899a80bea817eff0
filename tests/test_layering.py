"""The layers of docs/architecture.md, checked on the source: nothing below the CLI and the
server imports them, and generation reaches the engine only through its package API (whose
names the engine's authors keep stable while they move code between its modules)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import loraworks

PACKAGE = Path(loraworks.__file__).parent
TOP_LAYERS = ("loraworks.cli", "loraworks.server")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    """Whether `name` is a module or package of this source tree (not a name defined in one)."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth (inside functions too), with
    relative imports made absolute; `from a import b` yields `a.b` as well when `b` is a module."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, module
            for alias in node.names:
                if is_module(f"{module}.{alias.name}"):
                    yield node.lineno, f"{module}.{alias.name}"


def sources(under: Path = PACKAGE) -> list[Path]:
    return sorted(under.rglob("*.py"))


def imports_of(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The walk itself, on a file written for it: absolute, relative, nested and `from`-module."""
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "loraworks")
    pkg = tmp_path / "loraworks" / "models"
    pkg.mkdir(parents=True)
    for init in (pkg.parent / "__init__.py", pkg / "__init__.py", pkg / "other.py"):
        init.write_text("")
    source = pkg / "x.py"
    source.write_text(
        "import a.b\nfrom . import other\nfrom ..cli import c\n"
        "def f():\n    from loraworks import models\n"
    )
    names = [name for _, name in imported_modules(source)]
    assert names == [
        "a.b",
        "loraworks.models",
        "loraworks.models.other",
        "loraworks.cli",
        "loraworks",
        "loraworks.models",
    ]


def test_only_the_cli_and_the_server_import_the_cli_or_the_server():
    below = [
        path
        for path in sources()
        if not any(imports_of(module_name(path), top) for top in TOP_LAYERS)
    ]
    assert len(below) > 20, "the walk found too few modules"
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in below
        for line, name in imported_modules(path)
        if any(imports_of(name, top) for top in TOP_LAYERS)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", sources(PACKAGE / "generation"), ids=lambda p: p.name)
def test_generation_reaches_the_engine_only_through_its_package(path):
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}; "
        "use `from loraworks.lora import ...`"
        for line, name in imported_modules(path)
        if name.startswith("loraworks.lora.")
    ]
    assert not wrong, "\n".join(wrong)
