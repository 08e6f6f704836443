"""The trips table on both storage kinds: opened and closed in the batch's transaction with
trip.started, measured with trip.ended, marked stale by a late upload and measured again with
trip.updated only when a figure changed; presence changes announced with the change."""

from __future__ import annotations

import asyncio

import pytest

from telemetry.batch import DeviceEvent
from telemetry.store import Derived, TelemetryStore, VehicleRegistration
from tests.batches import HOUR_MS, make_batch, now_ms
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration


@pytest.fixture(params=["pg_dsn", "timescale_dsn"])
def dsn(request) -> str:
    return request.getfixturevalue(request.param)


async def _store_with_vehicle(dsn: str) -> tuple[TelemetryStore, int]:
    store = await TelemetryStore.open(dsn)
    ids = await store.register_vehicles([VehicleRegistration("veh-trip", "tcu-trip", "ebike")])
    return store, ids["tcu-trip"]


def _ride(v: int, t0: int, seconds: range, locked: int = 0) -> list[dict]:
    return [
        {"vehicle": v, "t": t0 + s * 1000, "lat": 52.5 + s * 1e-4, "lon": 13.4, "locked": locked}
        for s in seconds
    ]


def _count_samples(trip) -> dict:
    return {"fixes_used": len(trip.samples["time_ms"]), "distance_m": 10.0 * trip.speeding_episodes}


async def _events(dsn: str, source: str) -> list[tuple[str, dict]]:
    rows = await fetch(dsn, "SELECT type, detail FROM events WHERE source = %s ORDER BY id", source)
    return [(r["type"], r["detail"]) for r in rows]


async def test_a_trip_is_opened_closed_measured_and_measured_again_after_a_late_upload(dsn):
    store, v = await _store_with_vehicle(dsn)
    t0 = now_ms() - HOUR_MS
    try:
        start = Derived(trip_starts=[(v, t0, 52.5, 13.4)])
        await store.write(make_batch(_ride(v, t0, range(0, 10))), derived=start)
        assert [t for t, _ in await _events(dsn, "trip")] == ["trip.started"]
        again = await store.write(make_batch([]), derived=start)  # a batch written twice
        assert again.events_inserted == 0
        end = Derived(trip_ends=[(v, t0 + 60_000, 52.6, 13.4)])
        # The ride's first and last parts; 10..49 s arrive later.
        await store.write(make_batch(_ride(v, t0, range(50, 61))), derived=end)
        first = await store.measure_trips(_count_samples)
        assert [(m.vehicle, m.announced) for m in first] == [(v, "ended")]
        trips = await fetch(dsn, "SELECT * FROM trips")
        assert trips[0]["status"] == "ended" and trips[0]["fixes_used"] == 21
        assert trips[0]["revision"] == 1 and not trips[0]["stale"]
        assert await store.measure_trips(_count_samples) == [], "nothing waits any more"

        late = await store.write(make_batch(_ride(v, t0, range(10, 50))))
        assert late.inserted == 40
        assert (await fetch(dsn, "SELECT stale FROM trips"))[0]["stale"]
        second = await store.measure_trips(_count_samples)
        assert [m.announced for m in second] == ["updated"]
        events = await _events(dsn, "trip")
        assert [t for t, _ in events] == ["trip.started", "trip.ended", "trip.updated"]
        ended, updated = events[1][1], events[2][1]
        assert ended["revision"] == 1 and ended["vehicle_ref"] == "veh-trip"
        assert updated["revision"] == 2 and updated["changed"] == ["fixes_used"]
        assert updated["trip_id"] == ended["trip_id"] == trips[0]["id"]

        # The same samples again (a duplicate upload): stale, measured, nothing changed, silent.
        await store.write(make_batch(_ride(v, t0, range(20, 30))))
        assert [m.announced for m in await store.measure_trips(_count_samples)] == [None]
        assert len(await _events(dsn, "trip")) == 3
        # Live samples after the trip never mark it.
        await store.write(make_batch(_ride(v, t0, range(70, 80), locked=1)))
        assert not (await fetch(dsn, "SELECT stale FROM trips"))[0]["stale"]
    finally:
        await store.close()


