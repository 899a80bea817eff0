"""Fixtures for the model-manager tests: an isolated root and a CLI runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loraworks.cli.models import register
from loraworks.models import ModelManager


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORAWORKS_ROOT", raising=False)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def mm(root):
    manager = ModelManager.open(root)
    yield manager
    manager.close()


class Cli:
    """Runs `loraworks models …` in-process against one root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.app = typer.Typer()
        register(self.app)
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0):
        result = self.runner.invoke(
            self.app, ["models", *args, "--root", str(self.root)], env={"COLUMNS": "200"}
        )
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture
def cli(root) -> Cli:
    return Cli(root)
