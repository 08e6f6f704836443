"""Both sides of a shadow batch written straight into the database (fleetgate's positions and
trips, the legacy platform's observations), for the tests of `migrate validate` and its API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg

from telemetry.earth import M_PER_DEG
from telemetry.store import TelemetryStore

RIDE_M = 7e-3 * M_PER_DEG  # each vehicle's one ride: 7 minutes north along a meridian


def an_hour_ago() -> str:
    """A --now for `shadow start` whose batch has an hour of samples behind it by now."""
    return (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S%z")


async def both_sides(
    dsn: str,
    batch: dict,
    shift_m: float = 0.0,
    samples: int = 20,
    step: timedelta = timedelta(minutes=1),
) -> None:
    """Every vehicle of the batch, a sample every step (a minute) for `samples` steps in
    fleetgate's positions and in the legacy observations (the legacy ones shifted north by
    shift_m), one ride each: north 1e-3 degrees a step from step 5 to step 12."""
    t0 = datetime.fromisoformat(batch["started_at"]) + timedelta(seconds=5)
    pos, legacy, trips = [], [], []
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        ids = dict(await (await conn.execute("SELECT id, device_id FROM vehicles")).fetchall())
        for v in batch["vehicles"]:
            for k in range(samples):
                t, riding = t0 + k * step, 5 <= k < 12
                # north while riding, then parked where the ride ended
                lat, lon = 52.5 + v * 1e-3 + min(max(k - 5, 0), 7) * 1e-3, 13.4
                pos.append((t, v, lat, lon, 80.0 - k, not riding, t + timedelta(seconds=1)))
                attrs = json.dumps({"batteryLevel": 80.0 - k, "lock": not riding})
                legacy.append(
                    (ids[v], t, lat + shift_m / M_PER_DEG, lon, attrs, t + timedelta(seconds=1))
                )
            trips.append((v, t0 + 5 * step, t0 + 12 * step, RIDE_M))
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO positions (time, vehicle, lat, lon, soc_pct, locked, received_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                pos,
            )
            await cur.executemany(
                "INSERT INTO legacy_observations (source, legacy_device, time, lat, lon,"
                " attributes, received_at) VALUES ('traccar', %s, %s, %s, %s, %s, %s)",
                legacy,
            )
            await cur.executemany(
                "INSERT INTO trips (vehicle, status, started_at, ended_at, distance_m)"
                " VALUES (%s, 'ended', %s, %s, %s)",
                trips,
            )


async def parallel_run_evidence(dsn: str):
    store = await TelemetryStore.open(dsn)
    try:
        return await store.migration_evidence("parallel_run")
    finally:
        await store.close()
