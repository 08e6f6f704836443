"""Trips through the real broker, gateway and database, from a ride of the simulator's e-bike:
the end-of-ride parking check in a no-parking zone, a GPS jump that adds no distance, and a late
upload of the ride's middle that measures the trip again and announces trip.updated."""

from __future__ import annotations

import time

import numpy as np
import orjson
import psycopg
import pytest
from psycopg.rows import dict_row

from firmware_sim.model import EBIKE, TRIP, FleetModel
from firmware_sim.payloads import sample_row
from gateway.trips import TripMeasurer
from geofence import Zone, ZoneSet
from telemetry.store import TripToMeasure
from tests.harness import eventually, gateway_config, register, running_gateway
from tests.mqtt_devices import device
from tests.zones import put_zones

pytestmark = pytest.mark.integration

STEP_S = 5.0


def simulated_ride(seed: int, start_ms: int) -> tuple[list[dict], float]:
    """One e-bike's samples every 5 s from just before a ride to just after it (the simulator
    unlocks it when the ride starts and locks it at the end), and the ride's true distance."""
    model = FleetModel([EBIKE], seed=seed, start_ms=start_ms, gps_noise_m=3.0, no_fix_share=0.0)
    rows: list[dict] = []
    odometer_at_start = None
    for _ in range(20_000):
        samples = model.step(STEP_S)
        row = sample_row(samples, 0)
        riding = model.phase[0] == TRIP
        if riding and odometer_at_start is None:
            odometer_at_start = float(model.odometer[0])
            rows = rows[-3:]  # a little of the parking before it
        rows.append(row)
        if odometer_at_start is not None and not riding:
            for _ in range(3):
                rows.append(sample_row(model.step(STEP_S), 0))
            return rows, float(model.odometer[0]) - odometer_at_start
    raise AssertionError("the simulated e-bike never rode")


async def trip_row(dsn: str) -> dict | None:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        return await (await conn.execute("SELECT * FROM trips")).fetchone()


async def trip_events(dsn: str) -> list[tuple[str, dict]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT type, detail FROM events WHERE source = 'trip' ORDER BY id"
        )
        return await cur.fetchall()