async def test_one_upload_with_two_rides_of_a_vehicle_opens_and_closes_both(dsn):
    store, v = await _store_with_vehicle(dsn)
    t0 = now_ms() - HOUR_MS
    try:
        derived = Derived(
            trip_starts=[(v, t0, None, None), (v, t0 + 30_000, None, None)],
            trip_ends=[(v, t0 + 10_000, None, None), (v, t0 + 40_000, None, None)],
        )
        await store.write(make_batch(_ride(v, t0, range(0, 41))), derived=derived)
        rows = await fetch(dsn, "SELECT status, started_at, ended_at FROM trips ORDER BY id")
        assert [r["status"] for r in rows] == ["closing", "closing"]
        assert [m.announced for m in await store.measure_trips(_count_samples)] == [
            "ended",
            "ended",
        ]
    finally:
        await store.close()


async def test_presence_changes_are_announced_once_with_the_change(dsn):
    store, v = await _store_with_vehicle(dsn)
    t = now_ms()
    try:
        await store.set_presence([(v, True, t)])  # first contact: no vehicle.online
        await store.set_presence([(v, True, t + 1)])
        await store.set_presence([(v, False, t + 2), (v, False, t + 3)])
        await store.set_presence([(v, False, t + 1)])  # older than what set it: ignored
        assert [x for x, _ in await _events(dsn, "vehicle")] == ["vehicle.offline"]
        await store.write(make_batch(_ride(v, t, range(10, 12))))  # telemetry: back online
        await store.write(make_batch(_ride(v, t, range(12, 14))))
        assert [x for x, _ in await _events(dsn, "vehicle")] == [
            "vehicle.offline",
            "vehicle.online",
        ]
        assert await store.expire_presence(0.0) == [v]
        assert await store.expire_presence(0.0) == [], "offline once"
        assert await store.mark_comms_lost(0.0) == [v]
        assert await store.mark_comms_lost(0.0) == [], "comms lost once"
        await store.set_presence([(v, True, now_ms() + 10)])
        events = await _events(dsn, "vehicle")
        assert [x.removeprefix("vehicle.") for x, _ in events] == [
            "offline",
            "online",
            "offline",
            "comms_lost",
            "online",
        ]
        assert events[2][1]["cause"] == "timeout" and events[4][1]["after_comms_lost"] is True
        assert (await fetch(dsn, "SELECT comms_lost_at FROM vehicle_state"))[0][
            "comms_lost_at"
        ] is None
    finally:
        await store.close()


async def test_a_trip_names_the_unlock_and_lock_commands_that_made_it(dsn):
    store, v = await _store_with_vehicle(dsn)
    t0 = now_ms() - HOUR_MS
    try:
        async with store.pool.connection() as conn:
            for kind, at in (("unlock", t0 - 2000), ("lock", t0 + 59_000), ("lock", t0 - 600_000)):
                await conn.execute(
                    "INSERT INTO commands (id, vehicle, device_id, type, idempotency_key, "
                    "requested_by, request_hash, on_unsafe, state, created_at, deadline, "
                    "finished_at, updated_at) VALUES (gen_random_uuid(), %s, 'tcu-trip', %s, "
                    "%s, 'rental', 'h', 'refuse', 'succeeded', to_timestamp(%s / 1000.0), "
                    "to_timestamp(%s / 1000.0 + 60), to_timestamp(%s / 1000.0), now())",
                    (v, kind, f"k-{kind}-{at}", at, at, at),
                )
        derived = Derived(
            trip_starts=[(v, t0, None, None)], trip_ends=[(v, t0 + 60_000, None, None)]
        )
        # Two speeding episodes the geofence found during the ride, one after it.
        speeding = [
            DeviceEvent(v, t0 + at, "speeding_in_zone", None, source="geofence")
            for at in (10_000, 30_000, 90_000)
        ]
        await store.write(make_batch(_ride(v, t0, range(0, 61))), speeding, derived)
        seen = []
        await store.measure_trips(lambda trip: seen.append(trip.speeding_episodes) or {})
        assert seen == [2]
        trip = (await fetch(dsn, "SELECT unlock_command, lock_command FROM trips"))[0]
        commands = await fetch(
            dsn,
            "SELECT id, type FROM commands WHERE finished_at > to_timestamp(%s / 1000.0)",
            t0 - 60_000,
        )
        ids = {c["type"]: c["id"] for c in commands}
        assert trip == {"unlock_command": ids["unlock"], "lock_command": ids["lock"]}
        ended = (await _events(dsn, "trip"))[-1][1]
        assert ended["commands"] == {"unlock": str(ids["unlock"]), "lock": str(ids["lock"])}
    finally:
        await store.close()


