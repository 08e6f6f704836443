"""The gateway against a real Mosquitto and PostgreSQL: durability, bad input, presence, outages."""

from __future__ import annotations

import asyncio
import time

import cbor2
import orjson
import psycopg
import pytest

from gateway.mqtt import Will
from gateway.pipeline import PipelineLimits
from tests.harness import (
    GatewayProcess,
    count_positions,
    eventually,
    gateway_config,
    metric,
    register,
    running_gateway,
    stored_at_least,
    stored_keys,
)
from tests.mqtt_devices import DEVICES, Stream, close_devices, device, open_devices, sample
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.integration


async def test_bad_input_is_counted_by_reason_never_stored_and_never_stalls(
    mosquitto, pg_dsn, topic_root
):
    await register(pg_dsn, DEVICES[:2])
    now = int(time.time() * 1000)
    bad = {
        "malformed_json": b'{"t": 12',
        "malformed_cbor": b"\xa2\x61t",
        "unknown_encoding": b"hello",
        "wrong_type": orjson.dumps(sample(now, lat="52.5")),
        "lat_out_of_range": orjson.dumps(sample(now + 1, lat=123.0)),
        "soc_out_of_range": cbor2.dumps(sample(now + 2, soc_pct=140)),
        "missing_field": orjson.dumps({"lat": 52.5, "lon": 13.4}),
        "time_in_future": orjson.dumps(sample(now + 3_600_000)),
        "bad_structure": orjson.dumps([1, 2, 3]),
    }
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        dev = await device(mosquitto, "tcu-000")
        for payload in bad.values():
            await dev.publish(f"{topic_root}/tcu-000/telemetry", payload, qos=1)
        ghost = await device(mosquitto, "ghost-1")
        await ghost.publish(f"{topic_root}/ghost-1/telemetry", orjson.dumps(sample(now)), qos=1)
        await dev.publish(
            f"{topic_root}/tcu-000/telemetry",
            orjson.dumps([sample(now - 10), sample(now - 9, soc_pct=-1)]),
            qos=1,
        )
        await eventually(
            lambda: metric(reg, "fleetgate_samples_stored_total") == 1,
            what="the one good sample stored",
        )
        # Still serving: a later good sample lands too.
        await dev.publish(f"{topic_root}/tcu-000/telemetry", orjson.dumps(sample(now - 5)), qos=1)
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 2)
        for reason in bad:
            expected = 2 if reason == "soc_out_of_range" else 1
            assert (
                metric(reg, "fleetgate_samples_rejected_total", reason=reason, transport="mqtt")
                == expected
            ), reason
        assert (
            metric(
                reg, "fleetgate_samples_rejected_total", reason="unknown_device", transport="mqtt"
            )
            == 1
        )
        await dev.disconnect()
        await ghost.disconnect()
    assert sorted(t for _, t in await stored_keys(pg_dsn)) == [now - 10, now - 5]


async def test_one_device_cannot_forge_or_hide_another_devices_positions(
    mosquitto, pg_dsn, topic_root
):
    """Device A sends a crafted JSON fragment before and after each real message of device B.
    Parsed as one JSON document, such a batch once stored a fix of A's choosing as B's and lost
    B's sample, with nothing counted. Batches of three messages put each round in one batch."""
    await register(pg_dsn, DEVICES[:2])
    now = int(time.time() * 1000)
    forged_lat = 1.5
    cfg = gateway_config(
        pg_dsn, mosquitto, topic_root, limits=PipelineLimits(max_messages=3, max_age_ms=5000)
    )
    sent_by_b = []
    async with running_gateway(cfg) as (_, reg):
        a, b = await device(mosquitto, "tcu-000"), await device(mosquitto, "tcu-001")
        for k in range(10):
            t = now - 60_000 + k * 1000
            forged = orjson.dumps({"t": t + 500, "lat": forged_lat, "lon": 2.5})
            sent_by_b.append(sample(t, 1))
            # In turn, each acknowledged by the broker before the next is sent: they reach the
            # gateway in this order.
            await a.publish(
                f"{topic_root}/tcu-000/telemetry",
                orjson.dumps(sample(t - 100)) + b"," + forged[:-1] + b',"x":[0',
                qos=1,
            )
            await b.publish(f"{topic_root}/tcu-001/telemetry", orjson.dumps(sent_by_b[-1]), qos=1)
            await a.publish(
                f"{topic_root}/tcu-000/telemetry", b" 0]}," + orjson.dumps(sample(t + 100)), qos=1
            )
        await eventually(
            lambda: metric(reg, "fleetgate_messages_acked_total") == 30,
            what="every message acknowledged",
        )
        assert metric(reg, "fleetgate_samples_rejected_total", reason="malformed_json") == 20
        assert metric(reg, "fleetgate_samples_rejected_total") == 20, "nothing else rejected"
        assert metric(reg, "fleetgate_samples_stored_total") == 10
        await a.disconnect()
        await b.disconnect()
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        rows = await (
            await conn.execute(
                "SELECT v.device_id, (extract(epoch FROM p.time) * 1000)::bigint, p.lat, p.lon "
                "FROM positions p JOIN vehicles v ON v.id = p.vehicle ORDER BY 2"
            )
        ).fetchall()
    assert rows == [("tcu-001", s["t"], s["lat"], s["lon"]) for s in sent_by_b], (
        "B's rows are exactly B's samples; A, whose every message was crafted, has none"
    )
    assert forged_lat not in [lat for _, _, lat, _ in rows]


