"""Several gateway processes on one Mosquitto and one database: every sample stored exactly once,
a rolling restart that loses and duplicates nothing, a killed process that loses nothing once it
is back, vehicles handed over between processes without false events or reset estimates, and one
command dispatcher among them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import psycopg
import pytest

from fleetgate.embedded import free_port
from gateway.mqtt import ConnectOptions, MqttClient
from gateway.mqtt_ingress import read_presence
from gateway.pipeline import Inbound
from telemetry.store import TelemetryStore
from tests import REPO
from tests.harness import (
    GatewayProcess,
    count_positions,
    eventually,
    gateway_config,
    metric,
    register,
    running_gateway,
    sample_sum,
    stored_at_least,
    stored_keys,
)
from tests.mqtt_devices import DEVICES, Stream, close_devices, open_devices
from tests.zones import at, geofence_events, put_zones, square, zones_in_state

pytestmark = pytest.mark.integration


def ride(t0: int, n: int, first: int = 0) -> list[dict]:
    """An e-bike riding east at 18 km/h, one sample a second, 5 m apart, its battery draining."""
    out = []
    for k in range(first, first + n):
        lat, lon = at(5.0 * k)
        out.append(
            {
                "t": t0 + k * 1000,
                "lat": lat,
                "lon": lon,
                "speed_kmh": 18.0,
                "soc_pct": 80.0 - 0.01 * k,
                "pack_v": 38.0 - 0.002 * k,
                "pack_a": 6.0,
                "odometer_m": 1_000_000.0 + 5.0 * k,
                "locked": False,
                "charging": False,
            }
        )
    return out


async def feed(gw, device_id: str, samples: list[dict]) -> None:
    """Hand samples straight to a gateway's pipeline, as its MQTT ingress would, and wait until
    they are committed: the test decides which process gets which part of a vehicle's stream."""
    now = int(time.time() * 1000)
    for s in samples:
        gw.pipeline.submit(Inbound("telemetry", device_id, orjson.dumps(s), now, (0, 0, 0)))
    await gw.pipeline.flush()


async def stored_json(dsn: str, vehicle: int) -> tuple[dict | None, dict | None]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                "SELECT geofence, battery_state FROM vehicle_state WHERE vehicle = %s", (vehicle,)
            )
        ).fetchone()
    return row or (None, None)


