"""The battery-health core inside the running gateway: events, history rows and headline
estimates committed with their batch; its state carried over a restart."""

from __future__ import annotations

import time

import numpy as np
import psycopg
import pytest

from battery import COLUMNS, BatteryPolicy
from firmware_sim import CAR, EBIKE, FleetModel
from firmware_sim.payloads import JSON, encode_batch, encode_samples
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.store import BATTERY_HEALTH_COLUMNS
from tests.harness import eventually, gateway_config, metric, register, running_gateway

pytestmark = pytest.mark.integration

KINDS = np.array([CAR, EBIKE, CAR], dtype=np.int8)
DEVICES = [
    ("car-1", "veh-car-1", "car"),
    ("bike-2", "veh-bike-2", "ebike"),
    ("car-3", "veh-car-3", "car"),
]


def simulated_hours(
    hours: float, step_s: float = 10.0, end_ms: int | None = None
) -> list[list[bytes]]:
    """Per step, one JSON sample payload per vehicle: a few hours of a seeded fleet, ending at
    end_ms (now by default)."""
    steps = int(hours * 3600 / step_s)
    end_ms = int(time.time() * 1000) if end_ms is None else end_ms
    model = FleetModel(KINDS, seed=7, start_ms=end_ms - steps * int(step_s * 1000))
    encodings = np.full(len(KINDS), JSON)
    return [encode_samples(model.step(step_s), encodings) for _ in range(steps)]


async def publish_steps(
    broker, root: str, steps: list[list[bytes]], reg=None, chunk: int = 500
) -> None:
    """Every vehicle uploads `chunk` steps at a time as one batch payload. With reg (the
    gateway's metrics), each chunk is committed before the next goes out, so that the gateway
    sees the fleet's time pass in slices as it would live, not hours in one batch."""
    devices = []
    for device_id, _, _ in DEVICES:
        dev = MqttClient(ConnectOptions(broker.host, broker.port, device_id))
        await dev.connect()
        devices.append((device_id, dev))
    stored_before = 0 if reg is None else metric(reg, "fleetgate_samples_stored_total")
    for k in range(0, len(steps), chunk):
        part = steps[k : k + chunk]
        for i, (device_id, dev) in enumerate(devices):
            await dev.publish(
                f"{root}/{device_id}/telemetry",
                encode_batch([step[i] for step in part], JSON),
                qos=1,
            )
        if reg is not None:
            expected = stored_before + (k + len(part)) * len(DEVICES)
            await eventually(
                lambda n=expected: metric(reg, "fleetgate_samples_stored_total") >= n,
                timeout=30,
                what=f"{expected} samples stored",
            )
    for _, dev in devices:
        await dev.disconnect()


async def query(dsn: str, sql: str, *args):
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await (await conn.execute(sql, args)).fetchall()


def test_the_store_writes_the_cores_columns_in_its_order():
    assert tuple(COLUMNS) == BATTERY_HEALTH_COLUMNS


async def test_battery_history_events_and_headlines_are_committed_with_the_batch(
    mosquitto, pg_dsn, topic_root
):
    ids = await register(pg_dsn, DEVICES)
    steps = simulated_hours(6)
    async with running_gateway(gateway_config(pg_dsn, mosquitto, topic_root)) as (gw, reg):
        await publish_steps(mosquitto, topic_root, steps, reg, chunk=60)  # 10-minute slices
        total = len(steps) * len(DEVICES)
        await eventually(
            lambda: metric(reg, "fleetgate_samples_stored_total") == total,
            timeout=60,
            what="every sample stored",
        )
        assert metric(reg, "fleetgate_core_seconds_count", core="battery") >= 1
    history = await query(
        pg_dsn,
        "SELECT vehicle, count(*), min(time), max(time) "
        "FROM battery_health GROUP BY vehicle ORDER BY vehicle",
    )
    assert [v for v, *_ in history] == sorted(ids.values())
    for _, rows, _first, _last in history:
        # Downsampled: one row per 15 min of sample time (plus swaps and charging boundaries).
        assert 6 * 4 <= rows <= 6 * 4 + 20, rows
    state = await query(
        pg_dsn,
        "SELECT vehicle, battery_state IS NOT NULL, soc_pct FROM vehicle_state ORDER BY vehicle",
    )
    assert all(has_state and soc is not None for _, has_state, soc in state)
    # The newest history row's headline estimates are on vehicle_state.
    headline = await query(
        pg_dsn,
        "SELECT s.vehicle, s.range_m IS NOT DISTINCT FROM h.range_m "
        "FROM vehicle_state s JOIN LATERAL (SELECT range_m FROM battery_health b "
        "WHERE b.vehicle = s.vehicle ORDER BY time DESC LIMIT 1) h ON true",
    )
    assert headline and all(same for _, same in headline)