async def test_events_and_statuses_the_store_cannot_hold_are_rejected_and_the_gateway_goes_on(
    mosquitto, pg_dsn, topic_root
):
    """Each of these once reached the writer and stopped it (orjson or the timestamp conversion
    failed in the middle of a write)."""
    await register(pg_dsn, DEVICES[:1])
    now = int(time.time() * 1000)
    deep = b'{"a":' * 255 + b"{}" + b"}" * 255
    poison = [
        ("event", cbor2.dumps({"t": now, "type": "crash", "detail": {"raw": b"\x01"}})),
        ("event", cbor2.dumps({"t": now, "type": "crash", "detail": {"n": 2**64}})),
        ("event", b'{"t": %d, "type": "crash", "detail": %s}' % (now, deep)),
        ("event", orjson.dumps({"t": now, "type": "crash", "detail": {"s": "\x00"}})),
        ("status", orjson.dumps({"online": True, "t": 2**62})),
    ]
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (_, reg):
        dev = await device(mosquitto, "tcu-000")
        for kind, payload in poison:
            await dev.publish(f"{topic_root}/tcu-000/{kind}", payload, qos=1)
        await dev.publish(
            f"{topic_root}/tcu-000/event",
            orjson.dumps({"t": now, "type": "crash", "detail": {"g": 3.5}}),
            qos=1,
        )
        await dev.publish(f"{topic_root}/tcu-000/telemetry", orjson.dumps(sample(now)), qos=1)
        await eventually(
            lambda: metric(reg, "fleetgate_samples_stored_total") == 1,
            what="the sample after them stored",
        )
        await eventually(lambda: metric(reg, "fleetgate_messages_acked_total") == len(poison) + 2)
        assert metric(reg, "fleetgate_device_events_rejected_total", reason="bad_structure") == 4
        assert metric(reg, "fleetgate_status_rejected_total", reason="bad_structure") == 1
        assert metric(reg, "fleetgate_device_events_stored_total") == 1
        await dev.disconnect()
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        rows = await (
            await conn.execute("SELECT source, type, detail FROM events ORDER BY source")
        ).fetchall()
    # The device's crash, and the alarm that passes it on.
    assert rows == [
        ("alarm", "alarm.crash", {"reported": {"g": 3.5}}),
        ("device", "crash", {"g": 3.5}),
    ]


async def test_duplicates_and_out_of_order_uploads_are_stored_once(mosquitto, pg_dsn, topic_root):
    await register(pg_dsn, DEVICES[:1])
    t0 = int(time.time() * 1000) - 600_000
    samples = [sample(t0 + k * 1000) for k in range(300)]
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        dev = await device(mosquitto, "tcu-000")
        topic = f"{topic_root}/tcu-000/telemetry"
        await dev.publish(topic, orjson.dumps(samples[200:]), qos=1)  # live, newest
        await dev.publish(topic, orjson.dumps(samples[:150][::-1]), qos=1)  # buffer, reversed
        await dev.publish(topic, orjson.dumps(samples[100:200]), qos=1)  # overlap: 50 dupes
        for s in samples[290:]:
            await dev.publish(topic, orjson.dumps(s), qos=1)  # 10 dupes, singly
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 300)
        await eventually(lambda: metric(reg, "fleetgate_samples_duplicate_total") == 60)
        await dev.disconnect()
    keys = await stored_keys(pg_dsn)
    assert len(keys) == 300 and len(set(keys)) == 300
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        (t,) = await (
            await conn.execute(
                "SELECT (extract(epoch FROM time) * 1000)::bigint FROM vehicle_state"
            )
        ).fetchone()
    assert t == samples[-1]["t"], "vehicle_state holds the newest sample, not the last uploaded"


async def test_sigkill_mid_stream_loses_nothing(mosquitto, pg_dsn, topic_root, tmp_path):
    await register(pg_dsn, DEVICES)
    gw = GatewayProcess(pg_dsn, mosquitto, topic_root, "gw-kill", tmp_path / "gw.log").start()
    try:
        await gw.wait_subscribed()
        clients = await open_devices(mosquitto)
        stream = Stream(clients, topic_root, int(time.time() * 1000) - 3_600_000)
        publishing = asyncio.create_task(stream.run(per_device=150, rate_hz=50))
        await eventually(lambda: stored_at_least(pg_dsn, 600), what="some rows before the kill")
        gw.kill()
        killed_at = await count_positions(pg_dsn)
        await asyncio.sleep(0.5)  # devices keep publishing into the broker meanwhile
        gw.start()
        await gw.wait_subscribed()
        await publishing
        await eventually(
            lambda: stored_at_least(pg_dsn, len(stream.acked)),
            timeout=60,
            what="every acked sample stored",
        )
        keys = await stored_keys(pg_dsn)
        assert killed_at < stream.sent, "the kill happened mid-stream"
        assert set(keys) == stream.acked and len(keys) == len(stream.acked) == 20 * 150
        await close_devices(clients)
    finally:
        gw.stop()


