"""Faults the gateway must ride out without losing what devices sent: a broker restarted or killed
under load, a message its own code fails on, a task it depends on dying, the database away with
reading paused, and a device registered a moment before its first sample."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import orjson
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from firmware_sim import Fleet, FleetOptions
from gateway.pipeline import PROCESSING_FAILED, IngestPipeline
from gateway.service import Gateway, GatewayFailed
from gateway.stages import GeofenceStage
from telemetry.store import TelemetryStore, VehicleRegistration
from tests import REPO
from tests.harness import (
    count_positions,
    eventually,
    gateway_config,
    metric,
    register,
    running_gateway,
    stored_keys,
)
from tests.mqtt_devices import DEVICES, Stream, close_devices, device, open_devices, sample
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.integration


def fleet_options(broker, topic_root: str, **kw) -> FleetOptions:
    return FleetOptions(
        host=broker.host,
        port=broker.port,
        topic_root=topic_root,
        session_expiry_s=120,
        track_keys=True,
        **kw,
    )


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_a_broker_restart_under_load_loses_and_duplicates_nothing(
    restartable_mosquitto, pg_dsn, topic_root, kill
):
    """40 vehicles at 25 Hz (1,000 messages/s) while the broker is stopped (SIGTERM) or killed
    (SIGKILL) and started again: every sample the broker acknowledged is stored exactly once.

    With the default plain subscription Mosquitto restores the gateway's subscriptions with its
    session, so what devices publish before the gateway is back is queued for it. A broker only
    restores what it saved: the kill happens after one clean restart, as on any broker that ran
    longer than its autosave_interval since the gateway first subscribed."""
    broker = restartable_mosquitto
    fleet = Fleet(
        fleet_options(
            broker, topic_root, vehicles=40, rate_hz=25.0, samples_per_vehicle=200, seed=41
        )
    )
    await register(pg_dsn, fleet.registrations())
    config = gateway_config(pg_dsn, broker, topic_root)
    async with running_gateway(config) as (gw, reg):
        await fleet.start()
        if kill:
            broker.restart()  # the broker saves the sessions on a clean stop
            await eventually(
                lambda: gw.ingress.subscribed.is_set(), timeout=20, what="gateway subscribed again"
            )
        running = asyncio.create_task(fleet.run())
        await eventually(
            lambda: fleet.stats.samples_acked > 1500, timeout=20, what="samples flowing"
        )
        broker.stop(kill=kill)
        await asyncio.sleep(1.0)  # devices buffer, the gateway retries
        broker.start()
        await eventually(
            lambda: gw.ingress.subscribed.is_set(),
            timeout=20,
            what="gateway subscribed after the restart",
        )
        await running
        stats = await fleet.stop()  # every buffered sample uploaded and acknowledged
        expected = stats.acked_keys()
        assert len(expected) == 40 * 200 and stats.connection_losses >= 40

        async def all_stored() -> bool:
            return await count_positions(pg_dsn) >= len(expected)

        try:
            await eventually(all_stored, timeout=60, what="every acknowledged sample stored")
        finally:
            keys = await stored_keys(pg_dsn)
            lost = expected - set(keys)
            assert not lost, f"{len(lost)} of {len(expected)} acknowledged samples lost"
        assert gw.failure is None and await gw.check_subscribed() is None
    assert len(keys) == len(set(keys)) == len(expected), "each stored exactly once"


async def test_a_connection_loss_while_a_batch_waits_for_its_age_keeps_the_writer_alive(
    restartable_mosquitto, pg_dsn, topic_root
):
    """The batch being gathered when the broker goes away is committed, and the writer goes on
    committing and acknowledging on the next connection (it once cut an empty batch and died,
    with readiness still 200)."""
    broker = restartable_mosquitto
    await register(pg_dsn, DEVICES[:5])
    config = gateway_config(pg_dsn, broker, topic_root)
    config.limits = type(config.limits)(max_messages=2000, max_age_ms=1500)
    async with running_gateway(config) as (gw, reg):
        clients = await open_devices(broker, 5)
        t0 = int(time.time() * 1000) - 600_000
        first = Stream(clients, topic_root, t0)
        await first.run(per_device=4, rate_hz=200)
        broker.stop()  # within the batch's 1.5 s: its messages are pending, not committed
        for client in clients.values():
            client.abort()
        broker.start()
        await eventually(
            lambda: gw.ingress.subscribed.is_set(), timeout=20, what="subscribed again"
        )
        clients = await open_devices(broker, 5)
        later = Stream(clients, topic_root, t0 + 100_000)
        await later.run(per_device=4, rate_hz=200)
        await eventually(lambda: _count_is(pg_dsn, 40), timeout=20, what="both rounds stored")
        assert set(await stored_keys(pg_dsn)) == first.acked | later.acked
        await eventually(lambda: gw.pipeline.unacknowledged == 0, what="all acknowledged")
        assert gw.failure is None and await gw.check_subscribed() is None
        await close_devices(clients)


async def _count_is(dsn: str, n: int) -> bool:
    return await count_positions(dsn) == n


async def test_a_message_the_gateway_fails_on_is_quarantined_and_the_rest_flows(
    mosquitto, pg_dsn, topic_root, monkeypatch
):
    """A fault of the gateway's own, met by one device's samples (here a geofence core that
    raises for that vehicle: no payload reaches such a fault once validation is right, so the
    test plants it). Every other sample is stored, each failing message is kept verbatim in
    quarantined_messages and acknowledged, and the gateway stays ready."""
    vehicles = await register(pg_dsn, DEVICES[:6])
    poisoned = vehicles[DEVICES[2][0]]
    process = GeofenceStage.process

    def failing_process(self, batch):
        if (batch.vehicle == poisoned).any():
            raise RuntimeError("planted fault of the geofence core")
        return process(self, batch)

    monkeypatch.setattr(GeofenceStage, "process", failing_process)
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        clients = await open_devices(mosquitto, 6)
        stream = Stream(clients, topic_root, int(time.time() * 1000) - 600_000)
        await stream.run(per_device=30, rate_hz=100)
        good = {k for k in stream.acked if k[0] != DEVICES[2][0]}
        await eventually(lambda: _count_is(pg_dsn, len(good)), what="the good samples stored")
        await eventually(
            lambda: metric(reg, "fleetgate_samples_rejected_total", reason=PROCESSING_FAILED) == 30,
            what="the 30 failing messages quarantined",
        )
        assert set(await stored_keys(pg_dsn)) == good
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            rows = await (
                await conn.execute(
                    "SELECT device_id, transport, kind, payload, error FROM quarantined_messages "
                    "ORDER BY id"
                )
            ).fetchall()
        assert len(rows) == 30 and {r[0] for r in rows} == {DEVICES[2][0]}
        assert all(r[1:3] == ("mqtt", "telemetry") and "planted fault" in r[4] for r in rows)
        assert sorted(orjson.loads(r[3])["t"] for r in rows) == sorted(
            t for d, t in stream.acked if d == DEVICES[2][0]
        )
        assert metric(reg, "fleetgate_pipeline_errors_total", where="batch") > 0
        await eventually(lambda: gw.pipeline.unacknowledged == 0, what="all acknowledged")
        assert await gw.check_subscribed() is None and await gw.check_database() is None

        monkeypatch.undo()  # the fault fixed: the vehicle's new samples are stored again
        after = Stream(
            {DEVICES[2][0]: clients[DEVICES[2][0]]}, topic_root, int(time.time() * 1000) - 60_000
        )
        await after.run(per_device=5, rate_hz=100)
        await eventually(lambda: _count_is(pg_dsn, len(good) + 5), what="stored after the fix")
        await close_devices(clients)


async def test_rows_the_database_refuses_are_rejected_alone_and_the_rest_is_stored(
    mosquitto, pg_dsn, topic_root
):
    """The database itself refuses one vehicle's rows (its vehicles row is deleted behind the
    gateway's registry: vehicle_state's foreign key fails). The batch is written in parts: the
    other vehicle's samples are stored, the refused ones rejected as store_refused, all are
    acknowledged, and the gateway stays ready."""
    vehicles = await register(pg_dsn, DEVICES[:2])
    config = gateway_config(pg_dsn, mosquitto, topic_root)
    config.limits = type(config.limits)(max_messages=2000, max_age_ms=500)
    async with running_gateway(config) as (gw, reg):
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("DELETE FROM vehicles WHERE id = %s", (vehicles[DEVICES[1][0]],))
        clients = await open_devices(mosquitto, 2)
        stream = Stream(clients, topic_root, int(time.time() * 1000) - 600_000)
        await stream.run(per_device=10, rate_hz=200)
        await eventually(lambda: gw.pipeline.unacknowledged == 0, what="all acknowledged")
        await eventually(
            lambda: metric(reg, "fleetgate_messages_acked_total") == 20, what="20 acked"
        )
        assert set(await stored_keys(pg_dsn)) == {k for k in stream.acked if k[0] == DEVICES[0][0]}
        assert metric(reg, "fleetgate_samples_rejected_total", reason="store_refused") == 10
        assert metric(reg, "fleetgate_samples_stored_total") == 10
        assert metric(reg, "fleetgate_database_errors_total", kind="refused") >= 10
        assert await gw.check_database() is None
        await close_devices(clients)


async def test_a_dead_pipeline_writer_makes_the_gateway_unready_and_fail(
    mosquitto, pg_dsn, topic_root, monkeypatch
):
    async def writer_that_dies(self):
        await asyncio.sleep(0.5)
        raise RuntimeError("planted writer fault")

    monkeypatch.setattr(IngestPipeline, "run", writer_that_dies)
    gateway = Gateway(gateway_config(pg_dsn, mosquitto, topic_root), registry=CollectorRegistry())
    running = asyncio.create_task(gateway.run())
    await eventually(lambda: running.done(), timeout=20, what="the gateway gives up")
    with pytest.raises(GatewayFailed, match="the pipeline writer ended: RuntimeError: planted"):
        running.result()
    reason = await gateway.check_subscribed()
    assert reason is not None and "planted writer fault" in reason
    assert reason == await gateway.check_database()


# `fleetgate run` in a child process whose pipeline writer dies half a second in: the fault is
# planted before the CLI starts, since no input can make the writer die any more.
_DYING_WRITER = """
import asyncio, sys
import gateway.pipeline