async def test_a_restarted_gateway_continues_with_the_saved_battery_state(
    mosquitto, pg_dsn, topic_root
):
    await register(pg_dsn, DEVICES)
    steps = simulated_hours(4)
    half = len(steps) // 2
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    async with running_gateway(cfg) as (gw, reg):
        await publish_steps(mosquitto, topic_root, steps[:half])
        await eventually(
            lambda: metric(reg, "fleetgate_samples_stored_total") == half * len(DEVICES), timeout=60
        )
        before = gw.battery.core.export_state()
    # A graceful stop saved every vehicle's state, not only those with a history row due.
    saved = {
        v: s for v, s in await query(pg_dsn, "SELECT vehicle, battery_state FROM vehicle_state")
    }
    assert saved == before
    async with running_gateway(cfg) as (gw, reg):
        assert gw.battery.core.export_state() == before
        await publish_steps(mosquitto, topic_root, steps[half:])
        await eventually(
            lambda: (
                metric(reg, "fleetgate_samples_stored_total") == (len(steps) - half) * len(DEVICES)
            ),
            timeout=60,
        )
        # Redelivered or re-uploaded old samples change nothing.
        after = gw.battery.core.export_state()
        await publish_steps(mosquitto, topic_root, steps[:10])
        await eventually(
            lambda: metric(reg, "fleetgate_samples_duplicate_total") == 10 * len(DEVICES),
            timeout=30,
        )
        assert gw.battery.core.export_state() == after


def assert_states_match(got: dict, want: dict) -> None:
    """Two exported core states agree field by field (floats to 1e-6 relative: the replay cuts
    the stream into other batches than the live run did)."""
    assert sorted(got) == sorted(want)
    for v in want:
        assert sorted(got[v]) == sorted(want[v]), v
        for name, expected in want[v].items():
            a, b = np.asarray(got[v][name]), np.asarray(expected)
            if a.dtype.kind in "fc" or b.dtype.kind in "fc":
                assert np.allclose(
                    a.astype(float), b.astype(float), rtol=1e-6, atol=1e-9, equal_nan=True
                ), (v, name, got[v][name], expected)
            else:
                assert got[v][name] == expected, (v, name, got[v][name], expected)


async def test_after_a_crash_the_battery_core_replays_what_was_committed_after_its_state(
    mosquitto, pg_dsn, topic_root
):
    from gateway.stages import BatteryStage
    from telemetry.store import TelemetryStore

    await register(pg_dsn, DEVICES)
    # History rows (and with them the saved states) fall due when a vehicle's samples cross a
    # 15-minute boundary of epoch time, so the timeline is placed on that grid: the last sample
    # is 370 s before the next boundary and 530 s after the previous one, which the chunk ending
    # 430 s before the last sample crosses; the chunks after it cross none. Ending at an arbitrary
    # wall-clock time, the final batch would now and then cross a boundary itself and save
    # states that include every sample, leaving nothing to replay.
    interval = int(BatteryPolicy().history_interval_s * 1000)
    end_ms = int(time.time() * 1000) // interval * interval
    steps = simulated_hours(5, end_ms=end_ms)[:-37]
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    async with running_gateway(cfg) as (gw, reg):
        await publish_steps(mosquitto, topic_root, steps, reg, chunk=40)
        at_crash = gw.battery.core.export_state()

        async def crash_leaves_no_final_save() -> None:
            pass

        gw._save_core_state = crash_leaves_no_final_save  # what SIGKILL after a commit leaves
    behind = await query(
        pg_dsn,
        "SELECT count(*) FROM vehicle_state "
        "WHERE (battery_state->>'t')::bigint < extract(epoch FROM time) * 1000",
    )
    assert behind[0][0] > 0, "the stored states lag the stored samples, as after a crash"
    ((missed,),) = await query(
        pg_dsn,
        "SELECT count(*) FROM positions p JOIN vehicle_state s "
        "USING (vehicle) WHERE extract(epoch FROM p.time) * 1000 > "
        "(s.battery_state->>'t')::bigint",
    )

    # Without the replay the core would resume with a gap (the control: it cannot match).
    store = await TelemetryStore.open(pg_dsn)
    try:
        no_replay = BatteryStage(store, replay_max_samples=0)
        await no_replay.start({})
        with pytest.raises(AssertionError):
            assert_states_match(no_replay.core.export_state(), at_crash)
    finally:
        await store.close()

    events_before = await query(pg_dsn, "SELECT count(*) FROM events WHERE source = 'battery'")
    history_before = await query(pg_dsn, "SELECT count(*) FROM battery_health")
    async with running_gateway(cfg) as (gw, reg):
        assert gw.battery.replayed == missed > 0
        assert_states_match(gw.battery.core.export_state(), at_crash)
    # What the replay derived again was already stored: nothing doubled.
    assert (
        await query(pg_dsn, "SELECT count(*) FROM events WHERE source = 'battery'") == events_before
    )
    assert await query(pg_dsn, "SELECT count(*) FROM battery_health") == history_before
