"""api/live.py, the hub behind /v1/stream, against the real store: each subscriber gets what its
filter asks for, a slow one gets the newest position per vehicle instead of a growing backlog,
events beyond its bound are counted as dropped, and close() ends every stream."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import pytest

from api.live import LiveHub
from telemetry.batch import DeviceEvent, TelemetryBatch
from telemetry.store import TelemetryStore
from tests.harness import register

pytestmark = pytest.mark.integration

LAT0, LON0 = 52.50, 13.40


def positions(vehicles: dict[str, int], t: int, lat_step: float = 0.001) -> TelemetryBatch:
    batch = TelemetryBatch.empty(len(vehicles))
    for i, vehicle in enumerate(vehicles.values()):
        batch.vehicle[i], batch.time_ms[i] = vehicle, t
        batch.lat[i], batch.lon[i] = LAT0 + i * lat_step, LON0 + i * lat_step
    batch.received_ms[:] = t
    return batch


@contextlib.asynccontextmanager
async def hub_on(dsn: str):
    async with await TelemetryStore.open(dsn) as store:
        hub = LiveHub(store, poll_interval_s=0.05)
        stop = asyncio.Event()
        running = asyncio.create_task(hub.run(stop))
        try:
            yield hub, store
        finally:
            stop.set()
            await running


async def until(sub, want, timeout: float = 10.0) -> list[tuple[str, object]]:
    got: list[tuple[str, object]] = []
    deadline = time.monotonic() + timeout
    while not want(got):
        assert time.monotonic() < deadline, f"got only {got}"
        got += [(name, orjson.loads(data)) for name, data in await sub.take(0.2)]
    return got


async def fleet(dsn: str, n: int) -> dict[str, int]:
    ids = await register(dsn, [(f"tcu-{i}", f"veh-{i}", "ebike") for i in range(n)])
    return {f"veh-{i}": ids[f"tcu-{i}"] for i in range(n)}


async def test_each_subscriber_gets_the_vehicles_its_filter_asks_for(pg_dsn):
    vehicles = await fleet(pg_dsn, 3)
    async with hub_on(pg_dsn) as (hub, store):
        by_ref = hub.subscribe(vehicles=frozenset({"veh-2"}))
        in_box = hub.subscribe(bbox=(LON0 - 0.0005, LAT0 - 0.0005, LON0 + 0.0015, LAT0 + 0.0015))
        await asyncio.sleep(0.2)  # the hub starts from "now"
        await store.write(positions(vehicles, int(time.time() * 1000)))
        hub.notify(set(vehicles.values()))
        refs = await until(by_ref, lambda got: got)
        assert {v["vehicle_ref"] for _, data in refs for v in data} == {"veh-2"}
        boxed = await until(in_box, lambda got: got)
        assert {v["vehicle_ref"] for _, data in boxed for v in data} == {"veh-0", "veh-1"}


async def test_a_slow_subscriber_gets_the_newest_position_per_vehicle_not_a_backlog(pg_dsn):
    vehicles = await fleet(pg_dsn, 2)
    async with hub_on(pg_dsn) as (hub, store):
        slow = hub.subscribe()
        await asyncio.sleep(0.2)
        t0 = int(time.time() * 1000)
        for k in range(5):  # five commits while the reader reads nothing
            await store.write(positions(vehicles, t0 + k * 1000, lat_step=0.001 * (k + 1)))
            hub.notify(set(vehicles.values()))
            await asyncio.sleep(0.15)
        got = await slow.take(0.1)
        assert [name for name, _ in got] == ["positions"], "one message, however many commits"
        latest = {v["vehicle_ref"]: v for v in orjson.loads(got[0][1])}
        assert set(latest) == {"veh-0", "veh-1"}
        assert latest["veh-1"]["lat"] == pytest.approx(LAT0 + 0.005)


async def test_events_beyond_a_subscribers_bound_are_counted_as_dropped(pg_dsn):
    vehicles = await fleet(pg_dsn, 1)
    async with hub_on(pg_dsn) as (hub, store):
        sub = hub.subscribe(positions=False, max_events=3)
        await asyncio.sleep(0.2)
        t0 = int(time.time() * 1000)
        events = [DeviceEvent(vehicles["veh-0"], t0 + k, "tamper", {"k": k}) for k in range(5)]
        await store.write(TelemetryBatch.empty(), events)
        hub.notify(set(vehicles.values()))
        got = await until(sub, lambda g: sum(n == "event" for n, _ in g) >= 3)
        assert ("dropped", {"events": 2}) in got
        assert [d["detail"]["k"] for n, d in got if n == "event"] == [2, 3, 4], "the newest kept"


async def test_close_ends_every_stream_and_the_ones_opened_after(pg_dsn):
    async with hub_on(pg_dsn) as (hub, _):
        open_one = hub.subscribe()
        hub.close()
        assert open_one.closed and await open_one.take(5.0) == []
        late = hub.subscribe()
        assert late.closed and hub.subscribers == 0
