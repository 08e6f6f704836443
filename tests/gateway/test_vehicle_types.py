"""Vehicle types beyond e-bikes and cars through the running gateway: a scooter and moped fleet
is stored and its batteries are estimated with each type's pack, geofence rules for
`vehicle_type_ids: ["scooter"]` apply to scooters only, and a type added while the gateway runs
is taken up without a restart."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest

from firmware_sim import MOPED, SCOOTER, FleetModel
from firmware_sim.payloads import JSON, encode_batch, encode_samples
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.store import TelemetryStore
from telemetry.vehicle_types import VehicleType
from tests.harness import eventually, gateway_config, metric, register, running_gateway
from tests.mqtt_devices import publish
from tests.zones import drive, geofence_events_of, put_zones, square

pytestmark = pytest.mark.integration

FLEET = [
    ("sc-1", "veh-sc-1", "scooter", SCOOTER),
    ("mo-2", "veh-mo-2", "moped", MOPED),
    ("sc-3", "veh-sc-3", "scooter", SCOOTER),
    ("mo-4", "veh-mo-4", "moped", MOPED),
]
SCOOTER_SLOW_ZONE = square(
    "promenade",
    100,
    300,
    kind="slow",
    rules=[
        {
            "vehicle_type_ids": ["scooter"],
            "ride_start_allowed": True,
            "ride_end_allowed": True,
            "ride_through_allowed": True,
            "maximum_speed_kph": 10,
        },
        {"ride_start_allowed": True, "ride_end_allowed": True, "ride_through_allowed": True},
    ],
)


async def query(dsn: str, sql: str, *args):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await (await conn.execute(sql, args)).fetchall()


def simulated_hours(kinds, hours: float, step_s: float = 10.0) -> list[list[bytes]]:
    """Per step, one JSON sample payload per vehicle of a seeded fleet, ending now."""
    steps = int(hours * 3600 / step_s)
    end_ms = int(time.time() * 1000)
    model = FleetModel(np.array(kinds, dtype=np.int8), seed=11, start_ms=end_ms - steps * 10_000)
    encodings = np.full(len(kinds), JSON)
    return [encode_samples(model.step(step_s), encodings) for _ in range(steps)]


async def upload(broker, root: str, device_ids: list[str], steps, reg, chunk: int = 60) -> None:
    """Each device uploads `chunk` steps as one batch; each chunk is committed before the next."""
    devices = []
    for device_id in device_ids:
        dev = MqttClient(ConnectOptions(broker.host, broker.port, device_id))
        await dev.connect()
        devices.append(dev)
    before = metric(reg, "fleetgate_samples_stored_total")
    for k in range(0, len(steps), chunk):
        part = steps[k : k + chunk]
        for i, (device_id, dev) in enumerate(zip(device_ids, devices)):
            payload = encode_batch([step[i] for step in part], JSON)
            await dev.publish(f"{root}/{device_id}/telemetry", payload, qos=1)
        expected = before + (k + len(part)) * len(device_ids)
        await eventually(
            lambda n=expected: metric(reg, "fleetgate_samples_stored_total") >= n,
            timeout=30,
            what=f"{expected} samples stored",
        )
    for dev in devices:
        await dev.disconnect()


async def test_a_scooter_and_moped_fleet_is_stored_and_its_batteries_estimated(
    mosquitto, pg_dsn, topic_root
):
    ids = await register(pg_dsn, [(d, r, t) for d, r, t, _ in FLEET])
    steps = simulated_hours([k for *_, k in FLEET], hours=4)
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        # The gateway knows each vehicle's pack from the registry (0.55 kWh scooter, 2 kWh moped).
        packs = gw.battery.core.types
        assert packs["scooter"].nominal_kwh == pytest.approx(0.5508)
        assert packs["moped"].nominal_kwh == pytest.approx(2.0)
        await upload(mosquitto, topic_root, [d for d, *_ in FLEET], steps, reg)
        total = len(steps) * len(FLEET)
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == total)
    stored = await query(pg_dsn, "SELECT vehicle, count(*) FROM positions GROUP BY vehicle")
    assert dict(stored) == {v: len(steps) for v in ids.values()}
    # Equivalent full cycles and capacity need the type's nominal pack: a vehicle of a type the
    # core does not know gets neither. Every scooter and moped has them.
    health = await query(
        pg_dsn,
        "SELECT v.vehicle_type, h.vehicle, bool_or(h.efc IS NOT NULL), count(*) "
        "FROM battery_health h JOIN vehicles v ON v.id = h.vehicle "
        "GROUP BY 1, 2 ORDER BY 2",
    )
    assert [(t, v) for t, v, *_ in health] == [(t, ids[d]) for d, _, t, _ in FLEET]
    assert all(has_efc and rows >= 4 * 4 for *_, has_efc, rows in health)
    state = await query(
        pg_dsn, "SELECT vehicle, soc_pct, battery_state IS NOT NULL FROM vehicle_state"
    )
    assert len(state) == len(FLEET) and all(soc is not None and kept for _, soc, kept in state)
    overview = await query(pg_dsn, "SELECT vehicle_type, status FROM vehicle_overview")
    assert sorted(t for t, _ in overview) == ["moped", "moped", "scooter", "scooter"]


async def test_a_zone_rule_for_scooters_applies_to_scooters_only(mosquitto, pg_dsn, topic_root):
    ids = await register(
        pg_dsn,
        [
            ("sc-geo", "veh-sc-geo", "scooter"),
            ("mo-geo", "veh-mo-geo", "moped"),
            ("eb-geo", "veh-eb-geo", "ebike"),
        ],
    )
    await put_zones(pg_dsn, [SCOOTER_SLOW_ZONE])
    t0 = int(time.time() * 1000) - 600_000
    caps = []
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        gw.geofence.on_speed_caps = caps.extend
        for device in ("sc-geo", "mo-geo", "eb-geo"):
            await publish(mosquitto, topic_root, device, drive(t0, 0, 400, speed_kmh=18.0))
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 3 * 81)
        await eventually(
            lambda: _entered_and_left(pg_dsn, ids.values()), what="every vehicle through"
        )
    scooter = [t for _, t in await geofence_events_of(pg_dsn, ids["sc-geo"])]
    moped = [t for _, t in await geofence_events_of(pg_dsn, ids["mo-geo"])]
    ebike = [t for _, t in await geofence_events_of(pg_dsn, ids["eb-geo"])]
    # 18 km/h where scooters may do 10: one speeding episode for the scooter, none for others.
    assert scooter.count("speeding_in_zone") == 1
    assert "speeding_in_zone" not in moped and "speeding_in_zone" not in ebike
    assert moped.count("zone_enter") == ebike.count("zone_enter") == 1
    # Only the scooter's speed was capped (and the cap lifted on leaving).
    assert [(c.vehicle, c.max_speed_kph) for c in caps] == [
        (ids["sc-geo"], 10),
        (ids["sc-geo"], None),
    ]


async def _entered_and_left(dsn: str, vehicles) -> bool:
    for v in vehicles:
        types = [t for _, t in await geofence_events_of(dsn, v)]
        if "zone_exit" not in types:
            return False
    return True


async def test_a_type_added_while_the_gateway_runs_gets_its_pack_and_its_zone_rules(
    mosquitto, pg_dsn, topic_root
):
    trike = VehicleType(
        "trike",
        "Cargo trike",
        "other",
        "electric_assist",
        max_speed_kmh=25.0,
        battery_nominal_ah=20.0,
        battery_nominal_v=48.0,
    )
    rule = {**SCOOTER_SLOW_ZONE, "id": "trike-zone"}
    rule["rules"] = [{**SCOOTER_SLOW_ZONE["rules"][0], "vehicle_type_ids": ["trike"]}]
    await put_zones(pg_dsn, [rule])
    t0 = int(time.time() * 1000) - 600_000
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        assert "trike" not in gw.battery.core.types
        async with await TelemetryStore.open(pg_dsn) as store:
            await store.upsert_vehicle_types([trike])
        ids = await register(pg_dsn, [("tr-1", "veh-tr-1", "trike")])
        await publish(mosquitto, topic_root, "tr-1", drive(t0, 0, 400, speed_kmh=18.0))
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 81)
        await eventually(lambda: _entered_and_left(pg_dsn, ids.values()), what="the trike through")
        # Met as a new device, its type came with it: the pack is known to the battery core.
        assert gw.battery.core.types["trike"].nominal_kwh == pytest.approx(0.96)
    events = [t for _, t in await geofence_events_of(pg_dsn, ids["tr-1"])]
    assert events.count("speeding_in_zone") == 1


async def test_each_types_plausibility_limit_follows_its_form_factor_unless_overridden(pg_dsn):
    """A fix 2 km from the previous one a minute later (120 km/h) is a GPS jump for a scooter
    (80 km/h, a two-wheeler's limit) but not for a moped (150) or a car (300); an operator's
    limit for a type overrides its own."""
    from gateway.pipeline import DeviceRegistry
    from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP
    from telemetry.plausibility import PlausibilityFilter
    from tests.batches import make_batch
    from tests.zones import at

    ids = await register(
        pg_dsn,
        [
            ("sc-p", "veh-sc-p", "scooter"),
            ("mo-p", "veh-mo-p", "moped"),
            ("ca-p", "veh-ca-p", "car"),
        ],
    )
    t0 = int(time.time() * 1000) - 600_000
    (lat0, lon0), (lat1, lon1) = at(0), at(2000)

    async def jumps(overrides) -> dict[str, bool]:
        plausibility = PlausibilityFilter()
        async with await TelemetryStore.open(pg_dsn) as store:
            await DeviceRegistry(store, plausibility, overrides).refresh()
        rows = []
        for v in ids.values():
            rows += [
                {"vehicle": v, "t": t0, "lat": lat0, "lon": lon0},
                {"vehicle": v, "t": t0 + 60_000, "lat": lat1, "lon": lon1},
            ]
        batch = make_batch(rows)
        plausibility.apply(batch)
        flagged = (batch.flags & FLAG_IMPLAUSIBLE_JUMP) != 0
        return {d: bool(flagged[(batch.vehicle == v)].any()) for d, v in ids.items()}

    assert await jumps({}) == {"sc-p": True, "mo-p": False, "ca-p": False}
    assert await jumps({"scooter": 130.0, "moped": 100.0}) == {
        "sc-p": False,
        "mo-p": True,
        "ca-p": False,
    }
