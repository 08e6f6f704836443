"""The body of one delivery: {id, type, time, vehicle_ref, data}, rendered once when the event
enters the outbox, so that every delivery of it (duplicates, replays) sends the same bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson


def render(
    event_id: int, type: str, time_ms: int, vehicle_ref: str, data: dict[str, Any] | None
) -> bytes:
    when = datetime.fromtimestamp(time_ms / 1000, UTC)
    return orjson.dumps(
        {
            "id": event_id,
            "type": type,
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "vehicle_ref": vehicle_ref,
            "data": data or {},
        }
    )
