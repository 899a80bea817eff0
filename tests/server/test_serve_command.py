"""`loraworks serve` as a user runs it: prints the URL, serves, needs the token it was given,
stops cleanly on Ctrl+C; refuses a busy port with a message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from loraworks.cli import app as cli_app
from tests.server.conftest import free_port


def _start(root, *args: str) -> tuple[subprocess.Popen, str, list[str]]:
    """The running server, its URL and the lines it printed before the URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from loraworks.cli import main; main()",
            "serve",
            "--root",
            str(root),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    banner = []
    for line in process.stdout:
        if line.startswith("open "):
            return process, line.split()[1], banner
        banner.append(line)
    process.wait(30)
    pytest.fail(f"serve exited ({process.returncode}) without printing its URL")


def _get_when_up(url: str, **kwargs) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(url, **kwargs)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_with_a_token_prints_it_in_the_url_and_enforces_it(tmp_path):
    port = free_port()
    process, url, _ = _start(tmp_path / "root", "--port", str(port), "--token", "tok-123")
    try:
        assert url == f"http://127.0.0.1:{port}/?token=tok-123"
        page = _get_when_up(url)
        assert page.status_code == 200 and 'id="lora-panel"' in page.text
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/api/models").status_code == 401
        headers = {"Authorization": "Bearer tok-123"}
        assert httpx.get(base + "/api/models", headers=headers).status_code == 200
    finally:
        assert _stop(process) == 0


def test_serve_refuses_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            cli_app, ["serve", "--root", str(tmp_path / "root"), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output


def test_serve_names_the_device_and_refuses_one_the_machine_lacks(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text('[compute]\ndevice = "cuda:3"\n')
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = CliRunner().invoke(cli_app, ["serve", "--root", str(root), "--port", "1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "device = 'cuda:3' in config.toml, but torch sees 0 CUDA GPU(s)" in result.output
    (root / "config.toml").write_text('[compute]\ndevice = "cpu"\nprecision = "bfloat16"\n')
    port = free_port()
    process, _, banner = _start(root, "--port", str(port))
    try:
        assert any(line.rstrip().endswith("models run on cpu, bfloat16") for line in banner)
        assert _get_when_up(f"http://127.0.0.1:{port}/api/settings").status_code == 200
    finally:
        assert _stop(process) == 0
