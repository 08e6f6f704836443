"""Outbound events made the way the ingest path makes them (TelemetryStore.write: the events
commit in the batch's transaction), for the webhook tests and benchmark."""

from __future__ import annotations

import time

from telemetry.batch import DeviceEvent, TelemetryBatch
from telemetry.store import TelemetryStore

ZONE_EVENTS = ("zone_enter", "zone_exit")


async def write_zone_events(
    store: TelemetryStore, vehicles: list[int], per_vehicle: int, start_ms: int | None = None
) -> int:
    """per_vehicle geofence events for each vehicle, one ingest transaction per round, the
    vehicles interleaved; returns how many were written."""
    start_ms = start_ms if start_ms is not None else int(time.time() * 1000) - 60_000
    for n in range(per_vehicle):
        events = [
            DeviceEvent(v, start_ms + n, ZONE_EVENTS[n % 2], {"zone": "z1", "n": n}, "geofence")
            for v in vehicles
        ]
        await store.write(TelemetryBatch.empty(), events)
    return per_vehicle * len(vehicles)
