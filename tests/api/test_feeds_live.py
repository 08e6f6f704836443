"""GBFS and MDS over a live simulated fleet of e-bikes, scooters and cars running through the
real broker, gateway and database, across a ride started and ended by commands: every file and
every response is validated against the official schemas, the vehicle leaves vehicle_status for
its ride and comes back under a new id, and MDS reports the ride as a trip with its events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest

from api import feed_queries
from feeds import MdsProvider, mds_mode, public_vehicle_ids
from firmware_sim import Fleet, FleetOptions
from firmware_sim.model import PARKED
from firmware_sim.specs import Area
from firmware_sim.tcu import CommandBehaviour
from geofence import Zone
from tests.feed_schemas import assert_gbfs_valid, assert_mds_valid
from tests.feeds_setup import PROVIDER_ID, SECRET, feed_service
from tests.harness import eventually, gateway_config, register, running_gateway

pytestmark = pytest.mark.integration
MIX = {"ebike": 1 / 3, "scooter": 1 / 3, "car": 1 / 3}
FORM_FACTORS = {"ebike": "bicycle", "scooter": "scooter_standing", "car": "car"}


def box(zone_id: str, kind: str, south, west, north, east) -> dict:
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    geometry = {"type": "Polygon", "coordinates": [ring]}
    return Zone.from_row({"id": zone_id, "name": zone_id, "kind": kind, "geometry": geometry})


@contextlib.asynccontextmanager
async def live_fleet(mosquitto, pg_dsn, topic_root, api_server, vehicles: int = 6):
    area = Area()
    middle = (area.west + area.east) / 2
    await api_server.store.put_zones(
        [
            box(
                "city",
                "operating_area",
                area.south - 0.05,
                area.west - 0.05,
                area.north + 0.05,
                area.east + 0.05,
            ).to_row(),
            box(
                "west-station",
                "station",
                area.south - 0.01,
                area.west - 0.01,
                area.north + 0.01,
                middle,
            ).to_row(),
        ]  # fmt: skip
    )
    fleet = Fleet(
        FleetOptions(
            vehicles=vehicles,
            rate_hz=2.0,
            seed=21,
            mix=MIX,
            topic_root=topic_root,
            host=mosquitto.host,
            port=mosquitto.port,
            commands=CommandBehaviour(delay_ms=(20.0, 60.0), acknowledge=True),
            session_expiry_s=60,
            track_keys=False,
        )
    )
    await register(pg_dsn, fleet.registrations())
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, mqtt_session_expiry_s=60)
    async with running_gateway(cfg) as (gw, _):
        api_server.context.commands = gw.commands
        api_server.context.feeds = feed_service()
        await fleet.start()
        stop = asyncio.Event()
        driving = asyncio.create_task(fleet.run(stop))
        try:
            await eventually(
                lambda: _all_online(api_server, vehicles), timeout=20, what="the fleet online"
            )
            yield fleet
        finally:
            stop.set()
            await driving
            await fleet.stop(flush=False)


async def _all_online(api_server, n: int) -> bool:
    async with api_server.client("reader") as c:
        items = (await c.get("/v1/vehicles", params={"online": True})).json()["items"]
    return len(items) == n


async def public_ids(api_server) -> dict[str, str]:
    """vehicle_ref -> the public id the feed gives it now (what only the operator can know)."""
    fleet = await feed_queries.fleet_state(api_server.store, [])
    ids = public_vehicle_ids(SECRET, fleet.vehicle, fleet.rotation)
    async with api_server.store.pool.connection() as conn:
        refs = dict(await (await conn.execute("SELECT id, vehicle_ref FROM vehicles")).fetchall())
    return {refs[v]: i for v, i in zip(fleet.vehicle.tolist(), ids)}


def parked_until(fleet: Fleet) -> dict[str, int]:
    """vehicle_ref -> when the simulator ends its parking (simulated ms), for parked vehicles."""
    refs = [r for _, r, _ in fleet.registrations()]
    model = fleet.model
    return {
        ref: int(model.phase_end_ms[i]) for i, ref in enumerate(refs) if model.phase[i] == PARKED
    }


async def shown_ids(client) -> set[str]:
    doc = (await client.get("/gbfs/v3/test-city/vehicle_status.json")).json()
    assert_gbfs_valid("vehicle_status", doc)
    return {v["vehicle_id"] for v in doc["data"]["vehicles"]}


async def command(api_server, ref: str, kind: str) -> dict:
    headers = {"Idempotency-Key": f"feeds-{kind}-{uuid.uuid4()}"}
    async with api_server.client("rental", headers=headers) as c:
        answer = await c.post(
            f"/v1/vehicles/{ref}/commands", params={"wait": 10}, json={"type": kind}
        )
    assert answer.status_code == 200 and answer.json()["state"] == "succeeded", answer.text
    return answer.json()


async def test_every_gbfs_file_of_a_live_mixed_fleet_is_schema_valid(
    mosquitto, pg_dsn, topic_root, api_server
):
    async with live_fleet(mosquitto, pg_dsn, topic_root, api_server):
        async with api_server.client(None) as public:
            await eventually(
                lambda: _stations_have_vehicles(public), timeout=20, what="a vehicle at the station"
            )
            discovery = (await public.get("/gbfs/v3/test-city/gbfs.json")).json()
            assert_gbfs_valid("gbfs", discovery)
            names = {f["name"] for f in discovery["data"]["feeds"]}
            assert {"station_information", "station_status", "system_alerts"} <= names
            for feed in discovery["data"]["feeds"]:
                answer = await public.get(urlsplit(feed["url"]).path)
                assert answer.status_code == 200, (feed["name"], answer.text)
                assert_gbfs_valid(feed["name"], answer.json())
            assert_gbfs_valid("manifest", (await public.get("/gbfs/v3/manifest.json")).json())
            types = (await public.get("/gbfs/v3/test-city/vehicle_types.json")).json()
            published = {t["vehicle_type_id"] for t in types["data"]["vehicle_types"]}
            assert {"ebike", "scooter", "car"} <= published
            vehicles = (await public.get("/gbfs/v3/test-city/vehicle_status.json")).json()
            shown = vehicles["data"]["vehicles"]
            assert shown and {v["vehicle_type_id"] for v in shown} <= published
            assert all(v["current_range_meters"] >= 0 for v in shown)


async def _any_shown(public) -> bool:
    return bool(await shown_ids(public))


async def _stations_have_vehicles(public) -> bool:
    doc = (await public.get("/gbfs/v3/test-city/station_status.json")).json()
    assert_gbfs_valid("station_status", doc)
    return any(s["num_vehicles_available"] for s in doc["data"]["stations"])


async def test_a_ride_hides_the_vehicle_and_it_returns_under_a_new_id_and_as_an_mds_trip(
    mosquitto, pg_dsn, topic_root, api_server
):
    async with live_fleet(mosquitto, pg_dsn, topic_root, api_server) as fleet:
        async with api_server.client(None) as public:
            await eventually(
                lambda: _any_shown(public), timeout=30, what="a rentable vehicle in the feed"
            )
            ids = await public_ids(api_server)
            shown = await shown_ids(public)
            # The shown vehicle the simulator leaves parked longest: no ride of its own begins
            # while the test rides it.
            parked = parked_until(fleet)
            ref = max((r for r, i in ids.items() if i in shown and r in parked), key=parked.get)
            before = ids[ref]

            unlock = await command(api_server, ref, "unlock")

            async def gone() -> bool:
                now_shown = await shown_ids(public)
                return before not in now_shown and (await public_ids(api_server))[ref] not in (
                    now_shown
                )

            await eventually(gone, timeout=20, what="the riding vehicle out of vehicle_status")
            lock = await command(api_server, ref, "lock")

            async def back() -> bool:
                return (await public_ids(api_server))[ref] in await shown_ids(public)

            await eventually(back, timeout=20, what="the vehicle back in vehicle_status")
            after = (await public_ids(api_server))[ref]
            assert after != before and before not in await shown_ids(public)

        await check_mds(api_server, fleet, ref, unlock, lock)


async def check_mds(api_server, fleet: Fleet, ref: str, unlock: dict, lock: dict) -> None:
    """Move the feeds' clock an hour on, so the ride's hour is over, and read it back."""
    api_server.context.feeds.clock.offset = timedelta(hours=1, minutes=1)
    api_server.context.feeds.mds_page_size = 2  # several pages from six vehicles
    provider = MdsProvider(PROVIDER_ID)
    modes = {provider.device_id(r): mds_mode(FORM_FACTORS[t]) for _, r, t in fleet.registrations()}
    ended = datetime.fromisoformat(lock["finished_at"]).astimezone(UTC)
    hour = ended.strftime("%Y-%m-%dT%H")
    async with api_server.client("agency") as agency:
        vehicles = await all_pages(agency, "/mds/vehicles", {}, "vehicles", modes)
        assert len(vehicles) == len(modes)
        statuses = await all_pages(agency, "/mds/vehicles/status", {}, "vehicles_status", modes)
        assert len(statuses) == len(modes)
        device = provider.device_id(ref)
        one = await agency.get(f"/mds/vehicles/{device}")
        assert one.status_code == 200 and one.json()["vehicles"][0]["vehicle_id"] == ref
        assert_mds_valid("provider:/vehicles/{device_id}", one.json(), modes[device])
        status = await agency.get(f"/mds/vehicles/status/{device}")
        assert status.status_code == 200, status.text
        assert_mds_valid("provider:/vehicles/status/{device_id}", status.json(), modes[device])
        assert status.json()["vehicles_status"][0]["last_event"]["vehicle_state"] == "available"

        trips = await valid(agency, "/mds/trips", {"end_time": hour}, "trips", modes)
        trip = next(t for t in trips if t["trip_id"] == unlock["id"])
        assert trip["device_id"] == provider.device_id(ref)
        assert trip["duration"] >= 0 and trip["distance"] >= 0

        start_hour = datetime.fromisoformat(unlock["finished_at"]).strftime("%Y-%m-%dT%H")
        events = []
        for h in sorted({start_hour, hour}):
            events += await all_pages(
                agency, "/mds/events/historical", {"event_time": h}, "events", modes
            )
        ours = [e for e in events if e.get("trip_ids") == [unlock["id"]]]
        assert sorted(e["event_types"][0] for e in ours) == ["trip_end", "trip_start"]

        api_server.context.feeds.mds_page_size = 100  # a few pages of an hour's fixes
        telemetry = await all_pages(
            agency, "/mds/telemetry", {"telemetry_time": hour}, "telemetry", modes
        )
        assert telemetry and {t["device_id"] for t in telemetry} <= set(modes)

        end_ms = int((ended + timedelta(minutes=1)).timestamp() * 1000)
        recent = await all_pages(
            agency,
            "/mds/events/recent",
            {"start_time": end_ms - 15 * 60_000, "end_time": end_ms},
            "events",
            modes,
        )
        assert any(e.get("trip_ids") == [unlock["id"]] for e in recent)


async def valid(agency, path: str, params: dict, key: str, modes: dict) -> list[dict]:
    answer = await agency.get(path, params=params)
    assert answer.status_code == 200, answer.text
    check_by_mode(path, answer.json(), key, modes)
    return answer.json()[key]


async def all_pages(agency, path: str, params: dict, key: str, modes: dict) -> list[dict]:
    """Every page, following links.next; each page validated."""
    items, url = [], None
    for _ in range(1000):
        answer = await (agency.get(url) if url else agency.get(path, params=params))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        check_by_mode(path, body, key, modes)
        items += body[key]
        url = body.get("links", {}).get("next")
        if url is None:
            return items
    raise AssertionError(f"{path}: pages without end")


def check_by_mode(path: str, body: dict, key: str, modes: dict) -> None:
    """The response validated against provider.yaml once per mode, with that mode's items."""
    for mode in set(modes.values()):
        part = [i for i in body[key] if modes[i["device_id"]] == mode]
        assert_mds_valid(f"provider:{path.removeprefix('/mds')}", {**body, key: part}, mode)
