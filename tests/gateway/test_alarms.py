"""Alarms through the real broker, gateway and database: a locked e-bike carried off raises
alarm.moved_while_locked once per episode, across a gateway restart too, and a device's tamper
event is passed on as alarm.tamper."""

from __future__ import annotations

import time

import orjson
import psycopg
import pytest

from tests.harness import eventually, gateway_config, register, running_gateway
from tests.mqtt_devices import DEVICES, device, sample

pytestmark = pytest.mark.integration


async def alarms(dsn: str) -> list[tuple[str, dict]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT type, detail FROM events WHERE source = 'alarm' ORDER BY id"
        )
        return await cur.fetchall()


def parked(t0: int, k: int, north_m: float = 0.0, **over) -> dict:
    return sample(t0 + k * 1000, lat=52.5 + north_m / 111_195.0, speed_kmh=0.0, locked=True, **over)


async def test_a_locked_bike_carried_off_alarms_once_across_a_restart(
    mosquitto, pg_dsn, topic_root
):
    await register(pg_dsn, DEVICES[:1])
    t0 = int(time.time() * 1000) - 600_000
    cfg = gateway_config(pg_dsn, mosquitto, topic_root)
    topic = f"{topic_root}/tcu-000/telemetry"
    async with running_gateway(cfg) as (gw, _):
        tcu = await device(mosquitto, "tcu-000")
        # Parked and locked, GPS wandering a few metres; then carried off (no speed reported).
        await tcu.publish(
            topic, orjson.dumps([parked(t0, k, k % 3 * 4.0) for k in range(10)]), qos=1
        )
        carried = [parked(t0, 10 + k, 80.0 + 40 * k) for k in range(10)]
        await tcu.publish(topic, orjson.dumps(carried[:5]), qos=1)
        await eventually(lambda: _count(alarms(pg_dsn), 1), what="alarm.moved_while_locked")
        await gw.pipeline.flush()
        await tcu.disconnect()
    async with running_gateway(cfg) as (gw, _):  # the episode goes on after a restart
        tcu = await device(mosquitto, "tcu-000")
        await tcu.publish(topic, orjson.dumps(carried[5:]), qos=1)
        await tcu.publish(
            f"{topic_root}/tcu-000/event",
            orjson.dumps({"t": t0 + 30_000, "type": "tamper", "detail": {"sensor": "lock_cable"}}),
            qos=1,
        )
        await eventually(lambda: _count(alarms(pg_dsn), 2), what="alarm.tamper")
        await gw.pipeline.flush()
        await tcu.disconnect()
    found = await alarms(pg_dsn)
    assert [t for t, _ in found] == ["alarm.moved_while_locked", "alarm.tamper"]
    moved = found[0][1]
    assert moved["distance_m"] > 50 and moved["lat"] > 52.5
    assert found[1][1] == {"reported": {"sensor": "lock_cable"}}


async def _count(coro, n: int) -> bool:
    return len(await coro) >= n
