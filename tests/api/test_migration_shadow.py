"""POST /v1/migration/shadow/{source}: Traccar's JSON position forwarding taken as legacy
observations, stored apart from positions; bad input a 4xx problem that stores nothing."""

from __future__ import annotations

import pytest

from tests.api_client import assert_problem
from tests.harness import count_positions, register
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration


def forward(unique_id: str = "tcu-osm-1", **position) -> dict:
    """A body as Traccar's forward.type=json sends it (fields it sends beside, shortened)."""
    pos = {
        "id": 4711,
        "deviceId": 12,
        "protocol": "osmand",
        "serverTime": "2026-12-06T10:00:01.000+00:00",
        "deviceTime": "2026-12-06T10:00:00.000+00:00",
        "fixTime": "2026-12-06T10:00:00.000+00:00",
        "outdated": False,
        "valid": True,
        "latitude": 52.52,
        "longitude": 13.405,
        "altitude": 34.0,
        "speed": 10.0,
        "course": 90.0,
        "address": None,
        "accuracy": 5.0,
        "network": None,
        "attributes": {"batteryLevel": 77, "motion": True},
    }
    pos.update(position)
    device = {
        "id": 12,
        "name": "Bike 1",
        "uniqueId": unique_id,
        "status": "online",
        "lastUpdate": "2026-12-06T10:00:01.000+00:00",
        "positionId": 4711,
        "attributes": {},
    }
    return {"position": pos, "device": device}


async def test_a_forwarded_position_is_stored_apart_once(api_server, pg_dsn):
    await register(pg_dsn, [("tcu-osm-1", "veh-osm-1", "ebike")])
    async with api_server.client("legacy") as c:
        first = await c.post("/v1/migration/shadow/traccar-eu", json=forward())
        again = await c.post("/v1/migration/shadow/traccar-eu", json=forward())
        unknown = await c.post("/v1/migration/shadow/traccar-eu", json=forward("not-ours"))
    assert first.status_code == 202 and first.json() == {"stored": True, "vehicle_matched": True}
    assert again.json() == {"stored": False, "vehicle_matched": False}
    assert unknown.json() == {"stored": True, "vehicle_matched": False}
    rows = await fetch(
        pg_dsn,
        "SELECT o.source, o.legacy_device, v.vehicle_ref, o.lat, o.lon, o.speed_kmh,"
        " o.heading_deg, o.altitude_m, o.accuracy_m, o.valid, o.attributes,"
        " (extract(epoch FROM o.time) * 1000)::bigint AS t"
        " FROM legacy_observations o LEFT JOIN vehicles v ON v.id = o.vehicle ORDER BY o.id",
    )
    assert rows[0] == {
        "source": "traccar-eu",
        "legacy_device": "tcu-osm-1",
        "vehicle_ref": "veh-osm-1",
        "lat": 52.52,
        "lon": 13.405,
        "speed_kmh": pytest.approx(18.52),
        "heading_deg": 90.0,
        "altitude_m": 34.0,
        "accuracy_m": 5.0,
        "valid": True,
        "attributes": {"batteryLevel": 77, "motion": True},
        "t": 1_796_551_200_000,
    }
    assert [r["vehicle_ref"] for r in rows] == ["veh-osm-1", None]
    assert await count_positions(pg_dsn) == 0  # never mixed into fleetgate's own


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"position": forward()["position"]}, "device"),
        (forward(latitude=91.0), "latitude"),
        (forward(fixTime="2026-12-06T10:00:00"), "fixTime"),
        (forward(fixTime="yesterday"), "fixTime"),
        (forward(speed=-1), "speed"),
        (forward(course=400), "course"),
        (forward("has a space"), "uniqueId"),
        (forward(attributes=[1, 2]), "attributes"),
        ([1, 2, 3], "body"),
    ],
)
async def test_bad_input_is_a_422_problem_and_stores_nothing(api_server, pg_dsn, body, word):
    async with api_server.client("legacy") as c:
        response = await c.post("/v1/migration/shadow/traccar", json=body)
    problem = assert_problem(response, 422)
    assert any(word in ".".join(map(str, e["loc"])) for e in problem["errors"]), problem
    assert await fetch(pg_dsn, "SELECT 1 FROM legacy_observations") == []


async def test_the_scope_and_the_source_name_are_checked(api_server):
    async with api_server.client("reader") as c:
        no_scope = await c.post("/v1/migration/shadow/traccar", json=forward())
    async with api_server.client("legacy") as c:
        bad_source = await c.post("/v1/migration/shadow/Traccar%20EU", json=forward())
        not_json = await c.post(
            "/v1/migration/shadow/traccar",
            content=b"lat=52.5",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert_problem(no_scope, 403, "migration:write")
    assert_problem(bad_source, 422)
    assert not_json.status_code in (415, 422), not_json.text
