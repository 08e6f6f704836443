"""The MQTT client against a real Mosquitto running the project's configuration."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.mqtt import ConnectionLost, ConnectOptions, MqttClient, MqttError, Will
from tests.harness import eventually

pytestmark = pytest.mark.integration


async def client(
    broker,
    client_id: str,
    *,
    protocol: int = 5,
    keepalive_s: int = 30,
    session_expiry_s: int = 0,
    **kw,
) -> MqttClient:
    """A connected client; kw are the client's own arguments (clean_start, on_messages, ...)."""
    options = ConnectOptions(
        broker.host,
        broker.port,
        client_id,
        protocol=protocol,
        keepalive_s=keepalive_s,
        session_expiry_s=session_expiry_s,
    )
    c = MqttClient(options, **kw)
    await c.connect()
    return c


@pytest.mark.parametrize("protocol", [4, 5])
async def test_qos1_round_trip_resolves_publishes_on_puback(mosquitto, topic_root, protocol):
    got = []
    sub = await client(
        mosquitto, f"sub-{protocol}-{topic_root}", protocol=protocol, on_messages=got.extend
    )
    assert await sub.subscribe([(f"{topic_root}/+/telemetry", 1)]) == [1]
    pub = await client(mosquitto, f"pub-{protocol}-{topic_root}", protocol=protocol)
    futures = [pub.publish(f"{topic_root}/d{i}/telemetry", b"%d" % i, qos=1) for i in range(500)]
    await asyncio.gather(*futures)
    assert pub.in_flight == 0
    await eventually(lambda: len(got) == 500, timeout=10, what="500 messages")
    assert [m.payload for m in got] == [b"%d" % i for i in range(500)]
    assert {m.qos for m in got} == {1} and got[3].topic == f"{topic_root}/d3/telemetry"
    await pub.disconnect()
    await sub.disconnect()


async def test_content_type_travels_with_mqtt5(mosquitto, topic_root):
    got = []
    sub = await client(mosquitto, f"ct-sub-{topic_root}", on_messages=got.extend)
    await sub.subscribe([(f"{topic_root}/#", 1)])
    pub = await client(mosquitto, f"ct-pub-{topic_root}")
    await pub.publish(f"{topic_root}/a", b"\xa0", qos=1, content_type="application/cbor")
    await eventually(lambda: got, timeout=5)
    assert got[0].content_type == "application/cbor"
    await pub.disconnect()
    await sub.disconnect()


async def test_unacknowledged_messages_come_again_after_reconnect_and_acked_ones_do_not(
    mosquitto, topic_root
):
    sub_id = f"gw-{topic_root}"
    got = []
    opts = dict(clean_start=False, session_expiry_s=300, manual_ack=True, on_messages=got.extend)
    sub = await client(mosquitto, sub_id, **opts)
    await sub.subscribe([(f"{topic_root}/+/telemetry", 1)])
    pub = await client(mosquitto, f"dev-{topic_root}")
    for i in range(10):
        await pub.publish(f"{topic_root}/d/telemetry", b"%d" % i, qos=1)
    await eventually(lambda: len(got) == 10, timeout=5)
    sub.ack([m.mid for m in got[:4]])  # "committed" the first four only
    await asyncio.sleep(0.2)
    sub.abort()  # the gateway dies

    again = []
    opts["on_messages"] = again.extend
    sub2 = await client(mosquitto, sub_id, **opts)
    assert sub2.session_present
    await eventually(lambda: len(again) == 6, timeout=5, what="redelivery")
    assert [m.payload for m in again] == [b"%d" % i for i in range(4, 10)]
    assert all(m.dup for m in again)
    sub2.ack([m.mid for m in again])
    await sub2.disconnect()
    await pub.disconnect()


