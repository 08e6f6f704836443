"""Vehicle types over HTTP: the registry listed and extended, devices registered against it (an
unknown type is a 422 naming the known ones and registers nothing), vehicles filtered by type."""

from __future__ import annotations

import pytest

from tests.api_client import assert_problem
from tests.batches import make_batch, now_ms

pytestmark = pytest.mark.integration

TRIKE = {
    "id": "trike",
    "name": "Cargo trike",
    "form_factor": "other",
    "propulsion_type": "electric_assist",
    "max_speed_kmh": 25.0,
    "max_range_meters": None,
    "battery_nominal_ah": 20.0,
    "battery_nominal_v": 48.0,
    "low_soc_pct": 25.0,
    "battery_swappable": True,
}


async def test_the_builtin_types_are_listed_with_their_gbfs_form_factors(api_server):
    async with api_server.client("reader") as c:
        listed = (await c.get("/v1/vehicle-types")).json()
    by_id = {t["id"]: t for t in listed}
    assert list(by_id) == ["car", "cargo_ebike", "ebike", "moped", "scooter"]
    assert {i: (t["form_factor"], t["propulsion_type"]) for i, t in by_id.items()} == {
        "car": ("car", "electric"),
        "cargo_ebike": ("cargo_bicycle", "electric_assist"),
        "ebike": ("bicycle", "electric_assist"),
        "moped": ("moped", "electric"),
        "scooter": ("scooter_standing", "electric"),
    }


async def test_a_type_is_added_and_changed_with_put_and_vehicles_of_it_can_register(api_server):
    async with api_server.client("provisioning") as c:
        added = await c.put("/v1/vehicle-types/trike", json=TRIKE)
        assert added.status_code == 200, added.text
        assert added.json() == TRIKE
        changed = await c.put("/v1/vehicle-types/trike", json={**TRIKE, "low_soc_pct": 30})
        assert changed.json()["low_soc_pct"] == 30
        registered = await c.post(
            "/v1/devices",
            json={"vehicle_ref": "veh-trike", "device_id": "tcu-trike", "vehicle_type": "trike"},
        )
        assert registered.status_code == 201, registered.text
    assert (await api_server.store.vehicle_types())["trike"].low_soc_pct == 30


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (
            "/v1/vehicle-types/hb",
            {**TRIKE, "id": "hb", "form_factor": "hoverboard"},
            ["form_factor"],
        ),
        ("/v1/vehicle-types/hb", {**TRIKE, "id": "hb", "propulsion_type": "steam"}, []),
        ("/v1/vehicle-types/hb", {**TRIKE, "id": "hb", "battery_nominal_v": None}, ["both"]),
        ("/v1/vehicle-types/hb", {**TRIKE, "id": "hb", "low_soc_pct": 120}, ["low_soc_pct"]),
        ("/v1/vehicle-types/hb", {**TRIKE, "id": "hb", "colour": "red"}, ["colour"]),
        ("/v1/vehicle-types/hb", {**TRIKE}, ["'trike' is not the path's 'hb'"]),
        ("/v1/vehicle-types/h%20b", {**TRIKE, "id": "h b"}, ["id"]),
    ],
)
async def test_a_bad_type_is_a_422_and_changes_nothing(api_server, path, body, words):
    async with api_server.client("provisioning") as c:
        assert_problem(await c.put(path, json=body), 422, *words)
    assert set(await api_server.store.vehicle_types()) == {
        "car",
        "cargo_ebike",
        "ebike",
        "moped",
        "scooter",
    }


async def test_listing_needs_fleet_read_and_changing_needs_devices_write(api_server):
    async with api_server.client("provisioning") as c:
        assert_problem(await c.get("/v1/vehicle-types"), 403)
    async with api_server.client("reader") as c:
        assert_problem(await c.put("/v1/vehicle-types/trike", json=TRIKE), 403)


async def test_registering_an_unknown_type_is_a_422_listing_the_known_ones(api_server):
    async with api_server.client("provisioning") as c:
        response = await c.post(
            "/v1/devices",
            json={"vehicle_ref": "veh-hb", "device_id": "tcu-hb", "vehicle_type": "hoverboard"},
        )
    body = assert_problem(
        response, 422, "unknown vehicle type 'hoverboard'", "car, cargo_ebike, ebike, moped"
    )
    assert body["type"] == "/problems/unknown-vehicle-type"
    assert body["known_vehicle_types"] == ["car", "cargo_ebike", "ebike", "moped", "scooter"]
    assert body["errors"][0]["loc"] == ["body", "vehicle_type"]
    assert await api_server.store.load_registry() == {}


async def test_scooters_and_mopeds_are_listed_and_filtered_by_type(api_server):
    store = api_server.store
    async with api_server.client("provisioning") as c:
        for ref, device, kind in [
            ("veh-sc", "tcu-sc", "scooter"),
            ("veh-mo", "tcu-mo", "moped"),
            ("veh-eb", "tcu-eb", "ebike"),
        ]:
            response = await c.post(
                "/v1/devices",
                json={"vehicle_ref": ref, "device_id": device, "vehicle_type": kind},
            )
            assert response.status_code == 201, response.text
    registry = await store.load_registry()
    t = now_ms() - 60_000
    await store.write(
        make_batch(
            [
                {"vehicle": d.vehicle, "t": t, "lat": 52.5, "lon": 13.4, "soc_pct": 18.0}
                for d in registry.values()
            ]
        ),
        [],
    )
    async with api_server.client("reader") as c:
        scooters = (await c.get("/v1/vehicles", params={"type": "scooter"})).json()
        assert [v["vehicle_ref"] for v in scooters["items"]] == ["veh-sc"]
        assert scooters["items"][0]["vehicle_type"] == "scooter"
        everyone = (await c.get("/v1/vehicles")).json()["items"]
        assert sorted(v["vehicle_type"] for v in everyone) == ["ebike", "moped", "scooter"]
        assert_problem(await c.get("/v1/vehicles", params={"type": "no such"}), 422, "type")
