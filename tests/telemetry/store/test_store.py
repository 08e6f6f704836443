"""The telemetry store against a real PostgreSQL (native partitions): what a write stores, what
it counts, how vehicle_state and presence follow the samples, partitions, and outages."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from telemetry.batch import UNKNOWN, DeviceEvent, TelemetryBatch
from telemetry.store import (
    DataRefused,
    RegistrationConflict,
    StoreUnavailable,
    TelemetryStore,
    VehicleRegistration,
    is_unavailable,
)
from tests.batches import DAY_MS, HOUR_MS, make_batch, ms, now_ms
from tests.netproxy import TcpProxy
from tests.stored_rows import assert_samples_between_reads_back_what_was_written, fetch

pytestmark = pytest.mark.integration


async def state_of(dsn: str, vehicle: int) -> dict:
    rows = await fetch(dsn, "SELECT * FROM vehicle_state WHERE vehicle = %s", vehicle)
    return rows[0] if rows else {}


@pytest.fixture
async def store(pg_dsn):
    async with await TelemetryStore.open(pg_dsn) as s:
        yield s


@pytest.fixture
async def vehicles(store) -> list[int]:
    ids = await store.register_vehicles(
        [VehicleRegistration(f"veh-{i}", f"tcu-{i}", "car" if i % 2 else "ebike") for i in range(3)]
    )
    return [ids[f"tcu-{i}"] for i in range(3)]


# --- registry ------------------------------------------------------------------------------------


async def test_registering_twice_gives_the_same_ids_and_the_registry_lists_them(store):
    regs = [
        VehicleRegistration("veh-a", "tcu-a", "ebike"),
        VehicleRegistration("veh-b", "tcu-b", "car"),
    ]
    first = await store.register_vehicles(regs)
    assert await store.register_vehicles(regs) == first
    registry = await store.load_registry()
    assert {d: (dev.vehicle, dev.vehicle_ref, dev.vehicle_type) for d, dev in registry.items()} == {
        "tcu-a": (first["tcu-a"], "veh-a", "ebike"),
        "tcu-b": (first["tcu-b"], "veh-b", "car"),
    }


async def test_a_swapped_tcu_keeps_the_vehicle_and_a_device_cannot_serve_two(store):
    ids = await store.register_vehicles(
        [
            VehicleRegistration("veh-a", "tcu-old", "car"),
            VehicleRegistration("veh-b", "tcu-b", "car"),
        ]
    )
    swapped = await store.register_vehicles([VehicleRegistration("veh-a", "tcu-new", "car")])
    assert swapped == {"tcu-new": ids["tcu-old"]}
    with pytest.raises(RegistrationConflict, match="tcu-b"):
        await store.register_vehicles([VehicleRegistration("veh-a", "tcu-b", "car")])
    with pytest.raises(ValueError, match="device id"):
        await store.register_vehicles([VehicleRegistration("veh-c", "bad/id", "car")])


# --- positions -----------------------------------------------------------------------------------


async def test_every_column_is_stored_as_sent_missing_values_as_null(store, vehicles, pg_dsn):
    v, t = vehicles[0], now_ms() - HOUR_MS
    full = {
        "vehicle": v,
        "t": t,
        "lat": 52.520031,
        "lon": 13.404954,
        "speed_kmh": 17.25,
        "heading_deg": 84.5,
        "soc_pct": 71.5,
        "pack_v": 38.75,
        "pack_a": -6.25,
        "aux_v": 12.5,
        "odometer_m": 1289034.5,
        "locked": 0,
        "ignition": 1,
        "immobilised": 0,
        "charging": 1,
        "flags": 1,
        "received_ms": t + 1234,
    }
    result = await store.write(make_batch([full, {"vehicle": v, "t": t + 1}]), [])
    assert (result.inserted, result.duplicates) == (2, 0)

    rows = await fetch(pg_dsn, "SELECT * FROM positions ORDER BY time")
    stored = rows[0]
    assert ms(stored.pop("time")) == t and ms(stored.pop("received_at")) == t + 1234
    assert stored == {
        "vehicle": v,
        "lat": 52.520031,
        "lon": 13.404954,
        "speed_kmh": 17.25,
        "heading_deg": 84.5,
        "soc_pct": 71.5,
        "pack_v": 38.75,
        "pack_a": -6.25,
        "aux_v": 12.5,
        "odometer_m": 1289034.5,
        "locked": False,
        "ignition": True,
        "immobilised": False,
        "charging": True,
        "flags": 1,
    }
    empty = rows[1]
    assert ms(empty["time"]) == t + 1 and empty["flags"] == 0
    assert all(
        empty[c] is None
        for c in (
            "lat",
            "lon",
            "speed_kmh",
            "heading_deg",
            "soc_pct",
            "pack_v",
            "pack_a",
            "aux_v",
            "odometer_m",
            "locked",
            "ignition",
            "immobilised",
            "charging",
        )
    )


async def test_duplicates_within_a_batch_and_across_batches_are_counted_not_stored(
    store, vehicles, pg_dsn
):
    v, t = vehicles[0], now_ms() - HOUR_MS
    first = make_batch(
        [{"vehicle": v, "t": t + k * 1000, "soc_pct": 50} for k in range(5)]
        + [{"vehicle": v, "t": t, "soc_pct": 50}]
    )  # repeated in the same batch
    r = await store.write(first, [])
    assert (r.inserted, r.duplicates) == (5, 1)

    again = make_batch([{"vehicle": v, "t": t + k * 1000} for k in range(3, 8)])  # 2 known
    r = await store.write(again, [])
    assert (r.inserted, r.duplicates) == (3, 2)
    assert (await fetch(pg_dsn, "SELECT count(*) AS n FROM positions"))[0]["n"] == 8


async def test_a_batch_with_nothing_to_store_is_a_no_op(store):
    r = await store.write(TelemetryBatch.empty(), [])
    assert (r.inserted, r.duplicates, r.events_inserted) == (0, 0, 0)


async def test_a_sample_for_a_day_without_a_partition_still_lands(store, vehicles, pg_dsn):
    v = vehicles[0]
    far_ahead = now_ms() + 10 * DAY_MS  # beyond the partitions made ahead
    long_ago = now_ms() - 45 * DAY_MS  # before the retention window, e.g. an old import
    r = await store.write(
        make_batch([{"vehicle": v, "t": far_ahead}, {"vehicle": v, "t": long_ago}]), []
    )
    assert r.inserted == 2
    days = {datetime.fromtimestamp(t / 1000, UTC).strftime("%Y%m%d") for t in (far_ahead, long_ago)}
    names = {
        r["relname"]
        for r in await fetch(
            pg_dsn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'positions'::regclass",
        )
    }
    assert {f"positions_p{d}" for d in days} <= names


async def test_data_the_database_refuses_is_data_refused_not_an_outage(store):
    # A vehicle id the registry never issued: vehicle_state's foreign key refuses it. The
    # pipeline relies on this being DataRefused (it isolates the row) and not an outage.
    with pytest.raises(DataRefused, match="foreign key") as refused:
        await store.write(make_batch([{"vehicle": 999_999, "t": now_ms()}]), [])
    assert isinstance(refused.value.__cause__, psycopg.errors.ForeignKeyViolation)


# --- vehicle_state -------------------------------------------------------------------------------


async def test_vehicle_state_holds_the_newest_sample_and_an_older_reupload_changes_nothing(
    store, vehicles, pg_dsn
):
    v, t = vehicles[0], now_ms() - HOUR_MS
    await store.write(
        make_batch(
            [
                {
                    "vehicle": v,
                    "t": t + 1000,
                    "soc_pct": 60,
                    "lat": 52.6,
                    "lon": 13.6,
                    "locked": 1,
                    "speed_kmh": 0,
                }
            ]
        ),
        [],
    )
    before = await state_of(pg_dsn, v)
    # The device's buffer, uploaded again after a lost PUBACK: older, with other values.
    await store.write(
        make_batch(
            [
                {
                    "vehicle": v,
                    "t": t,
                    "soc_pct": 90,
                    "lat": 52.5,
                    "lon": 13.5,
                    "locked": 0,
                    "speed_kmh": 20,
                }
            ]
        ),
        [],
    )
    after = await state_of(pg_dsn, v)
    for column in (
        "time",
        "soc_pct",
        "lat",
        "lon",
        "fix_time",
        "locked",
        "speed_kmh",
        "received_at",
        "flags",
    ):
        assert after[column] == before[column], column
    assert ms(after["time"]) == t + 1000 and after["soc_pct"] == 60 and after["locked"] is True


async def test_a_missing_field_keeps_its_last_reported_value(store, vehicles, pg_dsn):
    v, t = vehicles[1], now_ms() - HOUR_MS
    await store.write(
        make_batch(
            [
                {
                    "vehicle": v,
                    "t": t,
                    "soc_pct": 80,
                    "aux_v": 12.4,
                    "ignition": 1,
                    "odometer_m": 1000,
                },
                {
                    "vehicle": v,
                    "t": t + 1000,
                    "soc_pct": 79,
                },  # in the same batch: newer, fewer fields
            ]
        ),
        [],
    )
    await store.write(
        make_batch([{"vehicle": v, "t": t + 2000, "ignition": UNKNOWN, "speed_kmh": 5}]), []
    )
    s = await state_of(pg_dsn, v)
    assert ms(s["time"]) == t + 2000
    assert (s["soc_pct"], s["aux_v"], s["ignition"], s["odometer_m"], s["speed_kmh"]) == (
        79,
        pytest.approx(12.4),
        True,
        1000,
        5,
    )


async def test_a_value_older_than_the_stored_state_does_not_win_even_in_a_newer_batch(
    store, vehicles, pg_dsn
):
    v, t = vehicles[0], now_ms() - HOUR_MS
    await store.write(make_batch([{"vehicle": v, "t": t + 1000, "soc_pct": 50}]), [])
    # One batch: a re-uploaded older sample carrying soc, and a newer one without it.
    await store.write(
        make_batch(
            [
                {"vehicle": v, "t": t, "soc_pct": 99, "pack_v": 40},
                {"vehicle": v, "t": t + 2000, "speed_kmh": 3},
            ]
        ),
        [],
    )
    s = await state_of(pg_dsn, v)
    assert ms(s["time"]) == t + 2000 and s["speed_kmh"] == 3
    assert s["soc_pct"] == 50, "the stored value is newer than the re-uploaded one"
    assert s["pack_v"] == 40, "nothing was known about pack_v, so the older value is news"


async def test_position_comes_from_the_newest_unflagged_fix(store, vehicles, pg_dsn):
    v, t = vehicles[0], now_ms() - HOUR_MS
    await store.write(
        make_batch(
            [
                {"vehicle": v, "t": t, "lat": 52.50, "lon": 13.40},
                {
                    "vehicle": v,
                    "t": t + 1000,
                    "lat": 48.85,
                    "lon": 2.35,
                    "flags": 1,
                },  # a GPS glitch
                {"vehicle": v, "t": t + 2000, "soc_pct": 70},  # no fix
            ]
        ),
        [],
    )
    s = await state_of(pg_dsn, v)
    assert (s["lat"], s["lon"], ms(s["fix_time"])) == (52.50, 13.40, t)
    assert ms(s["time"]) == t + 2000 and s["flags"] == 0
    stored = await fetch(pg_dsn, "SELECT flags FROM positions WHERE lat = 48.85")
    assert stored == [{"flags": 1}], "the implausible fix is kept as evidence"

    await store.write(make_batch([{"vehicle": v, "t": t + 3000, "lat": 52.51, "lon": 13.41}]), [])
    s = await state_of(pg_dsn, v)
    assert (s["lat"], s["lon"], ms(s["fix_time"])) == (52.51, 13.41, t + 3000)


async def test_telemetry_marks_the_vehicle_online_and_seen_by_the_gateway_clock(
    store, vehicles, pg_dsn
):
    v = vehicles[2]
    received = now_ms()
    b = make_batch([{"vehicle": v, "t": received - DAY_MS}])  # an old sample, received now
    b.received_ms[:] = received
    await store.write(b, [])
    s = await state_of(pg_dsn, v)
    assert s["online"] is True and ms(s["last_seen"]) == received


async def test_many_vehicles_in_one_batch_each_get_their_own_state(store, pg_dsn):
    n = 300
    ids = await store.register_vehicles(
        [VehicleRegistration(f"v{i}", f"d{i}", "ebike") for i in range(n)]
    )
    vehicle = np.array([ids[f"d{i}"] for i in range(n)])
    t = now_ms() - HOUR_MS
    b = TelemetryBatch.empty(3 * n)
    b.vehicle[:] = np.tile(vehicle, 3)
    b.time_ms[:] = t + np.repeat(np.arange(3), n) * 1000
    b.soc_pct[:] = np.repeat([30.0, 20.0, np.nan], n)
    b.received_ms[:] = now_ms()
    rng = np.random.default_rng(7)
    shuffle = rng.permutation(3 * n)  # arrival order does not matter
    r = await store.write(b.take(shuffle), [])
    assert r.inserted == 3 * n
    rows = await fetch(pg_dsn, "SELECT vehicle, time, soc_pct FROM vehicle_state ORDER BY vehicle")
    assert [r["vehicle"] for r in rows] == sorted(vehicle.tolist())
    assert {ms(r["time"]) for r in rows} == {t + 2000} and {r["soc_pct"] for r in rows} == {20.0}


# --- downsampled history ------------------------------------------------------------------------


async def test_positions_1m_has_one_row_per_vehicle_and_minute(store, vehicles, pg_dsn):
    v = vehicles[0]
    minute = (now_ms() - HOUR_MS) // 60_000 * 60_000
    await store.write(
        make_batch(
            [
                {
                    "vehicle": v,
                    "t": minute + 1000,
                    "lat": 52.50,
                    "lon": 13.40,
                    "speed_kmh": 10,
                    "soc_pct": 80,
                },
                {"vehicle": v, "t": minute + 20_000, "lat": 52.51, "lon": 13.41, "speed_kmh": 20},
                {
                    "vehicle": v,
                    "t": minute + 40_000,
                    "lat": 60.0,
                    "lon": 20.0,
                    "speed_kmh": 30,
                    "flags": 1,
                },
                {"vehicle": v, "t": minute + 61_000, "speed_kmh": 5, "soc_pct": 79},
            ]
        ),
        [],
    )
    rows = await fetch(pg_dsn, "SELECT * FROM positions_1m WHERE vehicle = %s ORDER BY bucket", v)
    assert [ms(r.pop("bucket")) for r in rows] == [minute, minute + 60_000]
    assert rows[0] == {
        "vehicle": v,
        "lat": 52.51,
        "lon": 13.41,
        "speed_kmh_avg": 20.0,
        "speed_kmh_max": 30.0,
        "soc_pct": 80.0,
        "samples": 3,
    }
    assert rows[1] == {
        "vehicle": v,
        "lat": None,
        "lon": None,
        "speed_kmh_avg": 5.0,
        "speed_kmh_max": 5.0,
        "soc_pct": 79.0,
        "samples": 1,
    }


# --- events --------------------------------------------------------------------------------------


async def test_device_events_are_stored_once(store, vehicles, pg_dsn):
    v, t = vehicles[0], now_ms() - HOUR_MS
    events = [
        DeviceEvent(v, t, "tamper", {"sensor": "lock_cable"}),
        DeviceEvent(v, t, "crash"),
        DeviceEvent(v, t, "tamper", {"sensor": "again"}),
    ]  # same (vehicle, t, type)
    r = await store.write(TelemetryBatch.empty(), events)
    assert r.events_inserted == 2
    r = await store.write(TelemetryBatch.empty(), events[:1])  # redelivered
    assert r.events_inserted == 0
    rows = await fetch(
        pg_dsn, "SELECT time, vehicle, source, type, detail FROM events ORDER BY type"
    )
    assert [(ms(r["time"]), r["vehicle"], r["source"], r["type"], r["detail"]) for r in rows] == [
        (t, v, "device", "crash", None),
        (t, v, "device", "tamper", {"sensor": "lock_cable"}),
    ]


# --- presence ------------------------------------------------------------------------------------


async def test_presence_follows_status_order_not_arrival_order(store, vehicles, pg_dsn):
    v, t = vehicles[0], now_ms()
    await store.set_presence([(v, True, t)])  # no vehicle_state row yet: one is made
    assert (await state_of(pg_dsn, v))["online"] is True
    await store.set_presence([(v, False, t - 5000)])  # a stale will, delivered late
    assert (await state_of(pg_dsn, v))["online"] is True
    await store.set_presence([(v, False, t + 5000), (v, True, t + 4000)])  # newest wins
    s = await state_of(pg_dsn, v)
    assert s["online"] is False and ms(s["presence_changed_at"]) == t + 5000


async def test_expire_presence_sets_silent_vehicles_offline(store, vehicles, pg_dsn):
    quiet, busy, offline = vehicles
    now = now_ms()
    for v, seen in ((quiet, now - 600_000), (busy, now)):
        b = make_batch([{"vehicle": v, "t": seen}])
        b.received_ms[:] = seen
        await store.write(b, [])
    await store.set_presence([(offline, False, now)])
    assert await store.expire_presence(300.0) == [quiet]
    assert (await state_of(pg_dsn, quiet))["online"] is False
    assert (await state_of(pg_dsn, busy))["online"] is True
    assert await store.expire_presence(300.0) == []


async def test_load_last_fixes_gives_each_vehicles_newest_plausible_fix(store, vehicles):
    a, b, c = vehicles
    t = now_ms() - HOUR_MS
    await store.write(
        make_batch(
            [
                {"vehicle": a, "t": t, "lat": 52.5, "lon": 13.4},
                {"vehicle": a, "t": t + 1000, "lat": 10.0, "lon": 10.0, "flags": 1},
                {"vehicle": b, "t": t + 2000, "lat": 48.1, "lon": 11.5},
                {"vehicle": c, "t": t, "soc_pct": 10},  # never had a fix
            ]
        ),
        [],
    )
    got_vehicles, fix_time, lat, lon = await store.load_last_fixes()
    assert got_vehicles.tolist() == [a, b] and fix_time.tolist() == [t, t + 2000]
    assert lat.tolist() == [52.5, 48.1] and lon.tolist() == [13.4, 11.5]
    assert got_vehicles.dtype == np.int64 and fix_time.dtype == np.int64


# --- partitions ----------------------------------------------------------------------------------


async def partitions(dsn: str) -> set[str]:
    rows = await fetch(
        dsn,
        "SELECT c.relname FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'positions'::regclass",
    )
    return {r["relname"] for r in rows}


async def test_maintain_creates_partitions_ahead_and_drops_those_past_retention(store, pg_dsn):
    today = datetime.now(UTC).date()
    ahead = f"positions_p{today + timedelta(days=3):%Y%m%d}"
    oldest_kept = f"positions_p{today - timedelta(days=30):%Y%m%d}"
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE {ahead}")
        await conn.execute(
            "CREATE TABLE positions_p20200101 PARTITION OF positions "
            "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-01-02 00:00+00')"
        )
    report = await store.maintain()
    assert report.created == [ahead] and report.dropped == ["positions_p20200101"]
    names = await partitions(pg_dsn)
    assert ahead in names and oldest_kept in names and "positions_p20200101" not in names
    assert len(names) == 30 + 3 + 1
    again = await store.maintain()
    assert (again.created, again.dropped) == ([], []) and "nothing to do" in str(again)


async def test_two_processes_maintaining_at_once_do_it_once(pg_dsn):
    today = datetime.now(UTC).date()
    missing = [f"positions_p{today + timedelta(days=d):%Y%m%d}" for d in (1, 2, 3)]
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        for name in missing:
            await conn.execute(f"DROP TABLE {name}")
    a, b = await TelemetryStore.open(pg_dsn), await TelemetryStore.open(pg_dsn)
    try:
        ra, rb = await asyncio.gather(a.maintain(), b.maintain())
    finally:
        await a.close()
        await b.close()
    assert sorted(ra.created + rb.created) == missing
    assert set(missing) <= await partitions(pg_dsn)


# --- outages -------------------------------------------------------------------------------------


async def test_an_unreachable_server_raises_store_unavailable_quickly(pg_dsn, vehicles):
    proxy = await TcpProxy.start_for(pg_dsn)
    try:
        store = await TelemetryStore.open(proxy.dsn(pg_dsn), timeout_s=1)
        try:
            batch = make_batch([{"vehicle": vehicles[0], "t": now_ms()}])
            assert (await store.write(batch, [])).inserted == 1
            await proxy.cut()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await store.write(make_batch([{"vehicle": vehicles[0], "t": now_ms() + 1}]), [])
            with pytest.raises(StoreUnavailable):
                await store.load_registry()
            assert time.monotonic() - started < 10, "fails fast instead of hanging"
            await proxy.restore()
            later = make_batch([{"vehicle": vehicles[0], "t": now_ms() + 2}])
            result = await store.write(later, [])
            assert result.inserted == 1, "the pool reconnects once the server is back"
        finally:
            await store.close()
        await proxy.cut()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await TelemetryStore.open(proxy.dsn(pg_dsn), timeout_s=1)
        assert time.monotonic() - started < 5
    finally:
        await proxy.close()


async def test_a_connection_the_server_terminated_is_replaced_without_an_error(
    store, vehicles, pg_dsn
):
    await store.write(make_batch([{"vehicle": vehicles[0], "t": now_ms()}]), [])
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    r = await store.write(make_batch([{"vehicle": vehicles[0], "t": now_ms() + 1}]), [])
    assert r.inserted == 1


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (psycopg.errors.AdminShutdown, True),  # server shutting down
        (psycopg.errors.CannotConnectNow, True),  # starting up / in recovery
        (psycopg.errors.ReadOnlySqlTransaction, True),  # a standby after failover
        (psycopg.errors.LockNotAvailable, True),  # partition DDL gave up waiting
        (psycopg.OperationalError, True),  # connection lost, no SQLSTATE
        (psycopg.errors.CheckViolation, False),  # the data itself
        (psycopg.errors.NumericValueOutOfRange, False),
        (psycopg.errors.ProgramLimitExceeded, False),  # a row too large: retrying cannot help
    ],
)
def test_only_connection_level_errors_count_as_unavailable(error, unavailable):
    assert is_unavailable(error("test")) is unavailable


async def test_samples_between_reads_back_the_stored_samples_in_time_order(store, vehicles):
    await assert_samples_between_reads_back_what_was_written(store, vehicles, now_ms() - HOUR_MS)