async def test_will_is_published_on_abort_and_not_on_disconnect(mosquitto, topic_root):
    got = []
    watcher = await client(mosquitto, f"watch-{topic_root}", on_messages=got.extend)
    await watcher.subscribe([(f"{topic_root}/+/status", 1)])
    will = Will(f"{topic_root}/a/status", b"gone", qos=1)
    polite = await client(mosquitto, f"a-{topic_root}", will=will)
    await polite.disconnect()
    rude = await client(
        mosquitto, f"b-{topic_root}", will=Will(f"{topic_root}/b/status", b"gone", qos=1)
    )
    rude.abort()
    await eventually(lambda: got, timeout=5, what="the will")
    await asyncio.sleep(0.3)
    assert [(m.topic, m.payload) for m in got] == [(f"{topic_root}/b/status", b"gone")]
    await watcher.disconnect()


async def test_publishes_beyond_the_brokers_receive_maximum_wait_their_turn(mosquitto, topic_root):
    pub = await client(mosquitto, f"burst-{topic_root}")
    assert pub._send_quota == 1000  # deploy/mosquitto.conf: max_inflight_messages 1000
    futures = [pub.publish(f"{topic_root}/x", b"x", qos=1) for i in range(5000)]
    assert pub.in_flight == 5000
    await asyncio.gather(*futures)
    assert pub.in_flight == 0
    await pub.disconnect()


async def test_broker_going_away_fails_pending_publishes_and_wait_closed(restartable_mosquitto):
    broker = restartable_mosquitto
    sub = await client(broker, "stuck", manual_ack=True)
    await sub.subscribe([("t/#", 1)])
    sub.pause_reading()
    pub = await client(broker, "pub")
    fut = pub.publish("t/1", b"x" * 100_000, qos=1)
    broker.stop(kill=True)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pub.wait_closed(), 5)
    assert not pub.connected
    with pytest.raises(ConnectionLost):
        pub.publish("t/1", b"x", qos=1)
    if fut.done():  # it may have been acknowledged before the kill
        assert fut.exception() is None or isinstance(fut.exception(), ConnectionLost)


async def test_a_refused_connection_says_why(restartable_mosquitto, tmp_path):
    broker = restartable_mosquitto
    broker.stop()
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    broker.extra_config = f"allow_anonymous false\npassword_file {pwfile}\n"
    broker.start()
    for protocol in (4, 5):
        c = MqttClient(
            ConnectOptions(
                broker.host,
                broker.port,
                "nobody",
                protocol=protocol,
                username="nobody",
                password="wrong",
            )
        )
        with pytest.raises(MqttError) as err:
            await c.connect()
        assert "refused" in str(err.value) and err.value.reason_code in (4, 5, 0x86, 0x87)
        assert not c.connected


async def test_keepalive_pings_keep_an_idle_connection_open(mosquitto, topic_root):
    c = await client(mosquitto, f"idle-{topic_root}", keepalive_s=1)
    await asyncio.sleep(2.5)
    assert c.connected
    await c.publish(f"{topic_root}/still-here", b"1", qos=1)
    await c.disconnect()


async def test_disconnect_right_after_a_burst_of_acks_leaves_nothing_to_redeliver(
    mosquitto, topic_root
):
    """The broker may still be reading our PUBACKs when we leave; disconnect() waits for it."""
    sub_id = f"burst-gw-{topic_root}"
    opts = dict(clean_start=False, session_expiry_s=300, manual_ack=True)
    got = []
    sub = await client(mosquitto, sub_id, on_messages=got.extend, **opts)
    await sub.subscribe([(f"{topic_root}/+/telemetry", 1)])
    pub = await client(mosquitto, f"burst-dev-{topic_root}")
    n = 60_000  # under the 65,535 a broker sends unacknowledged
    await asyncio.gather(
        *[pub.publish(f"{topic_root}/d/telemetry", b"%d" % i, qos=1) for i in range(n)]
    )
    await eventually(lambda: len(got) == n, timeout=30, what="the burst")
    sub.ack([m.mid for m in got])
    # More traffic for the leaving connection while it closes (as devices keep publishing).
    late = [pub.publish(f"{topic_root}/d/telemetry", b"late-%d" % i, qos=1) for i in range(500)]
    await sub.disconnect()
    await asyncio.gather(*late)

    again = []
    sub2 = await client(mosquitto, sub_id, on_messages=again.extend, **opts)
    await eventually(lambda: len(again) >= 500, timeout=10, what="the late messages")
    await asyncio.sleep(0.5)
    assert not [m.payload for m in again if not m.payload.startswith(b"late-")], (
        "acknowledged messages came again"
    )
    sub2.ack([m.mid for m in again])
    await sub2.disconnect()
    await pub.disconnect()


