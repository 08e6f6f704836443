"""A simulated device's own MQTT connection (firmware_sim.mqtt_connection, on paho-mqtt) against
a real Mosquitto: a refused PUBACK is not taken for an acknowledgement, a dropped connection
fires the will and a clean one does not, the persistent session keeps commands, and the end of
the broker ends every pending publish."""

from __future__ import annotations

import asyncio
import time

import pytest

from firmware_sim.mqtt_connection import ConnectionLost, MqttConnection, MqttError
from fleetgate.embedded import Mosquitto
from gateway.mqtt import ConnectOptions, MqttClient
from tests.harness import eventually

pytestmark = pytest.mark.integration


class Watcher:
    """A plain subscriber on the gateway's side, keeping (topic, payload) of what arrives."""

    def __init__(self, broker, topics: list[str]) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.topics = topics
        self.client = MqttClient(
            ConnectOptions(broker.host, broker.port, f"watcher-{time.monotonic_ns() % 10**9}"),
            on_messages=lambda ms: self.seen.extend((m.topic, m.payload) for m in ms),
        )

    async def __aenter__(self) -> Watcher:
        await self.client.connect()
        await self.client.subscribe([(t, 1) for t in self.topics])
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.disconnect()


def device(broker, device_id: str, **kw) -> MqttConnection:
    kw.setdefault("session_expiry_s", 60)
    return MqttConnection(broker.host, broker.port, client_id=device_id, **kw)


@pytest.fixture
def acl_broker(tmp_path):
    """A broker that lets anonymous devices publish only under fg-acl/v1/dev-1/."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite fg-acl/v1/dev-1/#\n")
    broker = Mosquitto(datadir=tmp_path / "mosquitto", extra_config=f"acl_file {acl}\n").start()
    yield broker
    broker.stop(kill=True)


async def test_a_refused_publish_fails_and_an_acknowledged_one_resolves(acl_broker):
    conn = device(acl_broker, "dev-1")
    await conn.connect()
    try:
        await conn.publish("fg-acl/v1/dev-1/telemetry", b'{"t": 1}')
        with pytest.raises(MqttError, match="(?i)not authori"):
            await conn.publish("fg-acl/v1/dev-2/telemetry", b'{"t": 2}')
        assert conn.connected
    finally:
        await conn.disconnect()


async def test_a_dropped_connection_fires_the_will_and_a_clean_one_does_not(mosquitto, topic_root):
    status = f"{topic_root}/d/status"
    async with Watcher(mosquitto, [status]) as watcher:
        dropped = device(mosquitto, f"{topic_root[:12]}-a", will=(status, b"dropped"))
        await dropped.connect()
        dropped.abort()
        await dropped.wait_closed()  # dropped on purpose: no ConnectionLost
        await eventually(lambda: (status, b"dropped") in watcher.seen, what="the will")
        clean = device(mosquitto, f"{topic_root[:12]}-b", will=(status, b"clean"))
        await clean.connect()
        await clean.disconnect()
        await asyncio.sleep(0.5)
        assert (status, b"clean") not in watcher.seen


@pytest.mark.parametrize("protocol", [5, 4])
async def test_the_session_keeps_commands_while_the_device_is_away(mosquitto, topic_root, protocol):
    cmd = f"{topic_root}/d/cmd"
    device_id = f"sess-{protocol}-{topic_root[7:17]}"
    got: list[tuple[str, bytes]] = []
    first = device(mosquitto, device_id, protocol=protocol)
    await first.connect()
    await first.subscribe(cmd)
    await first.disconnect()
    sender = MqttClient(ConnectOptions(mosquitto.host, mosquitto.port, f"{device_id}-sender"))
    await sender.connect()
    await sender.publish(cmd, b'{"id": "c1"}', qos=1)
    await sender.disconnect()
    again = device(
        mosquitto, device_id, protocol=protocol, on_message=lambda t, p: got.append((t, p))
    )
    assert await again.connect() is True, "the broker resumed the session"
    try:
        await eventually(lambda: got == [(cmd, b'{"id": "c1"}')], what="the queued command")
    finally:
        await again.disconnect()


async def test_the_broker_going_away_ends_pending_publishes_with_connection_lost(
    restartable_mosquitto, topic_root
):
    conn = device(restartable_mosquitto, "gone-1")
    await conn.connect()
    restartable_mosquitto.stop(kill=True)
    pending = [conn.publish(f"{topic_root}/gone-1/telemetry", b"{}") for _ in range(50)]
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(conn.wait_closed(), 10)
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, ConnectionLost) for r in results)
    with pytest.raises(ConnectionLost):
        conn.publish(f"{topic_root}/gone-1/telemetry", b"{}")


async def test_a_refused_login_is_an_error_and_an_unreachable_broker_too(tmp_path):
    broker = Mosquitto(
        datadir=tmp_path / "mosquitto", extra_config="allow_anonymous false\n"
    ).start()
    try:
        with pytest.raises(MqttError, match="refused"):
            await device(broker, "nobody").connect(timeout=5)
    finally:
        broker.stop(kill=True)
    with pytest.raises(OSError):
        await device(broker, "nobody").connect(timeout=5)