async def test_a_simulated_ride_is_measured_checked_for_parking_and_measured_again_late(
    mosquitto, pg_dsn, topic_root
):
    rows, true_distance = simulated_ride(seed=7, start_ms=int(time.time() * 1000) - 6 * 3600_000)
    assert rows[-1]["t"] < time.time() * 1000, "the ride is over before the test starts"
    for row in rows:
        row.pop("odometer_m")  # a vehicle without an odometer: the distance comes from fixes
    unlocked = [i for i, r in enumerate(rows) if not r["locked"]]
    start_i, end_i = unlocked[0], unlocked[-1] + 1  # the first unlocked, the first locked again
    # A GPS jump of 5 km in the ride (kept; the plausibility filter flags it).
    jump = start_i + (end_i - start_i) // 4
    rows[jump] = {**rows[jump], "lat": rows[jump]["lat"] + 0.045}
    # The middle of the ride is uploaded an hour late (a TCU that lost its connection).
    middle = set(range(start_i + (end_i - start_i) // 3, start_i + 2 * (end_i - start_i) // 3))
    end = rows[end_i]
    no_parking = Zone.from_row(
        {
            "id": "no-park",
            "kind": "no_parking",
            "geometry": {
                "type": "Circle",
                "coordinates": [end["lon"], end["lat"]],
                "radius_m": 200,
            },
            "rules": [
                {
                    "ride_start_allowed": False,
                    "ride_end_allowed": False,
                    "ride_through_allowed": True,
                }
            ],
        }
    )
    await put_zones(pg_dsn, [no_parking.to_row()])
    ids = await register(pg_dsn, [("ebike-0007", "veh-0007", "ebike")])
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, _):
        tcu = await device(mosquitto, "ebike-0007")
        topic = f"{topic_root}/ebike-0007/telemetry"
        first = [r for i, r in enumerate(rows) if i not in middle]
        await tcu.publish(topic, orjson.dumps(first), qos=1)

        async def ended() -> bool:
            return [t for t, _ in await trip_events(pg_dsn)] == ["trip.started", "trip.ended"]

        await eventually(ended, timeout=30, what="trip.started and trip.ended")
        trip = await trip_row(pg_dsn)
        assert trip["vehicle"] == ids["ebike-0007"] and trip["revision"] == 1
        assert trip["started_at"].timestamp() * 1000 == rows[start_i]["t"]
        assert trip["ended_at"].timestamp() * 1000 == end["t"]
        assert trip["parking_allowed"] is False and trip["end_zone"] == "no-park"
        assert "no-park" in trip["zones_visited"]
        assert trip["fixes_rejected"] >= 1, "the jump is left out"
        assert trip["distance_source"] == "fixes"
        # Across the missing middle only the straight line is known: at most the truth.
        assert trip["distance_m"] <= true_distance * 1.03
        ended_detail = (await trip_events(pg_dsn))[1][1]
        assert ended_detail["parking_allowed"] is False
        assert ended_detail["flags"]["parked_where_not_allowed"] is True
        assert ended_detail["distance_m"] == pytest.approx(trip["distance_m"])
        assert ended_detail["duration_s"] == (end["t"] - rows[start_i]["t"]) / 1000

        late = [r for i, r in enumerate(rows) if i in middle]
        await tcu.publish(topic, orjson.dumps(late), qos=1)

        async def updated() -> bool:
            return [t for t, _ in await trip_events(pg_dsn)][-1:] == ["trip.updated"]

        await eventually(updated, timeout=30, what="trip.updated after the late upload")
        again = await trip_row(pg_dsn)
        assert again["revision"] == 2 and again["fixes_used"] > trip["fixes_used"]
        # With every fix, the GPS distance agrees with the simulator's own (noise of 3 m a fix
        # adds a little; the jump adds nothing).
        assert again["distance_m"] == pytest.approx(true_distance, rel=0.08)
        assert again["distance_m"] > trip["distance_m"]
        # The simulator reports pack voltage and current: energy from the pack's power.
        assert again["energy_source"] == "pack_power" and again["energy_wh"] > 0
        update = (await trip_events(pg_dsn))[-1][1]
        assert update["revision"] == 2 and "distance_m" in update["changed"]
        assert update["trip_id"] == again["id"] and update["parking_allowed"] is False
        # The same upload again changes nothing and announces nothing.
        await tcu.publish(topic, orjson.dumps(late), qos=1)
        await gw.pipeline.flush()
        await gw.trip_measurer.measure_waiting()
        assert len(await trip_events(pg_dsn)) == 3
        assert np.isclose((await trip_row(pg_dsn))["distance_m"], again["distance_m"])
        await tcu.disconnect()


def _zone(zone_id: str, kind: str, lat: float, lon: float, radius_m: float, **rule) -> Zone:
    rules = [{"ride_start_allowed": True, "ride_end_allowed": True, "ride_through_allowed": True}]
    rules[0].update(rule)
    return Zone.from_row(
        {
            "id": zone_id,
            "kind": kind,
            "geometry": {"type": "Circle", "coordinates": [lon, lat], "radius_m": radius_m},
            "rules": rules,
        }
    )


def test_the_measurer_flags_an_end_outside_the_operating_area_and_counts_speeding():
    """The trip measurer's zone figures, from a ZoneSet as the geofence stage holds it."""

    n = 60
    lat = 52.5 + np.arange(n) * 20 / 111_195.0  # 1,180 m north
    zones = ZoneSet(
        [
            _zone("city", "operating_area", 52.5, 13.4, 800),
            _zone("slow", "slow", 52.5 + 300 / 111_195.0, 13.4, 50, maximum_speed_kph=10),
        ],
        global_rules=[
            {"ride_start_allowed": True, "ride_end_allowed": True, "ride_through_allowed": True}
        ],
    )
    samples = {
        "time_ms": np.arange(n, dtype=np.int64) * 5000,
        "lat": lat,
        "lon": np.full(n, 13.4),
        "speed_kmh": np.full(n, 14.0),
        "soc_pct": np.full(n, np.nan),
        "pack_v": np.full(n, np.nan),
        "pack_a": np.full(n, np.nan),
        "odometer_m": np.full(n, np.nan),
        "flags": np.zeros(n, dtype=np.int16),
    }
    trip = TripToMeasure(1, 1, "veh-1", "ebike", 0, (n - 1) * 5000, samples, speeding_episodes=2)
    measurer = TripMeasurer(None, zones=lambda: zones, max_speed_kmh=lambda _: 80.0)
    figures = measurer.measure(trip)
    assert figures["zones_visited"] == ["city", "slow"]
    assert figures["ended_outside_operating_area"] is True
    assert figures["end_zone"] is None and figures["parking_allowed"] is True  # global rules
    assert figures["speeding_episodes"] == 2
    assert figures["distance_m"] == pytest.approx(1180, rel=0.01)
    inside = TripToMeasure(1, 1, "veh-1", "ebike", 0, 20 * 5000, _first(samples, 21), 0)
    assert measurer.measure(inside)["ended_outside_operating_area"] is False
    unmeasured = TripMeasurer(None, zones=lambda: None, max_speed_kmh=lambda _: 80.0).measure(trip)
    assert "parking_allowed" not in unmeasured, "no zone set: no zone figures"


def _first(samples: dict, k: int) -> dict:
    return {name: column[:k] for name, column in samples.items()}
