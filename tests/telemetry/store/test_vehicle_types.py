"""The vehicle type registry in the store (migration 0014): seeded with the built-in types,
extended by operators, the only vehicle types a vehicle may be registered with; and a database
that had only e-bikes and cars keeps them when it is migrated."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from telemetry.store import TelemetryStore, UnknownVehicleType, VehicleRegistration, migrate
from telemetry.store._migrate import load_migrations
from telemetry.vehicle_types import BUILTIN_BY_ID, BUILTIN_VEHICLE_TYPES, VehicleType
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration

TRIKE = VehicleType(
    "trike",
    "Cargo trike",
    "other",
    "electric_assist",
    max_speed_kmh=25.0,
    battery_nominal_ah=20.0,
    battery_nominal_v=48.0,
    low_soc_pct=25.0,
    battery_swappable=True,
)


@pytest.fixture
async def store(pg_dsn):
    async with await TelemetryStore.open(pg_dsn) as s:
        yield s


async def test_a_new_database_holds_exactly_the_builtin_types(store):
    stored = await store.vehicle_types()
    assert list(stored) == sorted(t.id for t in BUILTIN_VEHICLE_TYPES)
    for t in BUILTIN_VEHICLE_TYPES:
        got = stored[t.id]
        # The SQL seed computes Ah as Wh / V: equal to the Python value up to rounding.
        assert dataclasses.replace(got, battery_nominal_ah=t.battery_nominal_ah) == t
        assert got.battery_nominal_ah == pytest.approx(t.battery_nominal_ah, rel=1e-12)


async def test_scooters_and_mopeds_register_and_an_added_type_does_too(store):
    ids = await store.register_vehicles(
        [
            VehicleRegistration("sc-1", "tcu-sc-1", "scooter"),
            VehicleRegistration("mo-1", "tcu-mo-1", "moped"),
            VehicleRegistration("cb-1", "tcu-cb-1", "cargo_ebike"),
        ]
    )
    assert len(ids) == 3
    await store.upsert_vehicle_types([TRIKE])
    assert (await store.vehicle_types())["trike"] == TRIKE
    await store.register_vehicles([VehicleRegistration("tr-1", "tcu-tr-1", "trike")])
    registry = await store.load_registry()
    assert {d.vehicle_ref: d.vehicle_type for d in registry.values()} == {
        "sc-1": "scooter",
        "mo-1": "moped",
        "cb-1": "cargo_ebike",
        "tr-1": "trike",
    }


async def test_upserting_a_type_again_changes_it_in_place(store):
    await store.upsert_vehicle_types([TRIKE])
    slower = dataclasses.replace(TRIKE, max_speed_kmh=20.0, low_soc_pct=30.0)
    await store.upsert_vehicle_types([slower])
    assert (await store.vehicle_types())["trike"] == slower


async def test_an_unknown_type_registers_nothing_and_names_the_known_ones(store):
    with pytest.raises(UnknownVehicleType) as exc:
        await store.register_vehicles(
            [
                VehicleRegistration("ok-1", "tcu-ok-1", "scooter"),
                VehicleRegistration("hb-1", "tcu-hb-1", "hoverboard"),
            ]
        )
    assert exc.value.unknown == ["hoverboard"]
    assert exc.value.known == ["car", "cargo_ebike", "ebike", "moped", "scooter"]
    assert "known types are car, cargo_ebike, ebike, moped, scooter" in str(exc.value)
    assert await store.load_registry() == {}


async def test_the_database_refuses_what_the_model_refuses(pg_dsn):
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(
                "INSERT INTO vehicle_types (id, name, form_factor, propulsion_type) "
                "VALUES ('hb', 'Hoverboard', 'hoverboard', 'electric')"
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            await conn.execute(
                "INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type) "
                "VALUES ('v', 'd', 'hoverboard')"
            )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # a type in use stays
            await conn.execute(
                "INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type) "
                "VALUES ('v', 'd', 'moped')"
            )
            await conn.execute("DELETE FROM vehicle_types WHERE id = 'moped'")


async def test_low_battery_status_follows_each_types_level(store, pg_dsn):
    await store.upsert_vehicle_types([TRIKE])  # low below 25 %
    ids = await store.register_vehicles(
        [
            VehicleRegistration("eb", "tcu-eb", "ebike"),  # 20 %
            VehicleRegistration("ca", "tcu-ca", "car"),  # 15 %
            VehicleRegistration("tr", "tcu-tr", "trike"),  # 25 %
        ]
    )
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        for vehicle in ids.values():
            await conn.execute(
                "INSERT INTO vehicle_state (vehicle, time, soc_pct, locked, online) "
                "VALUES (%s, now(), 18, true, true)",
                (vehicle,),
            )
    rows = await fetch(pg_dsn, "SELECT vehicle_ref, status FROM vehicle_overview ORDER BY 1")
    assert {r["vehicle_ref"]: r["status"] for r in rows} == {
        "ca": "available",
        "eb": "low_battery",
        "tr": "low_battery",
    }


async def test_a_database_of_ebikes_and_cars_keeps_them_through_the_migration(
    empty_pg_dsn, monkeypatch
):
    """A database at version 13 (vehicle_type CHECK in ('ebike', 'car')) with vehicles and their
    state is migrated: the vehicles keep their ids and types, their status is unchanged, and
    scooters can be registered next to them."""
    import telemetry.store._migrate as migrations

    before = [m for m in load_migrations() if m.version < 14]  # the database before 0014
    assert before[-1].version == 13
    monkeypatch.setattr(migrations, "load_migrations", lambda: before)
    await migrate(empty_pg_dsn, storage="native")
    async with await psycopg.AsyncConnection.connect(empty_pg_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):  # what 0001 allowed
            await conn.execute(
                "INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type) "
                "VALUES ('sc', 'tcu-sc', 'scooter')"
            )
        await conn.execute(
            "INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type) VALUES "
            "('eb-1', 'tcu-eb-1', 'ebike'), ('ca-1', 'tcu-ca-1', 'car'), "
            "('eb-2', 'tcu-eb-2', 'ebike')"
        )
        await conn.execute(
            "INSERT INTO vehicle_state (vehicle, time, soc_pct, locked, online) "
            "SELECT id, now(), 17, true, true FROM vehicles"
        )
    query = (
        "SELECT v.id, v.vehicle_ref, v.device_id, v.vehicle_type, o.status "
        "FROM vehicles v JOIN vehicle_overview o ON o.vehicle = v.id ORDER BY v.id"
    )
    old = await fetch(empty_pg_dsn, query)
    monkeypatch.undo()

    report = await migrate(empty_pg_dsn, storage="native")
    assert report.applied[0] == 14  # and every later migration
    assert await fetch(empty_pg_dsn, query) == old
    assert [r["status"] for r in old] == ["low_battery", "available", "low_battery"]
    async with await TelemetryStore.open(empty_pg_dsn) as store:
        await store.register_vehicles([VehicleRegistration("sc", "tcu-sc", "scooter")])
        registry = await store.load_registry()
        assert registry["tcu-sc"].vehicle_type == "scooter"
        assert registry["tcu-ca-1"].vehicle_type == "car"
        assert set(await store.vehicle_types()) == set(BUILTIN_BY_ID)