async def test_sigterm_commits_what_it_holds_and_leaves_cleanly(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES)
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-term",
        tmp_path / "gw.log",
        FLEETGATE_BATCH_MAX_AGE_MS=2000,
    ).start()
    try:
        await gw.wait_subscribed()
        clients = await open_devices(mosquitto)
        stream = Stream(clients, topic_root, int(time.time() * 1000) - 3_600_000)
        await stream.run(per_device=20, rate_hz=100)
        assert gw.terminate() == 0
        # With batches cut every 2 s, what it held at SIGTERM was committed on the way out.
        assert set(await stored_keys(pg_dsn)) == stream.acked
        events = [
            orjson.loads(line)
            for line in gw.log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        stopped = [e for e in events if e["event"] == "gateway_stopped"]
        assert stopped and stopped[-1]["unacknowledged"] == 0
        assert not any(e["event"] == "pending_dropped_for_redelivery" for e in events), (
            "a graceful stop commits what it holds instead of leaving it to redelivery"
        )
        await close_devices(clients)
    finally:
        gw.stop()


async def test_database_outage_stops_acks_keeps_running_and_recovers(mosquitto, pg_dsn, topic_root):
    await register(pg_dsn, DEVICES)
    proxy = await TcpProxy.start_for(pg_dsn)
    try:
        async with running_gateway(gateway_config(proxy.dsn(pg_dsn), mosquitto, topic_root)) as (
            gw,
            reg,
        ):
            clients = await open_devices(mosquitto)
            stream = Stream(clients, topic_root, int(time.time() * 1000) - 3_600_000)
            publishing = asyncio.create_task(stream.run(per_device=100, rate_hz=40))
            await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") > 200)
            await proxy.cut()
            await eventually(
                lambda: metric(reg, "fleetgate_database_up") == 0, what="outage reported in metrics"
            )
            acked_during = metric(reg, "fleetgate_messages_acked_total")
            await asyncio.sleep(1.5)
            assert metric(reg, "fleetgate_messages_acked_total") == acked_during, (
                "nothing is acknowledged while the database is away"
            )
            assert gw.pipeline.unacknowledged > 0, "it holds what it could not commit"
            await proxy.restore()
            await publishing
            await eventually(lambda: metric(reg, "fleetgate_database_up") == 1, timeout=30)
            await eventually(
                lambda: (
                    metric(reg, "fleetgate_samples_stored_total")
                    + metric(reg, "fleetgate_samples_duplicate_total")
                    >= len(stream.acked)
                ),
                timeout=60,
            )
            assert metric(reg, "fleetgate_database_errors_total", kind="unavailable") >= 1
            await close_devices(clients)
        keys = await stored_keys(pg_dsn)
        assert set(keys) == stream.acked and len(keys) == len(stream.acked) == 2000
    finally:
        await proxy.close()


async def test_presence_follows_status_last_will_and_silence(mosquitto, pg_dsn, topic_root):
    ids = await register(pg_dsn, DEVICES[:2])
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, presence_timeout_s=1.0)

    async def online(vehicle: int) -> bool | None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            row = await (
                await conn.execute(
                    "SELECT online FROM vehicle_state WHERE vehicle = %s", (vehicle,)
                )
            ).fetchone()
            return None if row is None else row[0]

    async with running_gateway(cfg) as (gw, reg):
        status = f"{topic_root}/tcu-000/status"
        dev = await device(
            mosquitto, "tcu-000", will=Will(status, b'{"online": false}', qos=1, retain=True)
        )
        await dev.publish(
            status, orjson.dumps({"online": True, "t": int(time.time() * 1000)}), qos=1, retain=True
        )
        await eventually(lambda: _is(online(ids["tcu-000"]), True), what="online from status")
        dev.abort()  # dies without DISCONNECT: the broker publishes its will
        await eventually(lambda: _is(online(ids["tcu-000"]), False), what="offline from will")

        other = await device(mosquitto, "tcu-001")
        await other.publish(
            f"{topic_root}/tcu-001/telemetry", orjson.dumps(sample(int(time.time() * 1000))), qos=1
        )
        await eventually(lambda: _is(online(ids["tcu-001"]), True), what="online from telemetry")
        await eventually(
            lambda: _is(online(ids["tcu-001"]), False),
            timeout=10,
            what="offline after the last-seen timeout",
        )
        assert (
            metric(reg, "fleetgate_presence_changes_total", state="offline", cause="timeout") >= 1
        )
        await other.disconnect()


async def _is(coro, expected) -> bool:
    return (await coro) is expected
