"""The MQTT codec on plain bytes: packets split anywhere, lengths of every size, MQTT 5 properties,
the maximum packet size, and what a server must not send."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt._packets import (
    CONNACK,
    DEFAULT_MAX_PACKET_SIZE,
    PUBACK,
    SUBACK,
    MalformedPacket,
    PacketStream,
    PacketTooLarge,
    ProtocolViolation,
    Will,
    decode_connack,
    encode_connect,
    encode_disconnect,
    encode_pubacks,
    encode_publish,
    encode_unsubscribe,
    read_varint,
)
from tests.mqtt_violations import CONNACKS, violations


def publish(topic="fg/v1/d1/telemetry", payload=b"{}", qos=1, mid=7, protocol=5, **kw) -> bytes:
    return encode_publish(
        topic.encode(),
        payload,
        qos=qos,
        mid=mid,
        retain=kw.get("retain", False),
        dup=kw.get("dup", False),
        protocol=protocol,
        content_type=kw.get("content_type"),
    )


def stream(protocol: int = 5, *args) -> PacketStream:
    """A stream past its CONNACK, as every stream a client reads from starts with one."""
    s = PacketStream(protocol, *args)
    assert [p.type for p in s.feed(CONNACKS[protocol])[2]] == [CONNACK]
    return s


@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("size", [0, 1, 120, 127, 128, 16_383, 16_384, 300_000])
def test_publish_round_trips_for_every_length_class(protocol, size):
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    messages, acked, others, pongs = stream(protocol).feed(
        publish(payload=payload, protocol=protocol)
    )
    assert (acked, others, pongs) == ([], [], 0)
    (m,) = messages
    assert (m.topic, m.payload, m.qos, m.mid, m.retain, m.dup) == (
        "fg/v1/d1/telemetry",
        payload,
        1,
        7,
        False,
        False,
    )


def test_qos0_has_no_packet_id_and_flags_survive():
    (m,), *_ = stream(5).feed(publish(qos=0, mid=0, retain=True))
    assert (m.qos, m.mid, m.retain, m.dup) == (0, 0, True, False)
    (m,), *_ = stream(5).feed(publish(qos=1, mid=3, dup=True))
    assert (m.qos, m.mid, m.retain, m.dup) == (1, 3, False, True)


def test_content_type_property_is_read():
    (m,), *_ = stream(5).feed(publish(content_type="application/cbor", payload=b"\xa0"))
    assert m.content_type == "application/cbor" and m.payload == b"\xa0"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=300), st.integers(0, 1)), min_size=1, max_size=12),
    st.data(),
)
def test_a_stream_cut_at_arbitrary_points_yields_the_same_packets(items, data):
    wire = (
        b"".join(publish(payload=p, qos=q, mid=i + 1 if q else 0) for i, (p, q) in enumerate(items))
        + encode_pubacks([3, 4])
        + b"\xd0\x00"
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    s = stream(5)
    got, acked, pongs = [], [], 0
    for a, b in zip([0, *cuts], [*cuts, len(wire)]):
        m, k, _, p = s.feed(wire[a:b])
        got += m
        acked += k
        pongs += p
    assert [(m.payload, m.qos) for m in got] == items
    assert acked == [3, 4] and pongs == 1


def test_pubacks_encode_in_order_and_decode_as_packet_ids():
    wire = encode_pubacks([1, 256, 65535])
    assert wire == b"\x40\x02\x00\x01\x40\x02\x01\x00\x40\x02\xff\xff"
    _, acked, _, _ = stream(4).feed(wire)
    assert acked == [1, 256, 65535]


def test_a_refusing_puback_is_handed_over_whole_and_no_subscribers_is_success():
    _, acked, others, _ = stream(5).feed(b"\x40\x03\x00\x09\x87" + b"\x40\x03\x00\x0a\x10")
    assert acked == [10] and others[0].type == PUBACK and others[0].body == b"\x00\x09\x87"


def test_connack_and_suback_are_other_packets():
    connack_body = b"\x01\x00" + b"\x05\x21\x03\xe8\x24\x01"  # receive max 1000, max QoS 1
    wire = bytes([0x20, len(connack_body)]) + connack_body + b"\x90\x04\x00\x05\x00\x01"
    _, _, others, _ = PacketStream(5).feed(wire)
    assert [p.type for p in others] == [CONNACK, SUBACK]
    ack = decode_connack(others[0].body, 5)
    assert ack.session_present and ack.reason_code == 0
    assert ack.properties == {0x21: 1000, 0x24: 1}


@pytest.mark.parametrize(
    "wire,why",
    [
        (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
        (b"\x30\x03\x00\x09a", "overruns"),
        (b"\x32\x04\x00\x01a\x00", "overruns"),
        (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
    ],
)
def test_malformed_input_raises(wire, why):
    with pytest.raises(MalformedPacket, match=why):
        stream(5).feed(wire)


def test_packets_over_the_limit_are_refused_from_their_length_header():
    with pytest.raises(PacketTooLarge, match="exceeds the maximum packet size 1000") as err:
        stream(5, 1000).feed(publish(payload=b"x" * 2000)[:3])  # type and length only
    assert err.value.reason_code == 0x95


@pytest.mark.parametrize("protocol", [4, 5])
def test_the_limit_counts_the_whole_packet_not_the_remaining_length(protocol):
    wire = publish(payload=b"x" * 1000, protocol=protocol)
    assert wire[1] & 0x80 and not wire[2] & 0x80  # 1 byte of type, 2 of length
    (m,), *_ = stream(protocol, len(wire)).feed(wire)
    assert len(m.payload) == 1000
    with pytest.raises(PacketTooLarge, match=f"PUBLISH of {len(wire)} bytes"):
        stream(protocol, len(wire) - 1).feed(wire)
    with pytest.raises(PacketTooLarge):  # the remaining length alone would still fit
        stream(protocol, len(wire) - 2).feed(wire)


def test_the_default_limit_takes_a_256_kib_message_and_refuses_a_huge_one():
    (m,), *_ = stream(5).feed(publish(payload=b"x" * 256 * 1024))
    assert len(m.payload) == 256 * 1024
    head = publish(payload=b"x" * 128 * 1024 * 1024)[:8]
    with pytest.raises(PacketTooLarge, match=f"maximum packet size {DEFAULT_MAX_PACKET_SIZE}"):
        stream(5).feed(head)


def test_a_large_packet_arriving_in_many_reads_is_not_copied_at_each_read():
    """Its reads are kept and joined once, when the packet is complete (a buffer rebuilt at
    every read made a 128 MiB packet cost 17 s; benchmarks/mqtt_parser.py measures the time).
    White-box: the kept head of the packet stays the first read, whatever follows."""
    wire = publish(payload=bytes(range(256)) * 4096, mid=9) + encode_pubacks([5])  # ~1 MiB
    s = stream(5, 2 * 1024 * 1024)
    reads = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
    for chunk in reads[:-1]:
        assert s.feed(chunk) == ([], [], [], 0)
        assert len(s._buf) == 4096
    (m,), acked, _, _ = s.feed(reads[-1])
    assert m.payload == bytes(range(256)) * 4096 and m.mid == 9 and acked == [5]
    (m,), *_ = s.feed(publish(payload=b"next"))  # and the stream goes on
    assert m.payload == b"next"


@pytest.mark.parametrize("wire,protocol,error,code,words", violations())
def test_what_a_server_must_not_send_is_refused(wire, protocol, error, code, words):
    s = stream(protocol)
    with pytest.raises(error, match=re.escape(words)) as err:
        s.feed(wire)
    assert err.value.reason_code == code


@pytest.mark.parametrize("protocol", [4, 5])
def test_anything_before_the_connack_is_refused(protocol):
    with pytest.raises(ProtocolViolation, match="PUBLISH before CONNACK"):
        PacketStream(protocol).feed(publish(protocol=protocol))
    s = PacketStream(protocol)
    assert s.feed(CONNACKS[protocol][:1]) == ([], [], [], 0)  # arrives in two reads
    assert [p.type for p in s.feed(CONNACKS[protocol][1:] + b"\xd0\x00")[2]] == [CONNACK]


def test_connect_carries_session_will_and_credentials():
    wire = encode_connect(
        client_id="tcu-1",
        protocol=5,
        clean_start=False,
        keepalive_s=30,
        session_expiry_s=3600,
        receive_maximum=500,
        username="u",
        password="p",
        will=Will("fg/v1/tcu-1/status", b'{"online": false}', 1, True),
    )
    assert wire[0] == 0x10
    rl, pos = read_varint(wire, 1)
    assert len(wire) - pos == rl
    body = wire[pos:]
    assert body[:7] == b"\x00\x04MQTT\x05"
    flags = body[7]
    assert flags == 0x80 | 0x40 | 0x20 | 0x08 | 0x04  # user, pass, will retain, will QoS 1, will
    assert struct.unpack(">H", body[8:10]) == (30,)
    assert b"tcu-1" in body and b'{"online": false}' in body


def test_disconnect_can_end_the_session_and_say_why_in_mqtt5_only():
    assert encode_disconnect(4, 0) == encode_disconnect(5) == b"\xe0\x00"
    # reason 0, properties of 5 bytes: Session Expiry Interval (0x11) = 0
    assert encode_disconnect(5, 0) == b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"
    assert encode_disconnect(5, reason_code=0x82) == b"\xe0\x01\x82"
    assert encode_disconnect(4, reason_code=0x82) == b"\xe0\x00"


@pytest.mark.parametrize("protocol", [4, 5])
def test_connect_announces_the_maximum_packet_size_in_mqtt5(protocol):
    wire = encode_connect(
        client_id="gw",
        protocol=protocol,
        clean_start=True,
        keepalive_s=30,
        maximum_packet_size=327_680,
    )
    assert (b"\x27" + struct.pack(">I", 327_680) in wire) == (protocol == 5)


def test_unsubscribe_names_every_filter():
    assert encode_unsubscribe(9, ["a/b", "c"], 4) == b"\xa2\x0a\x00\x09\x00\x03a/b\x00\x01c"
    assert encode_unsubscribe(9, ["c"], 5) == b"\xa2\x06\x00\x09\x00\x00\x01c"
