"""`GET /api/cluster`: the replicas of `serve --cluster` as the head knows them (each replica's
loaded models, current stack, jobs, stack switches, batches) and the jobs waiting for one.
Reads the head's `Cluster` only; Ray is never imported here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from loraworks.server.errors import ApiError
from loraworks.server.state import ServerState, server_state

router = APIRouter(tags=["cluster"])
State = Annotated[ServerState, Depends(server_state)]


@router.get("/cluster")
def get_cluster(state: State) -> dict[str, Any]:
    if state.cluster is None:
        raise ApiError(404, "This server generates in its own process (start it with --cluster).")
    return state.cluster.snapshot()
