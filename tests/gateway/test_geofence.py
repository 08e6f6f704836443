"""The geofence core inside the running gateway: events stored with their batch, state kept in
vehicle_state across restarts, zone edits taking effect without a restart."""

from __future__ import annotations

import asyncio
import time

import orjson
import psycopg
import pytest

from gateway.mqtt import ConnectOptions, MqttClient
from geofence import ZoneSet
from tests.cli_runner import run_fleetgate
from tests.harness import eventually, gateway_config, metric, register, running_gateway
from tests.mqtt_devices import publish
from tests.zones import drive, gbfs_doc, geofence_events, put_zones, square, zones_in_state

pytestmark = pytest.mark.integration


async def test_driving_through_a_zone_stores_one_enter_and_one_exit(mosquitto, pg_dsn, topic_root):
    ids = await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    await put_zones(
        pg_dsn,
        [
            square(
                "old-town",
                100,
                300,
                kind="slow",
                rules=[
                    {
                        "ride_start_allowed": True,
                        "ride_end_allowed": True,
                        "ride_through_allowed": True,
                        "maximum_speed_kph": 15,
                    }
                ],
            )
        ],
    )
    t0 = int(time.time() * 1000) - 600_000
    caps = []
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    async with running_gateway(cfg) as (gw, reg):
        gw.geofence.on_speed_caps = caps.extend
        await publish(mosquitto, topic_root, "bike-1", drive(t0, 0, 400))
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 81)
        await eventually(lambda: _len_at_least(geofence_events(pg_dsn), 2), what="two events")
        assert metric(reg, "fleetgate_core_seconds_count", core="geofence") >= 1
    events = await geofence_events(pg_dsn)
    enters = [e for e in events if e[1] == "zone_enter"]
    exits = [e for e in events if e[1] == "zone_exit"]
    assert [z for _, _, z in enters] == [["old-town"]] and [z for _, _, z in exits] == [
        ["old-town"]
    ]
    # Confirmed by the second fix at least 10 m inside (outside): 115 m and 315 m east.
    assert enters[0][0] == t0 + 23 * 1000 and exits[0][0] == t0 + 63 * 1000
    # 18 km/h in a 15 km/h zone: one speeding episode, not one event per sample.
    assert [e[1] for e in events].count("speeding_in_zone") == 1
    assert await zones_in_state(pg_dsn, ids["bike-1"]) == []
    assert [(c.max_speed_kph, c.zone_id) for c in caps] == [(15, "old-town"), (None, None)]


async def test_device_events_and_geofence_events_are_counted_apart(mosquitto, pg_dsn, topic_root):
    await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    await put_zones(pg_dsn, [square("old-town", 100, 300, kind="slow")])
    t0 = int(time.time() * 1000) - 600_000
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    async with running_gateway(cfg) as (_gw, reg):
        dev = MqttClient(ConnectOptions(mosquitto.host, mosquitto.port, "bike-1"))
        await dev.connect()
        await dev.publish(
            f"{topic_root}/bike-1/event", orjson.dumps({"t": t0, "type": "tamper"}), qos=1
        )
        await dev.disconnect()
        await publish(mosquitto, topic_root, "bike-1", drive(t0, 0, 400))
        await eventually(lambda: _len_at_least(geofence_events(pg_dsn), 2), what="two events")
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 81)
        assert metric(reg, "fleetgate_device_events_stored_total") == 1
        assert metric(reg, "fleetgate_derived_events_stored_total", source="geofence") == len(
            await geofence_events(pg_dsn)
        )
        assert metric(reg, "fleetgate_derived_events_stored_total", source="battery") == 0


