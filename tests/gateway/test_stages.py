"""gateway/stages.py: the geofence and battery stages as the pipeline drives them, against the
real store: zone edits swapped in live, a zone set the core refuses kept out, and what a stage
derives resumed by a new stage after a restart."""

from __future__ import annotations

import time

import psycopg
import pytest

from gateway.stages import BatteryStage, GeofenceStage
from telemetry.batch import TelemetryBatch
from telemetry.store import Device, TelemetryStore
from tests.harness import register
from tests.zones import at, square

pytestmark = pytest.mark.integration


def ride(vehicle: int, t0: int, east_from: float, east_to: float) -> TelemetryBatch:
    """An e-bike going east at 18 km/h, a fix every 5 m (one a second), the battery draining."""
    n = int((east_to - east_from) / 5) + 1
    batch = TelemetryBatch.empty(n)
    batch.vehicle[:] = vehicle
    for k in range(n):
        batch.time_ms[k] = t0 + k * 1000
        batch.lat[k], batch.lon[k] = at(east_from + 5 * k)
    batch.speed_kmh[:] = 18.0
    batch.soc_pct[:] = [80.0 - 0.01 * k for k in range(n)]
    batch.received_ms[:] = t0
    return batch


async def stage_on(store: TelemetryStore, devices) -> GeofenceStage:
    stage = GeofenceStage(store)
    await stage.start(devices)
    return stage


async def fleet(dsn: str) -> tuple[int, dict[str, Device]]:
    vehicle = (await register(dsn, [("tcu-1", "veh-1", "ebike")]))["tcu-1"]
    return vehicle, {"tcu-1": Device("tcu-1", vehicle, "veh-1", "ebike")}


async def test_a_zone_edit_is_swapped_in_and_raises_its_events(pg_dsn):
    vehicle, devices = await fleet(pg_dsn)
    t0 = int(time.time() * 1000) - 600_000
    async with await TelemetryStore.open(pg_dsn) as store:
        stage = await stage_on(store, devices)
        assert stage.process(ride(vehicle, t0, 0, 100)).events == [], "no zones yet"
        await store.put_zones([square("plaza", 150, 250)])
        assert await stage.refresh() is True and await stage.refresh() is False
        out = stage.process(ride(vehicle, t0 + 30_000, 105, 300))
        assert [e.type for e in out.events] == ["zone_enter", "zone_exit"]
        assert out.derived.vehicle_json["geofence"][vehicle]["zones"] == []


async def test_a_zone_set_the_core_refuses_is_kept_out_and_the_old_one_stays(pg_dsn):
    vehicle, devices = await fleet(pg_dsn)
    async with await TelemetryStore.open(pg_dsn) as store:
        await store.put_zones([square("plaza", 150, 250)])
        stage = await stage_on(store, devices)
        version = stage.version
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            # Edited by hand in SQL, past the API's validation: a ring that is no polygon.
            await conn.execute(
                'UPDATE zones SET geometry = \'{"type": "Polygon", "coordinates": '
                "[[[13.4, 52.5], [13.5, 52.5]]]}'::jsonb WHERE id = 'plaza'"
            )
        assert await stage.refresh() is False
        assert stage.version == version and stage.rejected_versions
        assert await stage.refresh() is False, "a refused version is not rebuilt at every poll"


async def test_a_new_stage_resumes_what_the_last_one_stored_without_a_second_enter(pg_dsn):
    vehicle, devices = await fleet(pg_dsn)
    t0 = int(time.time() * 1000) - 600_000
    async with await TelemetryStore.open(pg_dsn) as store:
        await store.put_zones([square("plaza", 200, 600)])
        first = await stage_on(store, devices)
        batch = ride(vehicle, t0, 100, 300)
        out = first.process(batch)
        assert [e.type for e in out.events] == ["zone_enter"]
        await store.write(batch, out.events, out.derived)

        restarted = await stage_on(store, devices)
        later = restarted.process(ride(vehicle, t0 + 60_000, 305, 400))
        assert later.events == [], "still inside: the restarted stage knows it"


async def test_the_battery_stage_writes_history_and_state_a_restart_resumes(pg_dsn):
    vehicle, devices = await fleet(pg_dsn)
    t0 = (int(time.time() * 1000) - 3_600_000) // 900_000 * 900_000  # on the 15-min grid
    async with await TelemetryStore.open(pg_dsn) as store:
        stage = BatteryStage(store)
        await stage.start(devices)
        batch = ride(vehicle, t0, 0, 5 * 1200)  # 20 minutes of riding: crosses a boundary
        out = stage.process(batch)
        await store.write(batch, out.events, out.derived)
        await stage.save([vehicle])
        restarted = BatteryStage(store)
        await restarted.start(devices)
        assert restarted.replayed == 0, "the saved state covers every stored sample"
        assert restarted.core.export_state([vehicle])[vehicle]["t"] == int(batch.time_ms[-1])
