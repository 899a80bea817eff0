"""HTTP API, generation queue, progress events and the static web UI (`loraworks serve`)."""

from loraworks.server.app import create_app

__all__ = ["create_app"]
