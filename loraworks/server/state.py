"""The objects one running server shares between its routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from loraworks.models import ModelManager
from loraworks.server.events import EventBus
from loraworks.server.installs import InstallRunner
from loraworks.server.queue import GenerationQueue


@dataclass
class ServerState:
    manager: ModelManager
    queue: GenerationQueue
    bus: EventBus
    installs: InstallRunner
    cluster: Any = None  # loraworks.cluster.head.Cluster under `serve --cluster`


def server_state(request: Request) -> ServerState:
    """FastAPI dependency: the state `create_app` stored on the app."""
    return request.app.state.server
