"""Reading a Server-Sent-Events stream in tests (independent of the server's encoder)."""

from __future__ import annotations

import json
from collections.abc import Callable


def read_events(
    client, item_id: str, after_first: Callable[[], object] | None = None
) -> list[dict]:
    """Every event of an item's stream as `{"event": name, **data}`, until the server ends it.

    `after_first` runs once the first event has arrived, i.e. once the stream is subscribed.
    """
    events, name, data = [], None, []
    with client.stream("GET", f"/api/queue/{item_id}/events") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                events.append({"event": name, **json.loads("".join(data))})
                name, data = None, []
                if after_first is not None and len(events) == 1:
                    after_first()
    return events
