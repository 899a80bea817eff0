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
    cluster: bool = typer.Option(
        False, "--cluster", help="generate on a Ray Serve cluster (docs/cluster.md)"
    ),
    ray_address: str | None = typer.Option(
        None, help="with --cluster: join this Ray cluster (default: start one here)"
    ),
    replicas: int = typer.Option(1, min=1, help="with --cluster: generation replicas"),
    autoscale: str | None = typer.Option(
        None, metavar="MIN:MAX", help="with --cluster: autoscale between MIN and MAX replicas"
    ),
    gpus_per_replica: float = typer.Option(0.0, min=0, help="with --cluster: GPUs per replica"),
    cpus_per_replica: float = typer.Option(1.0, min=0.01, help="with --cluster: CPUs per replica"),
) -> None:
    """Serve the API (schema at /openapi.json) and the web UI; new files in autoimport/ appear
    live."""
    import uvicorn

    from loraworks.cluster.head import Cluster, ClusterOptions
    from loraworks.generation.cache import compute_summary
    from loraworks.models import ModelManager
    from loraworks.server.app import create_app
    from loraworks.server.auth import BindRefused, check_bind

    try:
        manager = ModelManager.open(root)
    except ValueError as exc:  # ModelError: a broken root or config
        fail(str(exc))
    try:
        if cluster:
            scale = _autoscale(autoscale)
            options = ClusterOptions(
                ray_address,
                replicas=replicas,
                autoscale=scale,
                gpus_per_replica=gpus_per_replica,
                cpus_per_replica=cpus_per_replica,
            )
            generator = Cluster(manager, options)  # RayMissing names the extra
            where = ray_address or "started here"
            compute = f"a Ray Serve cluster ({where}, {autoscale or replicas} replica(s))"
        else:
            generator = None
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
        if generator is not None:
            try:
                generator.start()
            except Exception as exc:  # Ray's own errors: an address not answering, …
                fail(f"cannot start generation on the Ray cluster: {exc}")
        app = create_app(manager, token=token, watch=True, cluster=generator)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        if generator is not None:
            generator.shutdown()
        manager.close()


def _autoscale(text: str | None) -> tuple[int, int] | None:
    """`MIN:MAX` as two replica counts, 1 <= MIN <= MAX."""
    if text is None:
        return None
    low, _, high = text.partition(":")
    if not (low.isdigit() and high.isdigit() and 0 < int(low) <= int(high)):
        raise ValueError(f"--autoscale {text!r}: give MIN:MAX replicas, e.g. 1:4")
    return int(low), int(high)
