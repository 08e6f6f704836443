"""The MQTT client facing a broker that breaks the protocol: it leaves at once, says why (MQTT 5:
DISCONNECT with the reason code; MQTT 3.1.1: it closes) and ends with ConnectionLost.

The broker here is a fake, a few lines of asyncio TCP server: Mosquitto cannot be made to send
these packets, which is the point of refusing them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Self

import pytest

from gateway.mqtt import ConnectionLost, ConnectOptions, MqttClient
from gateway.mqtt._packets import PACKET_NAMES, encode_pubacks, encode_publish
from tests.mqtt_violations import CONNACKS, violations


class FakeBroker:
    """Answers the client's CONNECT with a CONNACK, sends the given bytes before or after it,
    and records everything the client sends afterwards until the client closes."""

    def __init__(
        self, protocol: int, *, after_connack: bytes = b"", before_connack: bytes = b""
    ) -> None:
        self.wire = before_connack + CONNACKS[protocol] + after_connack
        self.received = bytearray()
        self.closed = asyncio.Event()
        self.port = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(1)
        assert first[0] >> 4 == 1, f"the client began with {PACKET_NAMES[first[0] >> 4]}"
        length, shift = 0, 0
        while True:  # the CONNECT's remaining length
            b = (await reader.readexactly(1))[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        await reader.readexactly(length)
        writer.write(self.wire)
        try:
            while data := await reader.read(65536):
                self.received += data
        except ConnectionError:
            pass
        self.closed.set()
        writer.close()


def client_of(broker: FakeBroker, protocol: int, **kw) -> MqttClient:
    return MqttClient(
        ConnectOptions("127.0.0.1", broker.port, "fake-test", protocol=protocol), **kw
    )


async def connection_lost(client: MqttClient) -> ConnectionLost:
    """Connect and wait for the end; the violation may come with the CONNACK or after it."""
    with pytest.raises(ConnectionLost) as err:
        await client.connect(timeout=5)
        await asyncio.wait_for(client.wait_closed(), 5)
    assert not client.connected
    return err.value


def disconnect_with(protocol: int, code: int) -> bytes:
    """What the client sends after a violation: MQTT 5 says why, MQTT 3.1.1 only closes."""
    return bytes((0xE0, 1, code)) if protocol == 5 else b""


@pytest.mark.parametrize("wire,protocol,error,code,words", violations())
async def test_a_broker_breaking_the_protocol_is_left_with_the_reason(
    wire, protocol, error, code, words
):
    async with FakeBroker(protocol, after_connack=wire) as broker:
        lost = await connection_lost(client_of(broker, protocol))
        await asyncio.wait_for(broker.closed.wait(), 5)
    assert words in str(lost) and "protocol violation by the broker" in str(lost)
    assert lost.reason_code == code
    # Exactly the DISCONNECT: in particular no PUBACK for a PUBLISH it refused.
    assert bytes(broker.received) == disconnect_with(protocol, code)


@pytest.mark.parametrize("protocol", [4, 5])
async def test_a_packet_over_the_maximum_size_ends_the_connection_and_is_logged(protocol, caplog):
    big = encode_publish(
        b"fg/v1/d1/telemetry", b"x" * 2000, qos=1, mid=1, retain=False, dup=False, protocol=protocol
    )
    caplog.set_level(logging.WARNING, logger="gateway.mqtt._client")
    async with FakeBroker(protocol, after_connack=big) as broker:
        lost = await connection_lost(client_of(broker, protocol, max_packet_size=1000))
        await asyncio.wait_for(broker.closed.wait(), 5)
    assert f"PUBLISH of {len(big)} bytes exceeds the maximum packet size 1000" in str(lost)
    assert bytes(broker.received) == disconnect_with(protocol, 0x95)
    (record,) = [r for r in caplog.records if r.getMessage() == "mqtt_protocol_violation"]
    assert record.reason_code == "0x95"


@pytest.mark.parametrize("protocol", [4, 5])
async def test_a_packet_before_the_connack_fails_the_connect(protocol):
    early = encode_publish(
        b"fg/v1/d1/telemetry", b"{}", qos=0, mid=0, retain=False, dup=False, protocol=protocol
    )
    async with FakeBroker(protocol, before_connack=early) as broker:
        client = client_of(broker, protocol)
        with pytest.raises(ConnectionLost, match="PUBLISH before CONNACK"):
            await client.connect(timeout=5)
        await asyncio.wait_for(broker.closed.wait(), 5)
    assert bytes(broker.received) == disconnect_with(protocol, 0x82)
    assert not client.connected


@pytest.mark.parametrize("protocol", [4, 5])
async def test_a_well_behaved_fake_broker_gets_its_message_acknowledged(protocol):
    """The fake itself is sound: a valid PUBLISH is delivered and acknowledged."""
    ok = encode_publish(
        b"fg/v1/d1/telemetry", b"{}", qos=1, mid=9, retain=False, dup=False, protocol=protocol
    )
    got = []
    async with FakeBroker(protocol, after_connack=ok) as broker:
        client = client_of(broker, protocol, on_messages=got.extend)
        await client.connect(timeout=5)
        for _ in range(100):
            if broker.received:
                break
            await asyncio.sleep(0.02)
        assert client.connected
        client.abort()
    assert [(m.topic, m.mid) for m in got] == [("fg/v1/d1/telemetry", 9)]
    assert bytes(broker.received) == encode_pubacks([9])


async def test_subscribing_with_qos_2_is_refused_before_anything_is_sent():
    client = MqttClient(ConnectOptions("127.0.0.1", 1, "never-connected"))
    with pytest.raises(ValueError, match="QoS 0 or 1"):
        await client.subscribe([("fg/v1/+/telemetry", 2)])
