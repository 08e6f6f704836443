"""The body of one delivery: {id, type, time, vehicle_ref, data}, rendered once when the event
enters the outbox, so that every delivery of it (duplicates, replays) sends the same bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson


def render(
    event_id: int, type: str, time_ms: int, vehicle_ref: str, data: dict[str, Any] | None
) -> bytes:
    envelope = {
        "id": event_id,
        "type": type,
        "time": _iso_time(time_ms),
        "vehicle_ref": vehicle_ref,
        "data": data or {},
    }
    try:
        return orjson.dumps(envelope)
    except TypeError:
        # A device event's detail is stored as the device sent it (jsonb holds numbers of any
        # size); orjson refuses integers beyond 64 bits. One such event must not stop the outbox
        # (the worker would fail on it at every restart): the standard library writes them as
        # they are, and anything else it cannot write as its text.
        return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def _iso_time(time_ms: int) -> str:
    return (
        datetime.fromtimestamp(time_ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
