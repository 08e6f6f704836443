"""Legacy observations (migrations/0050): what a legacy platform saw during the parallel run,
stored apart from fleetgate's own positions (docs/dialects.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from psycopg.types.json import Jsonb

if TYPE_CHECKING:
    from telemetry.store._store import TelemetryStore


@dataclass(frozen=True, slots=True)
class LegacyObservation:
    source: str  # which legacy platform (the intake path's {source})
    legacy_device: str  # its unique id there (fleetgate's device id where they match)
    time: datetime
    lat: float | None
    lon: float | None
    speed_kmh: float | None
    heading_deg: float | None
    altitude_m: float | None
    accuracy_m: float | None
    valid: bool | None
    attributes: dict


class LegacyObservations:
    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def add(self, obs: LegacyObservation) -> tuple[bool, int | None]:
        """Store one observation: (stored, the fleetgate vehicle it was matched to). A second
        one of the same source, device and time is a duplicate (forwarders retry), not stored."""
        async with self._store.transaction() as cur:
            await cur.execute(
                "INSERT INTO legacy_observations (source, legacy_device, vehicle, time, lat, lon,"
                " speed_kmh, heading_deg, altitude_m, accuracy_m, valid, attributes)"
                " VALUES (%s, %s, (SELECT id FROM vehicles WHERE device_id = %s), %s, %s, %s, %s,"
                " %s, %s, %s, %s, %s)"
                " ON CONFLICT (source, legacy_device, time) DO NOTHING RETURNING vehicle",
                (
                    obs.source,
                    obs.legacy_device,
                    obs.legacy_device,
                    obs.time,
                    obs.lat,
                    obs.lon,
                    obs.speed_kmh,
                    obs.heading_deg,
                    obs.altitude_m,
                    obs.accuracy_m,
                    obs.valid,
                    Jsonb(obs.attributes),
                ),
            )
            row = await cur.fetchone()
        return (True, row[0]) if row is not None else (False, None)