@pytest.mark.parametrize("protocol", [4, 5])
async def test_unsubscribe_stops_delivery(mosquitto, topic_root, protocol):
    got = []
    sub = await client(
        mosquitto, f"unsub-{protocol}-{topic_root}", protocol=protocol, on_messages=got.extend
    )
    await sub.subscribe([(f"{topic_root}/a", 1), (f"{topic_root}/b", 1)])
    # MQTT 5 answers a reason code per filter (0x11: there was no such subscription).
    codes = await sub.unsubscribe([f"{topic_root}/a", f"{topic_root}/never"])
    assert codes == ([0x00, 0x11] if protocol == 5 else [])
    pub = await client(mosquitto, f"unsub-pub-{protocol}-{topic_root}", protocol=protocol)
    await pub.publish(f"{topic_root}/a", b"gone", qos=1)
    await pub.publish(f"{topic_root}/b", b"kept", qos=1)
    await eventually(lambda: got, timeout=5)
    await asyncio.sleep(0.2)
    assert [m.payload for m in got] == [b"kept"]
    await pub.disconnect()
    await sub.disconnect()


@pytest.mark.parametrize("protocol", [4, 5])
async def test_ending_a_persistent_session_discards_it_on_the_broker(
    mosquitto, topic_root, protocol
):
    import logging

    from gateway.mqtt import PersistentSession

    cid = f"end-{protocol}-{topic_root}"
    session = PersistentSession(
        ConnectOptions(
            mosquitto.host, mosquitto.port, cid, protocol=protocol, session_expiry_s=3600
        ),
        subscriptions=lambda: [(f"{topic_root}/x", 1)],
        on_messages=lambda msgs, gen: None,
        log=logging.getLogger("test"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(session.run(stop))
    await asyncio.wait_for(session.subscribed.wait(), 10)
    stop.set()
    await task
    await session.end()
    probe = MqttClient(
        ConnectOptions(mosquitto.host, mosquitto.port, cid, protocol=protocol, session_expiry_s=60),
        clean_start=False,
    )
    assert await probe.connect() is False, "no session left to resume"
    await probe.disconnect(session_expiry_s=0)


async def test_an_mqtt5_client_is_sent_nothing_over_the_maximum_packet_size_it_announced(
    mosquitto, topic_root
):
    """MQTT 5: the broker must not send a packet over the client's Maximum Packet Size; it drops
    the message for that client and the connection goes on."""
    got = []
    sub = await client(
        mosquitto, f"small-{topic_root}", max_packet_size=2000, on_messages=got.extend
    )
    await sub.subscribe([(f"{topic_root}/#", 1)])
    pub = await client(mosquitto, f"small-pub-{topic_root}")
    await pub.publish(f"{topic_root}/big", b"x" * 3000, qos=1)
    await pub.publish(f"{topic_root}/small", b"y", qos=1)
    await eventually(lambda: got, timeout=5, what="the small message")
    await asyncio.sleep(0.2)
    assert [(m.topic, m.payload) for m in got] == [(f"{topic_root}/small", b"y")]
    assert sub.connected
    await pub.disconnect()
    await sub.disconnect()


async def test_an_mqtt311_client_leaves_when_the_broker_sends_a_packet_over_its_limit(
    mosquitto, topic_root
):
    """MQTT 3.1.1 cannot announce a limit: the packet arrives, and the client closes as soon as
    its length header says it is too large."""
    sub = await client(mosquitto, f"small311-{topic_root}", protocol=4, max_packet_size=2000)
    await sub.subscribe([(f"{topic_root}/#", 1)])
    pub = await client(mosquitto, f"small311-pub-{topic_root}", protocol=4)
    await pub.publish(f"{topic_root}/big", b"x" * 3000, qos=1)
    with pytest.raises(ConnectionLost, match="exceeds the maximum packet size 2000"):
        await asyncio.wait_for(sub.wait_closed(), 5)
    await pub.disconnect()


async def test_a_paused_client_keeps_its_connection_and_its_later_acks_count(mosquitto, topic_root):
    """Paused for more than twice the keepalive while messages arrive: the broker keeps the
    connection, PUBACKs for our own publishes are read, and what we acknowledge after resuming
    is acknowledged on the broker (nothing comes again)."""
    sub_id, keepalive = f"paused-{topic_root}", 2
    opts = {
        "clean_start": False,
        "session_expiry_s": 300,
        "manual_ack": True,
        "keepalive_s": keepalive,
    }
    got = []
    sub = await client(mosquitto, sub_id, on_messages=got.extend, **opts)
    await sub.subscribe([(f"{topic_root}/+/telemetry", 1)])
    pub = await client(mosquitto, f"paused-pub-{topic_root}")
    sub.pause_reading()
    for i in range(10):  # 5 s, 2.5 keepalive intervals
        await pub.publish(f"{topic_root}/d/telemetry", b"%d" % i, qos=1)
        await asyncio.sleep(0.5)
    await asyncio.wait_for(sub.publish(f"{topic_root}/own", b"x", qos=1), keepalive)
    assert got == [] and sub.connected
    sub.resume_reading()
    await eventually(lambda: len(got) == 10, timeout=5, what="the held messages")
    assert [m.payload for m in got] == [b"%d" % i for i in range(10)]
    sub.ack([m.mid for m in got])
    await sub.disconnect()  # raises ConnectionLost if the broker had dropped us

    again = []
    sub2 = await client(mosquitto, sub_id, on_messages=again.extend, **opts)
    assert sub2.session_present
    await asyncio.sleep(0.5)
    assert again == [], "acknowledged messages came again"
    await sub2.disconnect()
    await pub.disconnect()


async def test_a_gathering_client_reads_a_steady_stream_in_fewer_reads_and_loses_nothing(
    mosquitto, topic_root
):
    """read_gather_s: after a small read the socket rests, so a steady stream arrives in reads
    of many messages; the messages are all there, in order, and pausing still holds them."""
    reads: list[int] = []
    got = []

    def on_messages(messages) -> None:
        reads.append(len(messages))
        got.extend(messages)

    sub = await client(
        mosquitto, f"gather-{topic_root}", on_messages=on_messages, read_gather_s=0.1
    )
    await sub.subscribe([(f"{topic_root}/+/telemetry", 1)])
    pub = await client(mosquitto, f"gather-pub-{topic_root}")
    for i in range(200):  # 10 messages every 20 ms: 0.4 s in all
        pub.publish(f"{topic_root}/d/telemetry", b"%d" % i, qos=1)
        if i % 10 == 9:
            await asyncio.sleep(0.02)
    await eventually(lambda: len(got) == 200, timeout=10, what="200 messages")
    assert [m.payload for m in got] == [b"%d" % i for i in range(200)]
    # Read at once, 20 bursts are 20 reads or more; resting 100 ms after each, about 10.
    assert len(reads) <= 14, reads

    sub.pause_reading()
    await pub.publish(f"{topic_root}/d/telemetry", b"held", qos=1)
    await asyncio.sleep(0.3)  # past a rest: the client reads it, and holds it back
    assert len(got) == 200 and sub.held == 1
    sub.resume_reading()
    await eventually(lambda: len(got) == 201, timeout=5, what="the held message")
    await pub.disconnect()
    await sub.disconnect()


async def test_a_paused_session_notices_a_killed_broker_within_a_keepalive(restartable_mosquitto):
    import logging

    from gateway.mqtt import PersistentSession

    broker, keepalive = restartable_mosquitto, 2
    session = PersistentSession(
        ConnectOptions(broker.host, broker.port, "paused-kill", keepalive_s=keepalive),
        subscriptions=lambda: [("t/#", 1)],
        on_messages=lambda msgs, gen: None,
        log=logging.getLogger("test"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(session.run(stop))
    await asyncio.wait_for(session.subscribed.wait(), 10)
    session.client.pause_reading()
    broker.stop(kill=True)
    await eventually(
        lambda: not session.subscribed.is_set(),
        timeout=2 * keepalive,
        interval=0.05,
        what="the session to notice the broker is gone",
    )
    assert isinstance(session.last_error, ConnectionLost)
    stop.set()
    await task


async def test_messages_held_while_paused_are_handed_over_when_a_killed_broker_takes_the_connection(
    restartable_mosquitto,
):
    """The broker may not have saved them before it died: the owner gets them (to store them,
    not to acknowledge them), rather than losing them with the connection."""
    broker = restartable_mosquitto
    got = []
    sub = await client(broker, "held-handover", manual_ack=True, on_messages=got.extend)
    await sub.subscribe([("t/#", 1)])
    pub = await client(broker, "held-handover-pub")
    sub.pause_reading()
    await asyncio.gather(*[pub.publish("t/a", b"%d" % i, qos=1) for i in range(20)])
    await eventually(lambda: sub.held == 20, timeout=5, what="20 messages held")
    assert got == []
    broker.stop(kill=True)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(sub.wait_closed(), 5)
    assert [m.payload for m in got] == [b"%d" % i for i in range(20)] and sub.held == 0


async def test_past_its_held_bytes_a_paused_client_stops_reading_yet_keeps_the_connection(
    restartable_mosquitto,
):
    """Beyond max_held_bytes the socket is not read either: PINGREQs at every keepalive tick
    keep the connection (for more than twice the keepalive), everything arrives in order after
    resuming, and a broker killed meanwhile is noticed within a keepalive interval."""
    broker, keepalive = restartable_mosquitto, 2
    got = []
    sub = await client(
        broker,
        "held",
        keepalive_s=keepalive,
        manual_ack=True,
        max_held_bytes=10_000,
        on_messages=got.extend,
    )
    await sub.subscribe([("t/#", 1)])
    sock = sub._transport.get_extra_info("socket")
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # a silent broker drops us after 1.5 keepalives
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
    pub = await client(broker, "held-pub")
    sub.pause_reading()
    await asyncio.gather(*[pub.publish("t/a", b"%04d" % i + b"x" * 996, qos=1) for i in range(50)])
    await eventually(lambda: sub._socket_paused, timeout=5, what="the socket to be paused")
    await asyncio.sleep(2.5 * keepalive)
    assert got == [] and sub.connected
    sub.resume_reading()
    await eventually(lambda: len(got) == 50, timeout=5, what="every message")
    assert [m.payload[:4] for m in got] == [b"%04d" % i for i in range(50)]
    sub.ack([m.mid for m in got])

    sub.pause_reading()
    await asyncio.gather(*[pub.publish("t/a", b"x" * 1000, qos=1) for i in range(50)])
    await eventually(lambda: sub._socket_paused, timeout=5, what="the socket to be paused")
    broker.stop(kill=True)
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(sub.wait_closed(), keepalive)


def test_connect_options_keep_the_password_out_of_repr_and_refuse_an_unknown_protocol():
    options = ConnectOptions("broker", 8883, "gw-1", username="gw", password="s3cret")
    assert "s3cret" not in repr(options) and "gw-1" in repr(options)
    assert options.broker == "broker:8883"
    with pytest.raises(ValueError, match="protocol must be 4"):
        ConnectOptions("broker", 1883, "gw-1", protocol=3)