async def test_two_processes_applying_the_same_will_announce_it_once(dsn):
    """Every gateway process receives every status; a will without t gets each one's own
    receive time, so without a lock both saw the vehicle online and both announced offline."""
    store, v = await _store_with_vehicle(dsn)
    other = await TelemetryStore.open(dsn)
    t = now_ms()
    try:
        await store.set_presence([(v, True, t)])
        await store.write(make_batch(_ride(v, t, range(0, 1))))  # heard: later changes count
        for k in range(1, 21):
            online = k % 2 == 0
            await asyncio.gather(
                store.set_presence([(v, online, t + k * 100)]),
                other.set_presence([(v, online, t + k * 100 + 1)]),
            )
        kinds = [x for x, _ in await _events(dsn, "vehicle")]
        assert kinds == ["vehicle.offline", "vehicle.online"] * 10
    finally:
        await other.close()
        await store.close()


async def test_telemetry_racing_the_presence_expiry_never_leaves_an_offline_unanswered(dsn):
    store, v = await _store_with_vehicle(dsn)
    other = await TelemetryStore.open(dsn)
    t = now_ms() - HOUR_MS
    try:
        await store.write(make_batch(_ride(v, t, range(0, 1))))
        for k in range(1, 31):
            await asyncio.gather(
                other.expire_presence(0.0), store.write(make_batch(_ride(v, t, range(k, k + 1))))
            )
        kinds = [x for x, _ in await _events(dsn, "vehicle")]
        online = (await fetch(dsn, "SELECT online FROM vehicle_state"))[0]["online"]
        # Announced changes alternate, and the last one announced is the state stored.
        assert all(a != b for a, b in zip(kinds, kinds[1:])), kinds
        assert not kinds or kinds[-1] == ("vehicle.online" if online else "vehicle.offline")
    finally:
        await other.close()
        await store.close()


async def test_a_trip_the_measurer_fails_on_waits_and_the_others_are_measured(dsn):
    store, v = await _store_with_vehicle(dsn)
    t0 = now_ms() - HOUR_MS
    try:
        derived = Derived(
            trip_starts=[(v, t0, None, None), (v, t0 + 30_000, None, None)],
            trip_ends=[(v, t0 + 10_000, None, None), (v, t0 + 40_000, None, None)],
        )
        await store.write(make_batch(_ride(v, t0, range(0, 41))), derived=derived)

        def fails_on_the_first(trip):
            if trip.started_ms == t0:
                raise ValueError("a bug")
            return _count_samples(trip)

        done = await store.measure_trips(fails_on_the_first)
        assert [(m.announced, m.error) for m in done] == [
            (None, "ValueError: a bug"),
            ("ended", None),
        ]
        assert [r["status"] for r in await fetch(dsn, "SELECT status FROM trips ORDER BY id")] == [
            "closing",
            "ended",
        ]
        assert [m.announced for m in await store.measure_trips(_count_samples)] == ["ended"]
    finally:
        await store.close()


async def test_unlocked_samples_uploaded_late_move_the_start_back_to_the_ride_s_first(dsn):
    """A TCU uploading its buffer newest first: the gateway sees the ride unlocked before the
    samples of its first seconds arrive."""
    store, v = await _store_with_vehicle(dsn)
    t0 = now_ms() - HOUR_MS
    try:
        parked = _ride(v, t0 - 10_000, range(0, 5), locked=1)  # locked until t0 - 6 s
        await store.write(make_batch(parked))
        derived = Derived(
            trip_starts=[(v, t0 + 20_000, None, None)], trip_ends=[(v, t0 + 60_000, None, None)]
        )
        await store.write(make_batch(_ride(v, t0, range(20, 61))), derived=derived)
        assert [m.announced for m in await store.measure_trips(_count_samples)] == ["ended"]
        late = await store.write(make_batch(_ride(v, t0, range(0, 20))))  # the ride's first 20 s
        assert late.inserted == 20
        assert [m.announced for m in await store.measure_trips(_count_samples)] == ["updated"]
        trip = (await fetch(dsn, "SELECT started_at, duration_s, fixes_used FROM trips"))[0]
        assert round(trip["started_at"].timestamp() * 1000) == t0
        assert trip["fixes_used"] == 61
        updated = (await _events(dsn, "trip"))[-1][1]
        assert updated["changed"][0] == "started_at" and "fixes_used" in updated["changed"]
    finally:
        await store.close()


