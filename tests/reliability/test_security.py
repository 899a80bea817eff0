"""Security: a non-loopback bind needs a token; API paths cannot reach files outside the root;
names are sanitised; pickles never run; no `torch.load` without `weights_only=True`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from loraworks.models import ModelManager
from loraworks.server.app import create_app
from loraworks.server.auth import BindRefused, check_bind
from tests.models.lora_files import kohya_sd1_tensors, write
from tests.reliability.crash import REPO

PUBLIC_HOSTS = ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.com", "", "::ffff:127.0.0.1")
SECRET = "s3cret-token"


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_non_loopback_bind_without_token_is_refused(host):
    with pytest.raises(BindRefused, match="token"):
        check_bind(host, None)
    check_bind(host, SECRET)  # with a token it is allowed


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.6.7", "::1", "localhost"])
def test_loopback_bind_needs_no_token(host):
    check_bind(host, None)


def test_serve_command_refuses_public_bind(tmp_path):
    result = CliRunner().invoke(
        cli_app, ["serve", "--host", "0.0.0.0", "--port", "9", "--root", str(tmp_path / "r")]
    )
    assert result.exit_code == 1
    assert "token" in result.output and "Traceback" not in result.output


def test_token_required_on_every_path(manager):
    with TestClient(create_app(manager, token=SECRET, start_worker=False)) as client:
        for path in ("/api/models", "/api/images", "/api/queue", "/", "/docs", "/openapi.json"):
            assert client.get(path).status_code == 401, path
        wrong = {"Authorization": "Bearer nope"}
        assert client.get("/api/models", headers=wrong).status_code == 401
        good = {"Authorization": f"Bearer {SECRET}"}
        assert client.get("/api/models", headers=good).status_code == 200


# --- paths --------------------------------------------------------------------------------

TRAVERSALS = (
    "../../../../etc/passwd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "%252e%252e%252fetc%252fpasswd",
    "..\\..\\..\\etc\\passwd",
    "/etc/passwd",
    "%2Fetc%2Fpasswd",
)
ROUTES = ("/api/images/{}", "/api/images/{}/recipe", "/api/models/{}/preview", "/{}", "/app/{}")


@pytest.mark.parametrize("route", ROUTES)
def test_api_paths_never_serve_files_outside_the_root(client, route):
    secret = (REPO / "pyproject.toml").read_text()
    for attack in TRAVERSALS + tuple(t.replace("etc/passwd", "pyproject.toml") for t in TRAVERSALS):
        response = client.get(route.format(attack))
        if route.startswith("/api"):
            assert response.status_code in (400, 403, 404, 405, 422), (attack, response.text)
        assert "root:x:" not in response.text and secret not in response.text, attack
        assert client.get("/api/models").status_code == 200


def test_image_records_outside_outputs_are_not_served(manager, client):
    image = manager.images.add(REPO / "pyproject.toml", {"prompt": "x"})
    response = client.get(f"/api/images/{image.id}")
    assert response.status_code == 403 and "[project]" not in response.text
    client.delete(f"/api/images/{image.id}")
    assert (REPO / "pyproject.toml").exists(), "deleting the record deleted a file outside"


def test_init_image_outside_the_root_is_refused(client, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"\x89PNG\r\n")
    for path in (str(outside), "../../../../etc/hostname"):
        body = {"model": "nothing", "prompt": "x", "init_image": path}
        assert client.post("/api/queue", json=body).status_code in (400, 403, 404, 422)


def test_removing_an_in_place_model_keeps_files_outside_the_root(manager, tmp_path):
    source = write(tmp_path / "outside" / "keep.safetensors", kohya_sd1_tensors(seed=11))
    record = manager.install(source, copy=False)
    manager.remove(record.key)
    assert source.exists()


# --- names --------------------------------------------------------------------------------

HOSTILE_NAMES = ("../../evil", "a/../../b", "..", "x\x00y", "/etc/passwd", "C:\\win\\x", " .. ")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_installed_names_are_sanitised(manager, tmp_path, name):
    seed = 100 + HOSTILE_NAMES.index(name)
    record = manager.install(write(tmp_path / "l.safetensors", kohya_sd1_tensors(seed)), name=name)
    assert "/" not in record.name and "\\" not in record.name and "\x00" not in record.name
    assert ".." not in record.name and record.name.strip()
    assert Path(record.path).resolve().is_relative_to(manager.paths.models.resolve())
    edited = manager.update(record.key, name=f"{name}-{seed}")
    assert "/" not in edited.name and "\x00" not in edited.name and ".." not in edited.name


def test_api_edit_sanitises_names(client, manager, tmp_path):
    record = manager.install(write(tmp_path / "n.safetensors", kohya_sd1_tensors(seed=77)))
    response = client.patch(f"/api/models/{record.key}", json={"name": "../../x\x00y"})
    assert response.status_code in (200, 400, 422)
    name = manager.get(record.key).name
    assert "/" not in name and "\x00" not in name and ".." not in name


def test_drop_folder_file_names_with_dots_stay_inside(tmp_path):
    mm = ModelManager.open(tmp_path / "root")
    for i, name in enumerate(("x..y..z.safetensors", "a..b.safetensors", "-x-.safetensors")):
        write(mm.paths.autoimport_lora / name, kohya_sd1_tensors(seed=200 + i))
    mm.scan()
    names = [r.name for r in mm.list()]
    mm.close()
    assert len(names) == 3 and all(".." not in n and "/" not in n for n in names)


# --- no unsafe unpickling ----------------------------------------------------------------


def _torch_load_calls(path: Path) -> list[str]:
    """`torch.load(...)` calls (also `from torch import load`) without `weights_only=True`."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        named = isinstance(f, ast.Attribute) and f.attr == "load"
        named = named and isinstance(f.value, ast.Name) and f.value.id == "torch"
        named = named or (
            isinstance(f, ast.Name) and f.id == "load" and "from torch import" in path.read_text()
        )
        if not named:
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe:
            bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return bad


def _python_files() -> list[Path]:
    """The project's own code: not whatever else sits in the checkout (a virtualenv, packages
    copied in for a benchmark)."""
    return [p for part in ("loraworks", "tests", "bench") for p in (REPO / part).rglob("*.py")]


def test_the_grep_finds_unsafe_calls(tmp_path):
    sample = REPO / "tests" / "reliability" / "__init__.py"
    assert _torch_load_calls(sample) == []
    assert len(_python_files()) > 50


def test_no_torch_load_without_weights_only():
    bad = [hit for path in _python_files() for hit in _torch_load_calls(path)]
    assert bad == [], f"torch.load without weights_only=True: {bad}"
