"""`loraworks serve`: the HTTP API and web UI on one port, with the autoimport watcher."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from loraworks.cli.console import fail


def register(app: typer.Typer) -> None:
    app.command()(serve)


def _bind_problem(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on (in use, unknown host, …), or None."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def serve(
    host: str | None = typer.Option(None, help="address to bind (config default 127.0.0.1)"),
    port: int | None = typer.Option(None, help="port (config default 9090)"),
    token: str | None = typer.Option(
        None, envvar="LORAWORKS_TOKEN", help="require this bearer token on every request"
    ),
    root: Path | None = typer.Option(
        None, help="models root (default: LORAWORKS_ROOT or ~/loraworks)"
    ),
) -> None:
    """Serve the API (schema at /openapi.json) and the web UI; new files in autoimport/ appear
    live."""
    import uvicorn

    from loraworks.generation.cache import compute_summary
    from loraworks.models import ModelManager
    from loraworks.server.app import create_app
    from loraworks.server.auth import BindRefused, check_bind

    try:
        manager = ModelManager.open(root)
    except ValueError as exc:  # ModelError: a broken root or config
        fail(str(exc))
    try:
        compute = compute_summary(manager.config.compute)  # a missing device stops us here
    except ValueError as exc:
        manager.close()
        fail(str(exc))
    settings = manager.config.server
    host = host or settings.host
    port = port or settings.port
    token = token or settings.token
    try:
        check_bind(host, token)
    except BindRefused as exc:
        fail(str(exc))
    if problem := _bind_problem(host, port):
        fail(f"cannot listen on {host}:{port}: {problem}.")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    typer.echo(f"loraworks serving {manager.root}; models run on {compute}")
    typer.echo(f"open {url}  (API schema: http://{shown}:{port}/openapi.json)")
    try:
        uvicorn.run(
            create_app(manager, token=token, watch=True), host=host, port=port, log_level="warning"
        )
    finally:
        manager.close()
