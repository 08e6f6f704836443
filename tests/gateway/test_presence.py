"""Presence announced through the events table by the real gateway process: vehicle.offline once
after the presence timeout, vehicle.comms_lost once after the longer one, vehicle.online on
return, and no false offline/online from the gateway's own restarts (SIGTERM and kill -9)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import orjson
import psycopg
import pytest

from tests.harness import GatewayProcess, eventually, register
from tests.mqtt_devices import DEVICES, device, sample

pytestmark = pytest.mark.integration

PRESENCE_TIMEOUT_S = 2.0
COMMS_LOST_S = 4.0


async def presence_events(dsn: str) -> dict[str, list[str]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT v.device_id, e.type FROM events e JOIN vehicles v ON v.id = e.vehicle "
            "WHERE e.source = 'vehicle' ORDER BY e.id"
        )
        out: dict[str, list[str]] = {}
        for device_id, kind in await cur.fetchall():
            out.setdefault(device_id, []).append(kind.removeprefix("vehicle."))
        return out


async def test_gateway_restarts_make_no_false_presence_events(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES[:2])
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-presence",
        tmp_path / "gw.log",
        FLEETGATE_PRESENCE_TIMEOUT_S=PRESENCE_TIMEOUT_S,
        FLEETGATE_COMMS_LOST_S=COMMS_LOST_S,
    )
    talker, quiet = await device(mosquitto, "tcu-000"), await device(mosquitto, "tcu-001")
    talking = True

    async def talk() -> None:
        # A sample every 0.3 s, whether the gateway is there or not: the broker keeps them for
        # the gateway's persistent session while it restarts.
        while talking:
            t = int(time.time() * 1000)
            await talker.publish(f"{topic_root}/tcu-000/telemetry", orjson.dumps(sample(t)), qos=1)
            await asyncio.sleep(0.3)

    chatter = asyncio.create_task(talk())
    try:
        gw.start()
        await gw.wait_subscribed()
        # The quiet one says it is online, retained and without a time (t is optional), then
        # falls silent: the broker hands that stale status to every restarted gateway.
        await quiet.publish(f"{topic_root}/tcu-001/status", b'{"online": true}', qos=1, retain=True)
        t = int(time.time() * 1000)
        await quiet.publish(f"{topic_root}/tcu-001/telemetry", orjson.dumps(sample(t)), qos=1)

        async def quiet_lost() -> bool:
            return (await presence_events(pg_dsn)).get("tcu-001") == ["offline", "comms_lost"]

        await eventually(quiet_lost, timeout=30, what="the silent vehicle offline, then lost")

        for stop in (gw.terminate, gw.kill):
            stop()
            await asyncio.sleep(PRESENCE_TIMEOUT_S * 1.5)  # longer than the presence timeout
            gw.start()
            await gw.wait_subscribed()
            await asyncio.sleep(PRESENCE_TIMEOUT_S * 2.5)  # past the expiry's grace after start

        events = await presence_events(pg_dsn)
        assert "tcu-000" not in events, f"the talking vehicle was never silent: {events}"
        assert events["tcu-001"] == ["offline", "comms_lost"], "announced once, not per restart"

        talking = False
        await chatter

        async def talker_offline() -> bool:
            return (await presence_events(pg_dsn)).get("tcu-000") == ["offline"]

        await eventually(talker_offline, timeout=20, what="offline once silent")
        t = int(time.time() * 1000)
        await talker.publish(f"{topic_root}/tcu-000/telemetry", orjson.dumps(sample(t)), qos=1)
        await quiet.publish(f"{topic_root}/tcu-001/telemetry", orjson.dumps(sample(t)), qos=1)

        async def both_back() -> bool:
            events = await presence_events(pg_dsn)
            return events.get("tcu-000") == ["offline", "online"] and events.get("tcu-001") == [
                "offline",
                "comms_lost",
                "online",
            ]

        await eventually(both_back, timeout=20, what="online again on return")
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            cur = await conn.execute(
                "SELECT detail->>'after_comms_lost', detail->>'cause' FROM events "
                "WHERE source = 'vehicle' AND type = 'vehicle.online' ORDER BY id"
            )
            assert await cur.fetchall() == [("false", "telemetry"), ("true", "telemetry")]
        assert gw.terminate() == 0
    finally:
        talking = False
        with contextlib.suppress(Exception):
            await chatter
        gw.stop()
        await talker.disconnect()
        await quiet.disconnect()
