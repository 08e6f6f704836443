"""The HTTP API over real HTTP against a served app and the real database: every route, every
scope refusal, pagination, bad input answered with a 4xx problem that changes nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from commands import CommandState
from geofence import Zone
from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP, DeviceEvent
from tests.api_client import LAT0, LON0, assert_problem, events_settled, fleet
from tests.batches import make_batch, now_ms

pytestmark = pytest.mark.integration


def square(x0, y0, x1, y1) -> dict:
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


# --- health and keys --------------------------------------------------------------------------


async def test_health_answers_without_a_key_and_nothing_else_does(api_server):
    """Nothing else but the GBFS feeds, public by the standard (tests/api/test_feed_routes.py)."""
    async with api_server.client(key=None) as c:
        assert (await c.get("/healthz")).json() == {"status": "ok", "checks": {}}
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}
        spec = (await c.get("/openapi.json")).json()
        data_paths = [
            p
            for p in spec["paths"]
            if p not in ("/healthz", "/readyz") and not p.startswith("/gbfs/")
        ]
        assert data_paths
        for path in data_paths:
            for method in spec["paths"][path]:
                url = path.replace("{vehicle_ref}", "veh-000").replace("{zone_id}", "z")
                response = await c.request(method.upper(), url, json={})
                body = assert_problem(response, 401)
                assert response.headers["www-authenticate"] == "Bearer", (method, path)
                assert body["type"] == "/problems/missing-api-key"


async def test_bad_revoked_and_malformed_keys_are_refused(api_server):
    async with api_server.client(key=None, headers={"Authorization": "Bearer nonsense"}) as c:
        assert_problem(await c.get("/v1/vehicles"), 401, "malformed")
    forged = api_server.keys["reader"][:-4] + "AAAA"
    async with api_server.client(key=None, headers={"X-API-Key": forged}) as c:
        assert_problem(await c.get("/v1/vehicles"), 401, "unknown or revoked")
    assert await api_server.store.revoke_api_key("reader")
    async with api_server.client("reader") as c:
        assert_problem(await c.get("/v1/vehicles"), 401, "unknown or revoked")


@pytest.mark.parametrize(
    "key,method,path",
    [
        ("reader", "PUT", "/v1/zones/z1"),
        ("reader", "DELETE", "/v1/zones/z1"),
        ("provisioning", "GET", "/v1/vehicles"),
        ("provisioning", "GET", "/v1/stream"),
        ("provisioning", "GET", "/v1/events"),
        ("rental", "PUT", "/v1/zones/z1"),
    ],
)
async def test_a_key_without_the_scope_is_refused_and_changes_nothing(
    api_server, key, method, path
):
    async with api_server.client(key) as c:
        body = assert_problem(
            await c.request(method, path, json={"geometry": square(0, 0, 1, 1)}),
            403,
            "lacks the scope",
        )
        assert body["type"] == "/problems/missing-scope"
    assert (await api_server.store.load_zones()).rows == []


# --- vehicles ----------------------------------------------------------------------------------


async def test_vehicles_list_filters_and_pages(api_server):
    await fleet(api_server.store)
    async with api_server.client("reader") as c:
        seen, url = [], "/v1/vehicles?limit=10"
        while url:
            page = (await c.get(url)).json()
            seen += [v["vehicle_ref"] for v in page["items"]]
            url = page["next"]
        assert seen == [f"veh-{i:03d}" for i in range(25)]
        cars = (await c.get("/v1/vehicles", params={"type": "car", "limit": 100})).json()["items"]
        assert {v["vehicle_type"] for v in cars} == {"car"} and len(cars) == 12
        statuses = {
            v["vehicle_ref"]: v["status"]
            for v in (await c.get("/v1/vehicles?limit=100")).json()["items"]
        }
        assert statuses["veh-003"] == "low_battery" and statuses["veh-005"] == "on_trip"
        assert statuses["veh-007"] == "immobilised" and statuses["veh-000"] == "available"
        low = (await c.get("/v1/vehicles", params={"status": "low_battery"})).json()["items"]
        assert [v["vehicle_ref"] for v in low] == ["veh-003"]
        box = f"{LON0 - 0.0005},{LAT0 - 0.0005},{LON0 + 0.0025},{LAT0 + 0.0025}"
        inside = (await c.get("/v1/vehicles", params={"bbox": box})).json()["items"]
        assert [v["vehicle_ref"] for v in inside] == ["veh-000", "veh-001", "veh-002"]
        one = (await c.get("/v1/vehicles/veh-003")).json()
        assert one["soc_pct"] == 10.0 and one["online"] is True and one["zones"] == []


@pytest.mark.parametrize(
    "query,status,words",
    [
        ("bbox=1,2,3", 400, ["min_lon,min_lat"]),
        ("bbox=10,50,5,55", 400, ["min_lon <= max_lon"]),
        ("limit=0", 422, ["limit"]),
        ("limit=5000", 422, ["limit"]),
        ("status=parked", 422, ["status"]),
        ("online=maybe", 422, ["online"]),
    ],
)
async def test_bad_vehicle_queries_get_a_reason(api_server, query, status, words):
    async with api_server.client("reader") as c:
        assert_problem(await c.get(f"/v1/vehicles?{query}"), status, *words)


async def test_unknown_vehicles_are_404(api_server):
    async with api_server.client("reader") as c:
        body = assert_problem(await c.get("/v1/vehicles/nope"), 404, "nope")
        assert body["type"] == "/problems/unknown-vehicle"
        assert_problem(await c.get("/v1/vehicles/nope/track"), 404)


async def test_track_raw_and_downsampled(api_server):
    ids = await fleet(api_server.store, 1)
    vehicle = ids["veh-000"]
    t0 = (now_ms() // 60_000) * 60_000 - 20 * 60_000  # on a minute boundary, 20 min ago
    rows = [
        {
            "vehicle": vehicle,
            "t": t0 + k * 10_000,
            "lat": LAT0 + k * 1e-4,
            "lon": LON0,
            "speed_kmh": 10.0 + k % 2,
        }
        for k in range(60)
    ]
    await api_server.store.write(make_batch(rows), [])
    start = datetime.fromtimestamp(t0 / 1000, UTC)
    params = {"from": start.isoformat(), "to": (start + timedelta(minutes=10)).isoformat()}
    async with api_server.client("reader") as c:
        raw = (await c.get("/v1/vehicles/veh-000/track", params={**params, "bucket": "raw"})).json()
        assert len(raw["points"]) == 60 and raw["truncated"] is False
        per_min = await c.get("/v1/vehicles/veh-000/track", params={**params, "bucket": "1m"})
        track = per_min.json()
        assert [p["samples"] for p in track["points"]] == [6] * 10
        # A bucket's point is its last plausible fix.
        assert track["points"][0]["lat"] == pytest.approx(LAT0 + 5e-4)
        assert track["points"][0]["speed_kmh"] == pytest.approx(10.5)
        capped = (
            await c.get(
                "/v1/vehicles/veh-000/track", params={**params, "bucket": "raw", "max_points": 7}
            )
        ).json()
        assert len(capped["points"]) == 7 and capped["truncated"] is True


async def test_fixes_flagged_as_implausible_jumps_can_be_seen_in_the_track(api_server):
    ids = await fleet(api_server.store, 1)
    t0 = (now_ms() // 60_000) * 60_000 - 20 * 60_000
    rows = [
        {
            "vehicle": ids["veh-000"],
            "t": t0 + k * 10_000,
            "lat": LAT0 + k * 1e-4,
            "lon": LON0,
            "flags": FLAG_IMPLAUSIBLE_JUMP if k == 2 else 0,
        }
        for k in range(6)
    ]
    rows[2]["lat"] = LAT0 + 1.0  # 111 km away, 10 s later: what the plausibility filter flags
    await api_server.store.write(make_batch(rows), [])
    start = datetime.fromtimestamp(t0 / 1000, UTC)
    params = {"from": start.isoformat(), "to": (start + timedelta(minutes=1)).isoformat()}
    url = "/v1/vehicles/veh-000/track"
    async with api_server.client("reader") as c:
        raw = (await c.get(url, params={**params, "bucket": "raw"})).json()["points"]
        assert len(raw) == 5 and not any(p["implausible"] for p in raw), "left out by default"
        every = (
            await c.get(url, params={**params, "bucket": "raw", "include_implausible": True})
        ).json()["points"]
        assert [p["implausible"] for p in every] == [0, 0, 1, 0, 0, 0]
        assert every[2]["lat"] == pytest.approx(LAT0 + 1.0)
        per_min = (await c.get(url, params={**params, "bucket": "1m"})).json()["points"]
        assert [(p["samples"], p["implausible"]) for p in per_min] == [(6, 1)]
        assert per_min[0]["lat"] == pytest.approx(LAT0 + 5e-4), "placed on a plausible fix"


@pytest.mark.parametrize(
    "params,status,words",
    [
        ({"from": "2026-11-23T10:00:00Z", "to": "2026-11-23T09:00:00Z"}, 400, ["must be before"]),
        ({"from": "2026-11-23T10:00:00"}, 400, ["time zone"]),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-11-23T00:00:00Z"}, 400, ["at most"]),
        ({"from": "yesterday"}, 422, ["from"]),
        ({"bucket": "2m"}, 422, ["bucket"]),
    ],
)
async def test_malformed_time_ranges_get_a_reason(api_server, params, status, words):
    await fleet(api_server.store, 1)
    async with api_server.client("reader") as c:
        assert_problem(await c.get("/v1/vehicles/veh-000/track", params=params), status, *words)


# --- events ------------------------------------------------------------------------------------


async def test_events_query_filters_and_pages(api_server):
    ids = await fleet(api_server.store, 2)
    t = now_ms() - 30_000
    events = [DeviceEvent(ids["veh-000"], t + k, "tamper", {"k": k}) for k in range(7)]
    events.append(DeviceEvent(ids["veh-001"], t, "crash", None))
    await api_server.store.write(make_batch([]), events)
    await events_settled(api_server.store)
    async with api_server.client("reader") as c:
        first = (await c.get("/v1/events", params={"vehicle": "veh-000", "limit": 5})).json()
        assert [e["detail"]["k"] for e in first["items"]] == [0, 1, 2, 3, 4]
        rest = (await c.get(first["next"])).json()
        assert [e["detail"]["k"] for e in rest["items"]] == [5, 6] and rest["next"] is None
        crashes = (await c.get("/v1/events", params={"type": "crash"})).json()["items"]
        assert [(e["vehicle_ref"], e["source"]) for e in crashes] == [("veh-001", "device")]
        assert_problem(await c.get("/v1/events", params={"vehicle": "ghost"}), 404)
        assert_problem(await c.get("/v1/events", params={"source": "moon"}), 422, "source")


async def test_command_state_changes_are_events_paged_in_order_with_the_others(api_server):
    """Commands written by the command store, as the dispatcher writes them."""
    from commands import Command, CommandType, machine
    from commands._time import utc_now
    from gateway.commands import CommandStore

    ids = await fleet(api_server.store, 2)
    commands = CommandStore(api_server.store.pool)

    async def unlock(vehicle: str, key: str) -> Command:
        now = utc_now()
        cmd = Command(
            id=uuid.uuid4(),
            vehicle_id=ids[vehicle],
            vehicle_ref=vehicle,
            device_id="tcu-" + vehicle[4:],
            type=CommandType.UNLOCK,
            params={},
            idempotency_key=key,
            requested_by="rental",
            request_hash="h",
            on_unsafe="wait",
            created_at=now,
            deadline=now + timedelta(seconds=60),
            updated_at=now,
        )
        await commands.apply([(cmd, [machine.created(cmd)])], [])
        return cmd

    t = now_ms() - 30_000
    await api_server.store.write(make_batch([]), [DeviceEvent(ids["veh-000"], t, "tamper", None)])
    cmd = await unlock("veh-000", "k1")
    sent = machine.transition(cmd, CommandState.SENT, utc_now())
    await commands.apply([], [sent])
    await api_server.store.write(make_batch([]), [DeviceEvent(ids["veh-001"], t, "crash", None)])
    await commands.apply(
        [], [machine.transition(sent[0], CommandState.SUCCEEDED, utc_now(), reason="ok")]
    )
    await unlock("veh-001", "k2")
    await events_settled(api_server.store)

    async with api_server.client("reader") as c:
        seen, url = [], "/v1/events?limit=2"
        while url:  # pages of two, in the order things happened
            page = (await c.get(url)).json()
            seen += page["items"]
            url = page["next"]
        assert [(e["vehicle_ref"], e["source"], e["type"]) for e in seen] == [
            ("veh-000", "device", "tamper"),
            ("veh-000", "command", "command_queued"),
            ("veh-000", "command", "command_sent"),
            ("veh-001", "device", "crash"),
            ("veh-000", "command", "command_succeeded"),
            ("veh-001", "command", "command_queued"),
        ]
        assert [e["id"] for e in seen] == sorted({e["id"] for e in seen})
        assert seen[4]["detail"] == {
            "command_id": str(cmd.id),
            "command_type": "unlock",
            "requested_by": "rental",
            "from_state": "sent",
            "to_state": "succeeded",
            "reason": "ok",
        }
        only = (
            await c.get("/v1/events", params={"source": "command", "vehicle": "veh-000"})
        ).json()["items"]
        assert [e["type"] for e in only] == ["command_queued", "command_sent", "command_succeeded"]
        done_ = (await c.get("/v1/events", params={"type": "command_succeeded"})).json()
        assert [e["detail"]["command_id"] for e in done_["items"]] == [str(cmd.id)]
        after = (await c.get("/v1/events", params={"after": seen[2]["id"]})).json()["items"]
        assert after == seen[3:]
        devices = (await c.get("/v1/events", params={"source": "device"})).json()["items"]
        assert [e["type"] for e in devices] == ["tamper", "crash"]


# --- commands (the API alone: bad requests are refused before any command exists) ---------------


async def test_bad_command_parameters_are_a_422_listing_every_reason_with_its_place(api_server):
    await fleet(api_server.store, 1)
    async with api_server.client("rental", headers={"Idempotency-Key": "k-params"}) as c:
        body = assert_problem(
            await c.post(
                "/v1/vehicles/veh-000/commands",
                json={"type": "set_speed_limit", "params": {"kph": 1, "beep": True}},
            ),
            422,
            "kph",
        )
        assert [(e["loc"], e["type"]) for e in body["errors"]] == [
            (["body", "params", "kph"], "greater_than_equal"),
            (["body", "params", "beep"], "extra_forbidden"),
        ]
        body = assert_problem(
            await c.post("/v1/vehicles/veh-000/commands", json={"type": "set_config"}),
            422,
            "at least one setting",
        )
        assert [e["loc"] for e in body["errors"]] == [["body", "params"]]
    async with api_server.client("reader") as c:
        assert (await c.get("/v1/commands")).json()["items"] == []


# --- zones -------------------------------------------------------------------------------------


async def test_zones_crud_validated_by_the_geofence_core(api_server):
    rule = {
        "ride_start_allowed": True,
        "ride_end_allowed": False,
        "ride_through_allowed": True,
        "maximum_speed_kph": 15,
    }
    zone = {
        "name": "Alexanderplatz",
        "kind": "slow",
        "geometry": square(13.40, 52.52, 13.41, 52.53),
        "rules": [rule],
        "priority": 2,
    }
    async with api_server.client("ops") as c:
        put = await c.put("/v1/zones/alex", json=zone)
        assert put.status_code == 200 and put.json()["id"] == "alex"
        listed = (await c.get("/v1/zones")).json()
        assert [z["id"] for z in listed["items"]] == ["alex"] and listed["version"] >= 2
        assert (await c.get("/v1/zones/alex")).json()["rules"] == [rule]
        gbfs = (await c.get("/v1/gbfs/geofencing_zones.json")).json()
        assert gbfs["version"] == "3.0"
        assert len(gbfs["data"]["geofencing_zones"]["features"]) == 1
        assert Zone.from_row({**(await c.get("/v1/zones/alex")).json()}).kind == "slow"
        assert (await c.delete("/v1/zones/alex")).status_code == 204
        assert_problem(await c.get("/v1/zones/alex"), 404)
        assert_problem(await c.delete("/v1/zones/alex"), 404)


@pytest.mark.parametrize(
    "zone,status,words",
    [
        (
            {
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]],
                }
            },
            422,
            ["Self-intersection"],
        ),
        (
            {"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}},
            422,
            ["zone"],
        ),
        (
            {"geometry": {"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": -5}},
            422,
            ["radius"],
        ),
        ({"geometry": square(0, 0, 1, 1), "kind": "parking-lot"}, 422, ["kind"]),
        ({"geometry": square(0, 0, 1, 1), "rules": [{"ride_start_allowed": "yes"}]}, 422, ["zone"]),
        ({"name": "no geometry"}, 422, ["geometry"]),
    ],
)
async def test_bad_geojson_is_refused_with_the_reason_and_changes_nothing(
    api_server, zone, status, words
):
    async with api_server.client("ops") as c:
        before = (await c.get("/v1/zones")).json()
        assert_problem(await c.put("/v1/zones/bad", json=zone), status, *words)
        assert (await c.get("/v1/zones")).json() == before
        assert_problem(
            await c.put("/v1/zones/bad id!", json={"geometry": square(0, 0, 1, 1)}), 422, "zone_id"
        )


# --- the live stream -----------------------------------------------------------------------------


async def read_sse(response, until, timeout: float = 10.0) -> list[tuple[str, object]]:
    """SSE messages as (event, parsed data) until until(messages) is true."""
    messages: list[tuple[str, object]] = []
    buffer = b""

    async def pump():
        nonlocal buffer
        async for chunk in response.aiter_bytes():
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                lines = dict(
                    line.split(b": ", 1)
                    for line in block.split(b"\n")
                    if line and not line.startswith(b":")
                )
                if b"event" in lines:
                    messages.append((lines[b"event"].decode(), orjson.loads(lines[b"data"])))
            if until(messages):
                return

    await asyncio.wait_for(pump(), timeout)
    return messages


async def test_the_stream_sends_new_positions_and_events_within_its_filter(api_server):
    ids = await fleet(api_server.store, 3)
    box = f"{LON0 - 0.0005},{LAT0 - 0.0005},{LON0 + 0.0015},{LAT0 + 0.0015}"  # veh-000, veh-001
    async with api_server.client("reader") as c:
        async with c.stream("GET", "/v1/stream", params={"bbox": box}) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            await asyncio.sleep(0.3)  # the hub starts from "now"
            t = now_ms()
            moved = [
                {
                    "vehicle": ids[f"veh-00{i}"],
                    "t": t + i,
                    "lat": LAT0 + i * 0.001,
                    "lon": LON0 + i * 0.001,
                    "soc_pct": 50.0,
                }
                for i in range(3)
            ]
            await api_server.store.write(
                make_batch(moved),
                [
                    DeviceEvent(ids["veh-001"], t, "tamper", None),
                    DeviceEvent(ids["veh-002"], t, "tamper", None),
                ],
            )
            api_server.context.live.notify(set(ids.values()))
            msgs = await read_sse(response, lambda m: any(e == "event" for e, _ in m))
    refs = {v["vehicle_ref"] for e, data in msgs if e == "positions" for v in data}
    assert refs == {"veh-000", "veh-001"}, "veh-002 is outside the box"
    events = [data for e, data in msgs if e == "event"]
    assert [(ev["vehicle_ref"], ev["type"]) for ev in events] == [("veh-001", "tamper")]
    # The newest position (a change committed just before subscribing may come first).
    position = [v for e, d in msgs if e == "positions" for v in d if v["vehicle_ref"] == "veh-000"][
        -1
    ]
    assert position["soc_pct"] == 50.0 and position["status"] == "available"


async def test_an_event_detail_beyond_64_bit_integers_does_not_stop_the_stream(api_server):
    """jsonb gives 1e20, stored before the decoder refused such details, back as 10**20, which
    orjson cannot write: the stream once failed at that row at every poll."""
    ids = await fleet(api_server.store, 1)
    async with api_server.client("reader") as c:
        async with c.stream("GET", "/v1/stream") as response:
            await asyncio.sleep(0.3)
            t = now_ms()
            async with api_server.store.transaction() as cur:
                await cur.execute(
                    "INSERT INTO events (time, vehicle, source, type, detail) VALUES "
                    "(to_timestamp(%s / 1000.0), %s, 'device', 'crash', '{\"g\": 1e20}')",
                    (t, ids["veh-000"]),
                )
            await api_server.store.write(
                make_batch([]), [DeviceEvent(ids["veh-000"], t + 1, "tamper", None)]
            )
            api_server.context.live.notify(set(ids.values()))
            msgs = await read_sse(response, lambda m: sum(e == "event" for e, _ in m) == 2)
    events = [data for e, data in msgs if e == "event"]
    assert [ev["type"] for ev in events] == ["crash", "tamper"]
    assert events[0]["detail"] == {"g": 10**20}


async def test_the_openapi_spec_describes_problems_and_scopes(api_server):
    async with api_server.client(key=None) as c:
        spec = (await c.get("/openapi.json")).json()
    vehicles = spec["paths"]["/v1/vehicles"]["get"]
    assert "application/problem+json" in vehicles["responses"]["403"]["content"]
    assert spec["components"]["securitySchemes"]
    json.dumps(spec)  # plain JSON all the way


# --- devices and the broker hooks ----------------------------------------------------------------


async def test_devices_are_registered_with_a_secret_shown_once_and_rotated(api_server):
    device = {"vehicle_ref": "bike-9", "device_id": "lock-9", "vehicle_type": "ebike"}
    async with api_server.client("provisioning") as c:
        created = await c.post("/v1/devices", json=device)
        assert created.status_code == 201
        secret = created.json()["credentials"]["secret"]
        again = (await c.post("/v1/devices", json=device)).json()
        assert again["credentials"] is None, "registering again issues no second secret"
        listed = (await c.get("/v1/devices")).json()
        assert [(d["device_id"], d["valid_credentials"]) for d in listed] == [("lock-9", 1)]
        assert secret not in str(listed)
        rotated = (await c.post("/v1/devices/lock-9/credentials", params={"grace_s": 0})).json()
        assert rotated["secret"] != secret
        assert_problem(await c.post("/v1/devices/ghost/credentials"), 404)
        taken = {**device, "vehicle_ref": "bike-10"}
        assert_problem(await c.post("/v1/devices", json=taken), 409, "lock-9")
        assert_problem(await c.post("/v1/devices", json={**device, "device_id": "a/b"}), 422)
        assert_problem(await c.post("/v1/devices", json={**device, "vehicle_type": "bus"}), 422)
    async with api_server.client("emqx") as c:
        ok = await c.post(
            "/broker/authenticate",
            json={"username": "lock-9", "clientid": "lock-9", "password": rotated["secret"]},
        )
        assert ok.json() == {"result": "allow", "is_superuser": False}
        old = await c.post(
            "/broker/authenticate",
            json={"username": "lock-9", "clientid": "lock-9", "password": secret},
        )
        assert old.json()["result"] == "deny", "rotated with no grace: the old secret is gone"
        own = await c.post(
            "/broker/authorize",
            json={"username": "lock-9", "action": "publish", "topic": "fg/v1/lock-9/telemetry"},
        )
        other = await c.post(
            "/broker/authorize",
            json={"username": "lock-9", "action": "publish", "topic": "fg/v1/lock-8/telemetry"},
        )
        assert (own.json()["result"], other.json()["result"]) == ("allow", "deny")
    async with api_server.client("reader") as c:
        assert_problem(
            await c.post("/broker/authorize", json={"action": "publish", "topic": "x"}), 403
        )
        assert_problem(await c.post("/v1/devices", json=device), 403)