async def test_trips_of_several_vehicles_measured_in_one_round_keep_their_own_figures(dsn):
    """The round's trips are loaded and stored together: each trip gets its own samples and
    figures of every column kind (a real rounded as stored, a list of zones, an empty list,
    none), and a trip with no sample in its interval is measured on none."""
    store = await TelemetryStore.open(dsn)
    regs = [VehicleRegistration(f"veh-{k}", f"tcu-{k}", "ebike") for k in range(3)]
    ids = await store.register_vehicles(regs)
    vs = [ids[f"tcu-{k}"] for k in range(3)]
    t0 = now_ms() - HOUR_MS
    try:
        derived = Derived(
            trip_starts=[(v, t0, None, None) for v in vs],
            trip_ends=[(v, t0 + (k + 1) * 10_000, None, None) for k, v in enumerate(vs)],
        )
        rides = _ride(vs[0], t0, range(0, 11)) + _ride(vs[1], t0, range(0, 21))
        await store.write(make_batch(rides), derived=derived)
        zones = {vs[0]: ["z-a", "z-b"], vs[1]: [], vs[2]: None}

        def figures(trip):
            return {
                "fixes_used": len(trip.samples["time_ms"]),
                "soc_start_pct": 100 / 3,
                "zones_visited": zones[trip.vehicle],
                "parking_allowed": trip.vehicle != vs[1],
                "distance_source": "fixes",
            }

        done = await store.measure_trips(figures)
        assert sorted((m.vehicle, m.announced) for m in done) == [(v, "ended") for v in vs]
        rows = await fetch(
            dsn,
            "SELECT vehicle, status, revision, fixes_used, soc_start_pct, zones_visited, "
            "parking_allowed, distance_source, end_zone FROM trips ORDER BY vehicle",
        )
        assert [(r["status"], r["revision"]) for r in rows] == [("ended", 1)] * 3
        assert [r["fixes_used"] for r in rows] == [11, 21, 0]
        assert [r["zones_visited"] for r in rows] == [["z-a", "z-b"], [], None]
        assert [r["parking_allowed"] for r in rows] == [True, False, True]
        assert {r["soc_start_pct"] for r in rows} == {33.333332}  # 100 / 3 as a real
        assert {(r["distance_source"], r["end_zone"]) for r in rows} == {("fixes", None)}
        ended = {d["vehicle_ref"]: d for t, d in await _events(dsn, "trip") if t == "trip.ended"}
        assert ended["veh-0"]["zones_visited"] == ["z-a", "z-b"]
        assert ended["veh-1"]["parking_allowed"] is False
        assert await store.measure_trips(figures) == [], "nothing waits any more"
    finally:
        await store.close()


async def test_the_event_loop_runs_between_the_trips_of_a_round(dsn):
    """A round measures its trips one at a time with the event loop's turn in between: the
    gateway's loop also carries commands, and a round of 50 measured in one go held it for
    10-15 ms (benchmarks/README.md, commands)."""
    store = await TelemetryStore.open(dsn)
    regs = [VehicleRegistration(f"veh-{k}", f"tcu-{k}", "ebike") for k in range(4)]
    ids = await store.register_vehicles(regs)
    vs = [ids[f"tcu-{k}"] for k in range(4)]
    t0 = now_ms() - HOUR_MS
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []

    def figures(trip):
        seen.append(ticks)
        return {"fixes_used": len(trip.samples["time_ms"])}

    try:
        derived = Derived(
            trip_starts=[(v, t0, None, None) for v in vs],
            trip_ends=[(v, t0 + 10_000, None, None) for v in vs],
        )
        rides = [s for v in vs for s in _ride(v, t0, range(0, 11))]
        await store.write(make_batch(rides), derived=derived)
        ticker = asyncio.create_task(ticking())
        try:
            assert len(await store.measure_trips(figures)) == 4
        finally:
            ticker.cancel()
        assert len(seen) == 4
        assert all(b > a for a, b in zip(seen, seen[1:])), f"no turn between trips: {seen}"
    finally:
        await store.close()
