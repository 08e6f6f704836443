"""The public GBFS routes and the MDS Provider routes at their edges: not configured, unknown
systems and files, bad hours and ranges, unknown providers, versions, keys, the cache and the
rate limit. (tests/api/test_feeds_live.py runs them over a live simulated fleet.)"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn

from api import ApiContext, KeyCache, LiveHub, create_app
from api.feed_service import FeedCache, RateLimiter
from feeds import MDS_MEDIA_TYPE, MdsProvider, mds_mode
from fleetgate.embedded import free_port
from telemetry.store import TelemetryStore
from tests.api_client import LAT0, LON0, assert_problem, fleet
from tests.batches import make_batch
from tests.feed_schemas import assert_gbfs_valid, assert_mds_valid
from tests.feeds_setup import PROVIDER_ID, feed_service, feed_system
from tests.harness import eventually
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.integration


def hour_of(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H")


def assert_mds_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == MDS_MEDIA_TYPE
    body = response.json()
    assert body["error"] == error and body["error_description"] and body["error_details"]
    return body


async def test_an_unconfigured_system_is_a_404_problem_everywhere(api_server):
    async with api_server.client(None) as public, api_server.client("agency") as agency:
        assert_problem(await public.get("/gbfs/v3/manifest.json"), 404, "FLEETGATE_FEEDS")
        assert_problem(await public.get("/gbfs/v3/city/gbfs.json"), 404, "no GBFS system")
        assert_problem(await agency.get("/mds/vehicles"), 404, "MDS provider")


async def test_unknown_systems_and_files_and_unpublished_files_are_404(api_server):
    api_server.context.feeds = feed_service()
    async with api_server.client(None) as public:
        assert_problem(await public.get("/gbfs/v3/other-city/gbfs.json"), 404, "other-city")
        assert_problem(await public.get("/gbfs/v3/test-city/free_bike_status.json"), 404)
        # No station zones: no station files, and the discovery file does not list them.
        assert_problem(await public.get("/gbfs/v3/test-city/station_status.json"), 404)
        discovery = (await public.get("/gbfs/v3/test-city/gbfs.json")).json()
        assert_gbfs_valid("gbfs", discovery)
        assert not [f for f in discovery["data"]["feeds"] if f["name"].startswith("station")]
        assert_problem(await public.get("/gbfs/v3/test-city/../x.json"), 404)


async def test_files_are_served_from_the_cache_within_their_ttl(api_server):
    await fleet(api_server.store, 6)
    service = feed_service(feed_system(ttl_s=60), cache=FeedCache())
    api_server.context.feeds = service
    async with api_server.client(None) as public:
        first = await public.get("/gbfs/v3/test-city/vehicle_status.json")
        second = await public.get("/gbfs/v3/test-city/vehicle_status.json")
    assert first.status_code == 200 and first.content == second.content
    assert first.headers["cache-control"] == "public, max-age=60"
    assert service.cache.builds == 1
    assert_gbfs_valid("vehicle_status", first.json())
    # 6 vehicles: 0 e-bike, 1 car, ..., 3 low battery (listed, disabled), 5 unlocked (on trip).
    shown = first.json()["data"]["vehicles"]
    assert len(shown) == 5 and sum(v["is_disabled"] for v in shown) == 1


async def test_a_client_over_the_rate_limit_gets_429_with_retry_after(api_server):
    api_server.context.feeds = feed_service(limiter=RateLimiter(0.5, 2))
    async with api_server.client(None) as public:
        answers = [await public.get("/gbfs/v3/test-city/gbfs.json") for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert_problem(answers[2], 429, "too many")
    assert int(answers[2].headers["retry-after"]) >= 1


async def test_mds_needs_a_key_with_its_scope(api_server):
    api_server.context.feeds = feed_service()
    async with api_server.client(None) as anonymous, api_server.client("reader") as reader:
        assert_problem(await anonymous.get("/mds/vehicles"), 401)
        assert_problem(await reader.get("/mds/vehicles"), 403, "mds:read")
    async with api_server.client("agency") as agency:
        answer = await agency.get("/mds/vehicles")
    assert answer.status_code == 200 and answer.headers["content-type"] == MDS_MEDIA_TYPE


async def test_mds_refuses_bad_hours_spans_providers_and_versions_in_mds_errors(api_server):
    service = feed_service()
    api_server.context.feeds = service
    now = service.clock()
    async with api_server.client("agency") as agency:
        for bad in ("2026-13-01T00", "2026-12-06", "yesterday", "2026-12-06T24"):
            answer = await agency.get("/mds/trips", params={"end_time": bad})
            assert_mds_error(answer, 400, "bad_param")
        assert_mds_error(await agency.get("/mds/trips"), 400, "bad_param")
        assert_mds_error(await agency.get("/mds/telemetry"), 400, "bad_param")
        future = hour_of(now + timedelta(hours=2))
        assert_mds_error(
            await agency.get("/mds/events/historical", params={"event_time": future}),
            404,
            "not_found",
        )
        running = await agency.get("/mds/trips", params={"end_time": hour_of(now)})
        assert running.status_code == 202 and running.json()["trips"] == []
        end = int(now.timestamp() * 1000)
        too_old = end - int(timedelta(days=15).total_seconds() * 1000)
        span = await agency.get(
            "/mds/events/recent", params={"start_time": too_old, "end_time": end}
        )
        assert "two weeks" in assert_mds_error(span, 400, "bad_param")["error_description"]
        missing = await agency.get("/mds/events/recent", params={"start_time": end})
        assert assert_mds_error(missing, 400, "missing_param")["error_details"] == ["end_time"]
        backwards = await agency.get(
            "/mds/events/recent", params={"start_time": end, "end_time": end - 1}
        )
        assert_mds_error(backwards, 400, "bad_param")
        other = await agency.get(
            "/mds/vehicles", params={"provider_id": "00000000-0000-4000-8000-000000000000"}
        )
        assert_mds_error(other, 404, "unknown_provider")
        ours = await agency.get("/mds/vehicles", params={"provider_id": PROVIDER_ID})
        assert ours.status_code == 200
        old_version = await agency.get(
            "/mds/vehicles", headers={"Accept": "application/vnd.mds+json;version=1.2"}
        )
        assert_mds_error(old_version, 406, "unsupported_version")
        assert_mds_error(await agency.get("/mds/vehicles/not-a-uuid"), 400, "bad_param")
        unknown = "00000000-0000-4000-8000-000000000000"
        assert_mds_error(await agency.get(f"/mds/vehicles/{unknown}"), 404, "not_found")
        assert_mds_error(await agency.get(f"/mds/vehicles/status/{unknown}"), 404, "not_found")
        bad_cursor = await agency.get(
            "/mds/telemetry", params={"telemetry_time": hour_of(now), "cursor": "x"}
        )
        assert_mds_error(bad_cursor, 400, "bad_param")


async def test_during_a_database_outage_a_built_file_is_served_as_it_was_else_503(pg_dsn):
    """The database behind a proxy that is cut: vehicle_status, built before, is served as it
    was (its last_updated unchanged); a file never built is a 503 problem; after the outage the
    files are fresh again."""
    proxy = await TcpProxy.start_for(pg_dsn)
    store = await TelemetryStore.open(proxy.dsn(pg_dsn), timeout_s=1.0)
    await fleet(store, 4)
    service = feed_service(feed_system(ttl_s=0))
    ctx = ApiContext(store=store, live=LiveHub(store), key_cache=KeyCache(0), feeds=service)
    try:
        async with served(create_app(ctx)) as url, httpx.AsyncClient(base_url=url) as public:
            before = await public.get("/gbfs/v3/test-city/vehicle_status.json")
            assert before.status_code == 200
            await proxy.cut()
            during = await public.get("/gbfs/v3/test-city/vehicle_status.json")
            assert during.status_code == 200 and during.content == before.content
            assert service.cache.stale_served == 1
            assert_problem(
                await public.get("/gbfs/v3/test-city/station_status.json"), 503, "database"
            )
            await proxy.restore()
            service.cache.retry_s = 0.0

            async def fresh() -> bool:
                answer = await public.get("/gbfs/v3/test-city/vehicle_status.json")
                return answer.status_code == 200 and answer.content != before.content

            await eventually(fresh, timeout=20, what="a fresh vehicle_status after the outage")
    finally:
        await store.close()
        await proxy.close()


@contextlib.asynccontextmanager
async def served(app):
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_config=None, lifespan="off", access_log=False
        )
    )
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, timeout=10, what="the API serving")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _ride_commands(
    store: TelemetryStore, vehicle: int, unlock_at: datetime, lock_at: datetime
):
    """A succeeded unlock and lock of the vehicle; returns the unlock's id."""
    ids = []
    async with store.pool.connection() as conn:
        for kind, at in (("unlock", unlock_at), ("lock", lock_at)):
            cur = await conn.execute(
                "INSERT INTO commands (id, vehicle, device_id, type, idempotency_key, "
                "requested_by, request_hash, on_unsafe, state, created_at, deadline, "
                "finished_at, updated_at) VALUES (gen_random_uuid(), %s, 'tcu', %s, %s, "
                "'rental', 'h', 'refuse', 'succeeded', %s, %s, %s, now()) RETURNING id::text",
                (vehicle, kind, f"k-{vehicle}-{kind}", at, at + timedelta(minutes=1), at),
            )
            ids.append((await cur.fetchone())[0])
    return ids[0]