async def test_a_vehicle_going_back_to_a_process_continues_from_the_stored_state(
    mosquitto, pg_dsn, topic_root
):
    ids = await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    v = ids["bike-1"]
    await put_zones(pg_dsn, [square("station", 100, 300, kind="station")])
    t0 = int(time.time() * 1000) - 600_000
    track = ride(t0, 91)  # 0 .. 450 m: enters at 115 m (sample 23), leaves at 315 m (63)
    # B is stopped last: it then saves its older state of the bike over A's newer one, which the
    # store must refuse.
    shared = dict(mqtt_shared_group="fleetgate")
    async with (
        running_gateway(gateway_config(pg_dsn, mosquitto, topic_root, **shared)) as (b, reg_b),
        running_gateway(gateway_config(pg_dsn, mosquitto, topic_root, **shared)) as (a, reg_a),
    ):
        await feed(a, "bike-1", track[:30])  # A: in the zone
        after_a = a.battery.core.export_state([v])[v]
        await feed(b, "bike-1", track[30:70])  # B takes over (it never saw the bike): leaves it
        # Back to A, whose memory still has the bike in the zone: it must continue from what B
        # stored, or it would report a second zone_exit.
        await feed(a, "bike-1", track[70:])
        assert [(t - t0) // 1000 for t, _, _ in await geofence_events(pg_dsn)] == [23, 63]
        assert [typ for _, typ, _ in await geofence_events(pg_dsn)] == ["zone_enter", "zone_exit"]
        assert metric(reg_b, "fleetgate_handover_vehicles_total") == 1
        assert metric(reg_a, "fleetgate_handover_vehicles_total") == 1
        final = a.battery.core.export_state([v])[v]
        assert final["t"] == track[-1]["t"]
        assert final["pack_seq"] == after_a["pack_seq"] == 0, "no pack swap made up"
        assert final["thru"] >= after_a["thru"] > 0, "the charge counter continues, not reset"
    # Both stopped gracefully and saved every battery state they had; B's (older) did not win.
    _, battery = await stored_json(pg_dsn, v)
    assert battery["t"] == track[-1]["t"]
    assert await zones_in_state(pg_dsn, v) == []


async def test_a_core_state_never_replaces_a_newer_one(pg_dsn):
    ids = await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    v = ids["bike-1"]
    store = await TelemetryStore.open(pg_dsn)
    try:
        await store.save_vehicle_json("battery_state", {v: {"t": 2_000, "owner": "new"}})
        await store.save_vehicle_json("battery_state", {v: {"t": 1_000, "owner": "old"}})
        states, _ = await store.load_vehicle_json("battery_state")
        assert states[v]["owner"] == "new"
        await store.save_vehicle_json("battery_state", {v: {"t": 2_000, "owner": "same t"}})
        states, _ = await store.load_vehicle_json("battery_state")
        assert states[v]["owner"] == "same t", "equal time: the later write is the newer news"
    finally:
        await store.close()


def processes(pg_dsn, mosquitto, topic_root, tmp_path, *names: str, **env) -> list[GatewayProcess]:
    """Gateway processes sharing the telemetry through a shared subscription (not the default:
    see docs/deployment.md on Mosquitto and shared subscriptions)."""
    env.setdefault("FLEETGATE_MQTT_SHARED_GROUP", "fleetgate")
    return [
        GatewayProcess(
            pg_dsn,
            mosquitto,
            topic_root,
            name,
            tmp_path / f"{name}.log",
            metrics_port=free_port(),
            **env,
        )
        for name in names
    ]


async def start_stream(broker, topic_root: str, per_device: int, rate_hz: float):
    """The 20 test devices publishing an hour-old stream, in the background."""
    clients = await open_devices(broker)
    stream = Stream(clients, topic_root, int(time.time() * 1000) - 3_600_000)
    return clients, stream, asyncio.create_task(stream.run(per_device=per_device, rate_hz=rate_hz))


async def test_two_processes_store_every_sample_once_and_a_killed_one_loses_nothing(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES)
    a, b = processes(pg_dsn, mosquitto, topic_root, tmp_path, "gw-a", "gw-b")
    try:
        for gw in (a, b):
            gw.start()
        await asyncio.gather(a.wait_subscribed(), b.wait_subscribed())
        clients, stream, publishing = await start_stream(mosquitto, topic_root, 150, 50)
        await eventually(lambda: stored_at_least(pg_dsn, 800), what="rows before the kill")
        stored_by_a = sample_sum(await a.scrape(), "fleetgate_samples_stored_total")
        b.kill()  # what B held unacknowledged waits in its session, and so does B's share
        await asyncio.sleep(0.5)
        b.start()  # as a supervisor would: the same client id
        await b.wait_subscribed()
        await publishing
        await eventually(
            lambda: stored_at_least(pg_dsn, len(stream.acked)),
            timeout=60,
            what="every acked sample stored",
        )
        keys = await stored_keys(pg_dsn)
        assert set(keys) == stream.acked and len(keys) == len(stream.acked) == 20 * 150
        assert 0 < stored_by_a < 800, "the stream was shared between the two processes"
        await close_devices(clients)
    finally:
        a.stop()
        b.stop()


async def test_a_rolling_restart_loses_and_duplicates_nothing(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES)
    gws = processes(
        pg_dsn, mosquitto, topic_root, tmp_path, "gw-r1", "gw-r2", FLEETGATE_BATCH_MAX_AGE_MS=500
    )
    try:
        for gw in gws:
            gw.start()
        await asyncio.gather(*(gw.wait_subscribed() for gw in gws))
        clients, stream, publishing = await start_stream(mosquitto, topic_root, 200, 40)
        for i, gw in enumerate(gws):  # one after the other, while the devices keep sending
            await eventually(
                lambda n=600 * (i + 1): stored_at_least(pg_dsn, n),
                what="more rows before each restart",
            )
            assert gw.terminate() == 0
            await asyncio.sleep(0.3)
            gw.start()
            await gw.wait_subscribed()
        await publishing
        await eventually(
            lambda: stored_at_least(pg_dsn, len(stream.acked)),
            timeout=60,
            what="every acked sample stored",
        )
        keys = await stored_keys(pg_dsn)
        assert set(keys) == stream.acked and len(keys) == len(stream.acked) == 20 * 200
        # A clean stop commits and acknowledges what it holds: nothing comes again.
        for gw in gws:
            assert sample_sum(await gw.scrape(), "fleetgate_samples_duplicate_total") == 0
            stopped = [e for e in gw.events() if e["event"] == "gateway_stopped"]
            assert len(stopped) == 1 and stopped[0]["samples_duplicate"] == 0
            assert stopped[0]["unacknowledged"] == 0 and stopped[0]["samples_stored"] > 0
        await close_devices(clients)
    finally:
        for gw in gws:
            gw.stop()


async def publish_samples(
    broker,
    root: str,
    device_id: str,
    samples: list[dict],
    rate_hz: float = 50.0,
    buffered: bool = False,
) -> None:
    """One message per sample at rate_hz, or (buffered) all of them in one batch payload, as a
    TCU uploads what it held while offline."""
    dev = MqttClient(ConnectOptions(broker.host, broker.port, device_id))
    await dev.connect()
    for payload in [samples] if buffered else samples:
        await dev.publish(f"{root}/{device_id}/telemetry", orjson.dumps(payload), qos=1)
        await asyncio.sleep(1 / rate_hz)
    await dev.disconnect()


async def test_a_killed_process_hands_its_vehicle_over_without_false_events(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    ids = await register(pg_dsn, [("bike-1", "veh-1", "ebike")])
    v = ids["bike-1"]
    await put_zones(pg_dsn, [square("station", 100, 300, kind="station")])
    t0 = int(time.time() * 1000) - 600_000
    track = ride(t0, 91)
    a, b = processes(pg_dsn, mosquitto, topic_root, tmp_path, "gw-ho-a", "gw-ho-b")
    try:
        a.start()
        await a.wait_subscribed()
        # A alone: the ride into the zone, in one upload. The battery state A saves with it
        # has then seen 40 samples; sent one by one, a first 50 ms batch that held a single
        # sample (a publisher stalled for a moment) saved a state with nothing integrated yet.
        await publish_samples(mosquitto, topic_root, "bike-1", track[:40], buffered=True)
        await eventually(
            lambda: stored_at_least(pg_dsn, 40), what="A stored the ride into the zone"
        )
        _, battery_at_kill = await stored_json(pg_dsn, v)
        a.kill()
        b.start()  # another client id in the same shared group
        await b.wait_subscribed()
        # Mosquitto still sends every other message to A's session; B gets the others.
        await publish_samples(mosquitto, topic_root, "bike-1", track[40:])
        await eventually(
            lambda: stored_at_least(pg_dsn, 40 + (len(track) - 40) // 2), what="B stored its share"
        )
        await eventually(lambda: _has_exit(pg_dsn), what="B saw the bike leave")
        a.start()  # back with the same id: it stores what waited in its session
        await a.wait_subscribed()
        await eventually(lambda: stored_at_least(pg_dsn, len(track)), what="every sample stored")
        assert b.terminate() == 0 and a.terminate() == 0
        events = await geofence_events(pg_dsn)
        assert [typ for _, typ, _ in events] == ["zone_enter", "zone_exit"], events
        assert (events[0][0] - t0) // 1000 == 23
        assert len(await stored_keys(pg_dsn)) == len(track)
        _, battery = await stored_json(pg_dsn, v)
        assert battery["t"] > battery_at_kill["t"]
        assert battery["pack_seq"] == battery_at_kill["pack_seq"]
        assert battery["thru"] >= battery_at_kill["thru"] > 0, "continued, not reset"
    finally:
        a.stop()
        b.stop()


async def _has_exit(dsn: str) -> bool:
    return any(typ == "zone_exit" for _, typ, _ in await geofence_events(dsn))


async def test_one_process_dispatches_commands_and_another_takes_over(
    mosquitto, pg_dsn, topic_root
):
    cfg_a = gateway_config(
        pg_dsn, mosquitto, topic_root, commands_lease_check_s=0.2, mqtt_shared_group="fleetgate"
    )
    cfg_b = gateway_config(
        pg_dsn, mosquitto, topic_root, commands_lease_check_s=0.2, mqtt_shared_group="fleetgate"
    )
    async with running_gateway(cfg_a) as (a, ra), running_gateway(cfg_b) as (b, rb):
        assert a.commands is not None and b.commands is None
        assert metric(ra, "fleetgate_commands_dispatcher_active") == 1
        assert metric(rb, "fleetgate_commands_dispatcher_active") == 0
        seen: set[tuple[bool, bool]] = set()  # (a dispatches, b dispatches), every 10 ms
        watching = asyncio.create_task(_watch(a, b, seen))
        # The leader's database session ends (failover, a network cut): it stops at once
        # and one of them takes the lease again.
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'fleetgate-dispatcher-lease' "
                "AND datname = current_database() "  # not other test runs' gateways
                "AND pid IN (SELECT pid FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted)"
            )
        await eventually(
            lambda: (True, False) in seen and len(seen) > 1,
            timeout=5,
            what="the lease loss noticed",
        )
        await eventually(
            lambda: (a.commands is None) != (b.commands is None),
            timeout=10,
            what="a dispatcher again",
        )
        first = a if a.commands is not None else b
        other = b if first is a else a
        # A graceful stop of the leader hands over too.
        first.stop()
        await eventually(
            lambda: other.commands is not None, timeout=10, what="the other process took over"
        )
        watching.cancel()
        assert (True, True) not in seen, "never two dispatchers at once"


async def _watch(a, b, seen: set) -> None:
    while True:
        seen.add((a.commands is not None, b.commands is not None))
        await asyncio.sleep(0.01)


def drain_cli(gw: GatewayProcess, timeout_s: float = 60) -> subprocess.CompletedProcess:
    """`fleetgate drain <gw's client id>` as an operator runs it, with gw's settings."""
    env = {**gw.env, "FLEETGATE_METRICS_PORT": "0"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fleetgate.cli",
            "drain",
            env["FLEETGATE_MQTT_CLIENT_ID"],
            "--timeout",
            str(timeout_s),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s + 30,
    )


async def session_present(broker, client_id: str) -> bool:
    """Whether the broker holds a session for client_id (the probe leaves none behind)."""
    probe = MqttClient(
        ConnectOptions(broker.host, broker.port, client_id, session_expiry_s=60), clean_start=False
    )
    present = await probe.connect()
    await probe.disconnect(session_expiry_s=0)
    return present


async def test_draining_a_retired_process_stores_what_its_session_held_and_ends_it(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES)
    a, b = processes(pg_dsn, mosquitto, topic_root, tmp_path, "gw-keep", "gw-retired")
    try:
        for gw in (a, b):
            gw.start()
        await asyncio.gather(a.wait_subscribed(), b.wait_subscribed())
        assert b.terminate() == 0  # retired for good: its session stays in the shared group
        clients, stream, publishing = await start_stream(mosquitto, topic_root, 40, 50)
        await publishing
        total = len(stream.acked)
        assert total == 20 * 40
        await eventually(lambda: stored_at_least(pg_dsn, total // 3), what="A's share stored")
        await asyncio.sleep(1.0)
        held = total - await count_positions(pg_dsn)
        assert held > total // 3, "Mosquitto queued a share for the retired process's session"

        done = await asyncio.to_thread(drain_cli, b)
        assert done.returncode == 0, done.stderr[-3000:]
        report = orjson.loads(done.stdout.strip().splitlines()[-1])
        assert report["session_present"] is True and report["session_ended"] is True
        assert report["samples_stored"] == held and report["rejected"] == 0
        keys = await stored_keys(pg_dsn)
        assert set(keys) == stream.acked and len(keys) == total, "every sample, once"

        # The session is gone: nothing is routed to it any more, A gets every new sample.
        assert not await session_present(mosquitto, "gw-retired")
        assert (
            await read_presence(
                ConnectOptions(mosquitto.host, mosquitto.port, "gw-retired"), topic_root, wait_s=0.5
            )
            is None
        ), "a retired id's presence is cleared"
        more = Stream(clients, topic_root, stream.t0 + 3_600_000)
        await more.run(per_device=10, rate_hz=50)
        await eventually(
            lambda: stored_at_least(pg_dsn, total + 200), what="A stored all new samples"
        )
        assert len(await stored_keys(pg_dsn)) == total + 200
        # Draining an id without a session finds nothing and leaves nothing behind.
        again = await asyncio.to_thread(drain_cli, b)
        assert again.returncode == 0, again.stderr[-3000:]
        report = orjson.loads(again.stdout.strip().splitlines()[-1])
        assert report["session_present"] is False and report["samples_stored"] == 0
        assert not await session_present(mosquitto, "gw-retired")
        await close_devices(clients)
    finally:
        a.stop()
        b.stop()


async def test_a_client_id_still_in_use_is_not_drained_and_its_process_loses_nothing(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES)
    (a,) = processes(pg_dsn, mosquitto, topic_root, tmp_path, "gw-live")
    try:
        a.start()
        await a.wait_subscribed()

        async def presence() -> dict:
            return await read_presence(
                ConnectOptions(mosquitto.host, mosquitto.port, "gw-live"), topic_root
            )

        await eventually(lambda: _is(presence(), "online"), what="A's presence online")
        assert (await presence())["pid"] == a.proc.pid
        done = await asyncio.to_thread(drain_cli, a)
        assert done.returncode == 1
        assert "gw-live is online" in done.stderr and "still runs" in done.stderr, done.stderr
        # A took its session back with its subscriptions: it still stores everything.
        clients, stream, publishing = await start_stream(mosquitto, topic_root, 10, 50)
        await publishing
        await eventually(lambda: stored_at_least(pg_dsn, len(stream.acked)), what="A stored all")
        assert len(await stored_keys(pg_dsn)) == len(stream.acked) == 200
        assert a.proc.poll() is None
        assert a.terminate() == 0
        assert (await presence())["state"] == "offline", "a clean stop says so"
        a.start()
        await a.wait_subscribed()
        await eventually(lambda: _is(presence(), "online"), what="A's presence online again")
        a.kill()
        await eventually(lambda: _is(presence(), "offline"), what="the last will: offline")
        await close_devices(clients)
    finally:
        a.stop()


async def _is(presence, state: str) -> bool:
    return ((await presence) or {}).get("state") == state
