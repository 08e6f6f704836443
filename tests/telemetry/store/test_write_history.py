"""TelemetryStore.write_history, the bulk path of a migration's history: straight into positions
where nothing is stored yet, write()'s deduplicating path where something is, and the same
rows and vehicle state either way; on both storage paths."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from telemetry.store import TelemetryStore, VehicleRegistration
from tests.batches import HOUR_MS, make_batch, now_ms
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration


@pytest.fixture(params=["native", "timescaledb"])
def any_dsn(request):
    return request.getfixturevalue("pg_dsn" if request.param == "native" else "timescale_dsn")


@pytest.fixture
async def store(any_dsn):
    async with await TelemetryStore.open(any_dsn) as s:
        yield s


@pytest.fixture
async def vehicles(store) -> list[int]:
    ids = await store.register_vehicles(
        [VehicleRegistration(f"veh-{i}", f"tcu-{i}", "ebike") for i in range(2)]
    )
    return [ids["tcu-0"], ids["tcu-1"]]


def history(vehicles: list[int], t0: int, minutes: int) -> list[dict]:
    return [
        {"vehicle": v, "t": t0 + k * 60_000, "lat": 52.5 + k / 1e4, "lon": 13.4, "soc_pct": 80 - k}
        for v in vehicles
        for k in range(minutes)
    ]


async def stored(dsn: str) -> list[tuple]:
    rows = await fetch(dsn, "SELECT vehicle, time, lat, soc_pct FROM positions ORDER BY 1, 2")
    return [(r["vehicle"], r["time"], r["lat"], r["soc_pct"]) for r in rows]


async def test_new_history_is_stored_whole_with_its_vehicle_state(store, vehicles, any_dsn):
    t0 = now_ms() - 5 * HOUR_MS
    result = await store.write_history(make_batch(history(vehicles, t0, 30)))
    assert (result.inserted, result.duplicates) == (60, 0)
    assert len(await stored(any_dsn)) == 60
    state = await fetch(any_dsn, "SELECT vehicle, soc_pct FROM vehicle_state ORDER BY vehicle")
    assert [(s["vehicle"], s["soc_pct"]) for s in state] == [(v, 51.0) for v in vehicles]


async def test_history_over_stored_samples_adds_only_the_new_ones(store, vehicles, any_dsn):
    t0 = now_ms() - 5 * HOUR_MS
    await store.write(make_batch(history(vehicles[:1], t0 + 10 * 60_000, 5)))
    result = await store.write_history(make_batch(history(vehicles, t0, 30)))
    assert (result.inserted, result.duplicates) == (55, 5)
    assert len(await stored(any_dsn)) == 60
    again = await store.write_history(make_batch(history(vehicles, t0, 30)))
    assert (again.inserted, again.duplicates) == (0, 60)


async def test_repeats_within_the_history_are_counted_once_stored_once(store, vehicles, any_dsn):
    t0 = now_ms() - 5 * HOUR_MS
    rows = history(vehicles, t0, 10)
    result = await store.write_history(make_batch(rows + rows[:3]))
    assert (result.inserted, result.duplicates) == (20, 3)
    assert len(await stored(any_dsn)) == 20


async def test_a_writer_that_stores_one_of_the_rows_first_changes_nothing_but_the_count(
    store, vehicles, any_dsn
):
    """The span check sees nothing; a concurrent transaction then holds one of the keys: the
    direct COPY waits for it, fails on the unique key, and the batch goes write()'s way."""
    t0 = now_ms() - 5 * HOUR_MS
    rows = history(vehicles, t0, 20)
    async with await psycopg.AsyncConnection.connect(any_dsn) as other:
        await other.execute(
            "INSERT INTO positions (time, vehicle, lat, received_at) "
            "VALUES (to_timestamp(%s / 1000.0), %s, 1.0, now())",
            (rows[7]["t"], rows[7]["vehicle"]),
        )
        writing = asyncio.create_task(store.write_history(make_batch(rows)))
        await asyncio.sleep(0.5)  # the COPY now waits on the other transaction's key
        assert not writing.done()
        await other.commit()
        result = await writing
    assert (result.inserted, result.duplicates) == (39, 1)
    lats = {(r[0], r[1].timestamp()): r[2] for r in await stored(any_dsn)}
    assert len(lats) == 40
    assert lats[(rows[7]["vehicle"], rows[7]["t"] / 1000)] == 1.0, "the first writer's row stays"