async def _measured_trip(store, vehicle, start, end, unlock_id, distance_m) -> None:
    async with store.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO trips (vehicle, status, revision, started_at, ended_at, start_lat, "
            "start_lon, end_lat, end_lon, distance_m, distance_source, duration_s, "
            "unlock_command, measured_at) VALUES (%s, 'ended', 1, %s, %s, 52.5, 13.4, 52.51, "
            "13.41, %s, 'fixes', %s, %s, now())",
            (vehicle, start, end, distance_m, (end - start).total_seconds(), unlock_id),
        )


async def test_mds_trips_are_the_measured_trips_and_command_rides_only_where_none_is(api_server):
    """Where the trip entity has a ride, MDS reports its stored figures (what billing was told)
    under the unlock's id, once; an unlock→lock ride with no trip is still reported, measured
    from its fixes; a trip no command began gets a UUID that stays the same."""
    api_server.context.feeds = feed_service()
    ids = await fleet(api_server.store, 3)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    start, end = hour + timedelta(minutes=5), hour + timedelta(minutes=20)

    # veh-000: commands and the trip they made (the vehicle reported itself unlocked a second
    # after the unlock), measured at 1,234.4 m.
    unlock_0 = await _ride_commands(api_server.store, ids["veh-000"], start, end)
    await _measured_trip(
        api_server.store, ids["veh-000"], start + timedelta(seconds=1), end, unlock_0, 1234.4
    )
    # veh-001: commands with two fixes 111 m apart during the ride ...
    unlock_1 = await _ride_commands(api_server.store, ids["veh-001"], start, end)
    fixes = [(start + timedelta(minutes=1), LAT0), (start + timedelta(minutes=2), LAT0 + 0.001)]
    await api_server.store.write(
        make_batch(
            [
                {"vehicle": ids["veh-001"], "t": int(t.timestamp() * 1000), "lat": lat, "lon": LON0}
                for t, lat in fixes
            ]
        ),
        [],
    )
    # ... and the trip they made, closed but not measured yet: it names no unlock so far.
    async with api_server.store.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO trips (vehicle, status, started_at, ended_at) "
            "VALUES (%s, 'closing', %s, %s)",
            (ids["veh-001"], start + timedelta(seconds=1), end),
        )
    # veh-002: a trip and no command (a rider's key fob).
    await _measured_trip(api_server.store, ids["veh-002"], start, end, None, 500.0)

    provider = MdsProvider(PROVIDER_ID)
    modes = {
        provider.device_id(ref): mds_mode("bicycle" if int(ref[-3:]) % 2 == 0 else "car")
        for ref in ids
    }
    async with api_server.client("agency") as agency:
        answers = [await agency.get("/mds/trips", params={"end_time": hour_of(hour)}) for _ in "12"]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        for mode in set(modes.values()):
            part = [t for t in answer.json()["trips"] if modes[t["device_id"]] == mode]
            assert_mds_valid("provider:/trips", {**answer.json(), "trips": part}, mode)
    trips = {t["device_id"]: t for t in answers[0].json()["trips"]}
    assert len(answers[0].json()["trips"]) == 3  # veh-000's ride once, not once per source

    measured = trips[provider.device_id("veh-000")]
    assert measured["trip_id"] == unlock_0 and measured["distance"] == 1234
    assert measured["start_location"] == {"lat": 52.5, "lng": 13.4}
    assert measured["duration"] == 899

    from_commands = trips[provider.device_id("veh-001")]
    # The unmeasured trip is named by its unlock and measured from its fixes meanwhile.
    assert from_commands["trip_id"] == unlock_1 and 105 <= from_commands["distance"] <= 117

    fob = trips[provider.device_id("veh-002")]
    assert str(uuid.UUID(fob["trip_id"])) == fob["trip_id"] and fob["distance"] == 500
    again = {t["device_id"]: t for t in answers[1].json()["trips"]}
    assert again[provider.device_id("veh-002")]["trip_id"] == fob["trip_id"]