async def test_an_operating_area_imported_from_gbfs_raises_left_operating_area(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """Another publisher's geofencing_zones.json (no _kind), imported with `fleetgate zones import
    --kind`, then a ride out of the area through the running gateway."""
    await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    area = square("ignored", -500, 200)["geometry"]
    feature = {
        "type": "Feature",
        "properties": {"name": [{"text": "Service area", "language": "en"}]},
        "geometry": {"type": "MultiPolygon", "coordinates": [area["coordinates"]]},
    }
    path = tmp_path / "geofencing_zones.json"
    path.write_bytes(orjson.dumps(gbfs_doc(feature)))
    result = await asyncio.to_thread(  # the command runs its own event loop
        run_fleetgate,
        "zones",
        "import",
        str(path),
        "--replace",
        "--kind",
        "Service area=operating_area",
        env={"FLEETGATE_DATABASE_URL": pg_dsn},
    )
    assert result.exit_code == 0, result.output
    t0 = int(time.time() * 1000) - 600_000
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    async with running_gateway(cfg) as (_gw, reg):
        await publish(mosquitto, topic_root, "bike-1", drive(t0, 0, 400))
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 81)
        await eventually(lambda: _len_at_least(geofence_events(pg_dsn), 2), what="two events")
    events = await geofence_events(pg_dsn)
    assert [(typ, zones) for _, typ, zones in events] == [
        ("left_operating_area", ["gbfs-0"]),
        ("zone_exit", ["gbfs-0"]),
    ]


async def _len_at_least(coro, n: int) -> bool:
    return len(await coro) >= n


async def test_a_restarted_gateway_continues_without_false_enter_events(
    mosquitto, pg_dsn, topic_root
):
    ids = await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    await put_zones(pg_dsn, [square("station", 100, 300, kind="station")])
    t0 = int(time.time() * 1000) - 600_000
    track = drive(t0, 0, 400)
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    async with running_gateway(cfg) as (gw, reg):
        await publish(mosquitto, topic_root, "bike-1", track[:40])  # stops inside the zone
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 40)
    assert await zones_in_state(pg_dsn, ids["bike-1"]) == ["station"]
    async with running_gateway(cfg) as (gw, reg):  # a new process: state from the database
        await publish(mosquitto, topic_root, "bike-1", track[40:])
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == len(track) - 40)
        await eventually(lambda: _len_at_least(geofence_events(pg_dsn), 2), what="the exit")
    assert [typ for _, typ, _ in await geofence_events(pg_dsn)] == ["zone_enter", "zone_exit"]


async def test_a_zone_added_while_running_takes_effect_without_a_restart(
    mosquitto, pg_dsn, topic_root
):
    await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    t0 = int(time.time() * 1000) - 600_000
    track = drive(t0, 0, 400)
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, zones_refresh_s=0.2)
    async with running_gateway(cfg) as (gw, reg):
        await publish(mosquitto, topic_root, "bike-1", track[:10])
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 10)
        version = gw.geofence.version
        await put_zones(pg_dsn, [square("new-zone", 100, 300)])
        await eventually(lambda: gw.geofence.version != version, timeout=10, what="zone swap")
        await publish(mosquitto, topic_root, "bike-1", track[10:])
        await eventually(lambda: _len_at_least(geofence_events(pg_dsn), 2), what="enter and exit")
    assert [(typ, z) for _, typ, z in await geofence_events(pg_dsn)] == [
        ("zone_enter", ["new-zone"]),
        ("zone_exit", ["new-zone"]),
    ]


async def test_an_invalid_zone_written_behind_the_apis_back_is_refused_and_the_old_set_kept(
    mosquitto, pg_dsn, topic_root
):
    await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    await put_zones(pg_dsn, [square("good", 100, 300)])
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, zones_refresh_s=0.2)
    async with running_gateway(cfg) as (gw, reg):
        good_version = gw.geofence.version
        bowtie = {
            "type": "Polygon",
            "coordinates": [
                [[13.40, 52.50], [13.41, 52.51], [13.41, 52.50], [13.40, 52.51], [13.40, 52.50]]
            ],
        }
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await conn.execute(
                "INSERT INTO zones (id, geometry) VALUES ('bad', %s)",
                (orjson.dumps(bowtie).decode(),),
            )
            await conn.commit()
        await eventually(lambda: gw.geofence.rejected_versions, timeout=10, what="rejection")
        assert gw.geofence.version == good_version
        assert gw.geofence.tracker.zoneset.ids == ("good",)


def test_zone_rows_round_trip_through_the_core():
    row = square("z", 0, 100, kind="no_parking", priority=3)
    assert ZoneSet.from_rows([row]).to_rows() == [row]