async def writer_that_dies(self):
    await asyncio.sleep(0.5)
    raise RuntimeError("planted writer fault")

gateway.pipeline.IngestPipeline.run = writer_that_dies
from fleetgate.cli import app
sys.argv = ["fleetgate", "run", "--no-migrate"]
app()
"""


def test_fleetgate_run_exits_non_zero_when_a_task_it_needs_dies(mosquitto, pg_dsn, topic_root):
    env = {
        **os.environ,
        "FLEETGATE_DATABASE_URL": pg_dsn,
        "FLEETGATE_MQTT_URL": mosquitto.url,
        "FLEETGATE_MQTT_TOPIC_ROOT": topic_root,
        "FLEETGATE_MQTT_CLIENT_ID": "gw-dies",
        "FLEETGATE_API_PORT": "0",
        "FLEETGATE_METRICS_PORT": "0",
        "FLEETGATE_COAP_ENABLED": "false",
        "FLEETGATE_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-c", _DYING_WRITER],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the gateway failed: the pipeline writer ended: RuntimeError: planted" in done.stderr
    failed = [
        orjson.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and '"gateway_failed"' in line
    ]
    assert failed and "planted writer fault" in failed[0]["exc"]


async def test_pending_messages_shows_everything_held_while_the_database_is_away(
    mosquitto, pg_dsn, topic_root
):
    """With the database away the pipeline fills up and pauses reading; what the MQTT client
    then holds back counts too. The gauge once showed the size of the batch being written."""
    await register(pg_dsn, DEVICES[:5])
    proxy = await TcpProxy.start_for(pg_dsn)
    config = gateway_config(proxy.dsn(pg_dsn), mosquitto, topic_root)
    config.limits = type(config.limits)(max_messages=200, max_age_ms=50, max_pending=400)
    try:
        async with running_gateway(config) as (gw, reg):
            clients = await open_devices(mosquitto, 5)
            await proxy.cut()
            stream = Stream(clients, topic_root, int(time.time() * 1000) - 600_000)
            sending = asyncio.create_task(stream.run(per_device=300, rate_hz=500))
            await eventually(
                lambda: metric(reg, "fleetgate_pipeline_pending_messages") == 1500,
                timeout=20,
                what="all 1,500 unacknowledged messages counted",
            )
            assert metric(reg, "fleetgate_pipeline_reading_paused") == 1
            assert gw.ingress.held_back > 0, "the client holds back part of them"
            await proxy.restore()
            await sending
            await eventually(lambda: _count_is(pg_dsn, 1500), timeout=30, what="stored")
            await eventually(
                lambda: metric(reg, "fleetgate_pipeline_pending_messages") == 0,
                what="nothing held any more",
            )
            await close_devices(clients)
    finally:
        await proxy.close()


async def test_a_device_registered_a_moment_ago_loses_no_sample(mosquitto, pg_dsn, topic_root):
    """The registry once reloaded at most every 2 s: the first samples of a device registered
    just after a reload were rejected as unknown_device (and acknowledged, so lost)."""
    await register(pg_dsn, DEVICES[:1])
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        newcomer = await device(mosquitto, "tcu-new-1")
        t0 = int(time.time() * 1000) - 60_000
        # A sample of the not yet registered device: rejected, and the registry just looked.
        await newcomer.publish(f"{topic_root}/tcu-new-1/telemetry", orjson.dumps(sample(t0)), qos=1)
        await eventually(
            lambda: metric(reg, "fleetgate_samples_rejected_total", reason="unknown_device") == 1,
            what="rejected as unknown",
        )
        store = await TelemetryStore.open(pg_dsn)
        try:
            await store.register_vehicles([VehicleRegistration("veh-new-1", "tcu-new-1", "ebike")])
        finally:
            await store.close()
        for k in range(1, 21):
            await newcomer.publish(
                f"{topic_root}/tcu-new-1/telemetry", orjson.dumps(sample(t0 + k * 1000)), qos=1
            )
        await eventually(lambda: _count_is(pg_dsn, 20), timeout=10, what="all 20 stored")
        assert metric(reg, "fleetgate_samples_rejected_total", reason="unknown_device") == 1
        await newcomer.disconnect()


async def test_a_shared_subscription_on_mosquitto_is_warned_about(
    mosquitto, pg_dsn, topic_root, caplog
):
    config = gateway_config(pg_dsn, mosquitto, topic_root, mqtt_shared_group="fleetgate")
    with caplog.at_level("WARNING", logger="gateway.service"):
        async with running_gateway(config):
            pass
    warned = [
        r for r in caplog.records if r.getMessage() == "shared_subscription_not_kept_by_broker"
    ]
    assert warned and warned[0].broker.startswith("mosquitto version 2.")
    assert "FLEETGATE_MQTT_SHARED_GROUP" in warned[0].advice


async def test_a_status_from_a_clock_far_ahead_is_rejected_and_does_not_pin_presence(
    mosquitto, pg_dsn, topic_root
):
    """A status with t in the year 2100 was stored as the vehicle's presence time: every later,
    true status was older and ignored, so the vehicle could never go offline."""
    await register(pg_dsn, DEVICES[:1])
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        dev = await device(mosquitto, "tcu-000")
        status = f"{topic_root}/tcu-000/status"
        await dev.publish(status, orjson.dumps({"online": True, "t": 4_102_444_800_000}), qos=1)
        await dev.publish(
            status, orjson.dumps({"online": False, "t": int(time.time() * 1000)}), qos=1
        )
        await eventually(lambda: metric(reg, "fleetgate_messages_acked_total") == 2)
        assert metric(reg, "fleetgate_status_rejected_total", reason="time_in_future") == 1
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            (online,) = await (await conn.execute("SELECT online FROM vehicle_state")).fetchone()
        assert online is False
        await dev.disconnect()


async def test_a_database_away_at_start_is_reported_and_back_when_it_answers(
    mosquitto, pg_dsn, topic_root
):
    """fleetgate_database_up stayed 0 after an outage at start, until a write failed and
    recovered: an alert on it fired for a gateway that was fine."""
    proxy = await TcpProxy.start_for(pg_dsn)
    await proxy.cut()
    try:
        gateway = Gateway(
            gateway_config(proxy.dsn(pg_dsn), mosquitto, topic_root),
            registry=(registry := CollectorRegistry()),
        )
        running = asyncio.create_task(gateway.run())
        await eventually(
            lambda: metric(registry, "fleetgate_database_up") == 0, what="the outage reported"
        )
        await proxy.restore()
        await eventually(lambda: gateway.ready.is_set(), timeout=30, what="the gateway started")
        assert metric(registry, "fleetgate_database_up") == 1
        gateway.stop()
        await asyncio.wait_for(running, 30)
    finally:
        await proxy.close()
