"""MQTT 3.1.1 / 5 packets as bytes: encoders for what a client sends, a stream parser for what it
receives. Sans-IO: no sockets here, so every corner is testable with plain bytes.

Only what a telemetry client needs is implemented: QoS 0 and 1 (subscriptions ask for at most 1),
no topic aliases, no AUTH exchange. The parser is on the gateway's hot path and stays lean, and it
trusts the broker no further than the protocol does: whatever a server must not send it is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

# Packet types (fixed header, high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

# MQTT 5 property identifiers this client reads or writes.
PROP_PAYLOAD_FORMAT = 0x01
PROP_CONTENT_TYPE = 0x03
PROP_SESSION_EXPIRY = 0x11
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_SERVER_KEEP_ALIVE = 0x13
PROP_REASON_STRING = 0x1F
PROP_RECEIVE_MAXIMUM = 0x21
PROP_TOPIC_ALIAS_MAXIMUM = 0x22
PROP_TOPIC_ALIAS = 0x23
PROP_MAXIMUM_QOS = 0x24
PROP_MAXIMUM_PACKET_SIZE = 0x27

# Wire types of every MQTT 5 property, so that unknown ones can be skipped correctly.
_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE,
    0x02: _U32,
    0x03: _STRING,
    0x08: _STRING,
    0x09: _BINARY,
    0x0B: _VARINT,
    0x11: _U32,
    0x12: _STRING,
    0x13: _U16,
    0x15: _STRING,
    0x16: _BINARY,
    0x17: _BYTE,
    0x18: _U32,
    0x19: _BYTE,
    0x1A: _STRING,
    0x1C: _STRING,
    0x1F: _STRING,
    0x21: _U16,
    0x22: _U16,
    0x23: _U16,
    0x24: _BYTE,
    0x25: _BYTE,
    0x26: _PAIR,
    0x27: _U32,
    0x28: _BYTE,
    0x29: _BYTE,
    0x2A: _BYTE,
}

CONNACK_V3_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
REASON_NAMES = {
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8C: "bad authentication method",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x93: "receive maximum exceeded",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9A: "retain not supported",
    0x9B: "QoS not supported",
    0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded",
    0xA2: "wildcard subscriptions not supported",
}

PACKET_NAMES = {
    0: "reserved packet type 0",
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # v3.1.1, and v5 "normal disconnection" (reason 0 may be omitted)

# The largest packet MQTT can express: 1 byte of type and flags, 4 of length, 268,435,455 more.
MAX_PACKET_SIZE_LIMIT = 268_435_460
# What a client takes by default (docs/protocol.md): a 256 KiB message with its topic and headers
# fits, and so does anything the project's Mosquitto accepts (max_packet_size 300000) and then
# forwards with a few bytes more, so a broker never has to drop a message it accepted.
DEFAULT_MAX_PACKET_SIZE = 320 * 1024


class ProtocolViolation(ValueError):
    """The peer broke the MQTT protocol. reason_code is the MQTT 5 DISCONNECT reason saying how
    (0x82 protocol error unless a subclass says otherwise)."""

    reason_code = 0x82


class MalformedPacket(ProtocolViolation):
    """The peer sent bytes that are not a valid MQTT packet."""

    reason_code = 0x81


class PacketTooLarge(ProtocolViolation):
    """A packet is larger than the Maximum Packet Size this side announced or accepts."""

    reason_code = 0x95


def reason_name(code: int) -> str:
    return REASON_NAMES.get(code, f"reason code 0x{code:02x}")


# --- encoding ------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65535 bytes")
    return struct.pack(">H", len(b)) + b


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + _varint(len(body)) + body


def _properties(props: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(bytes((pid,)) + value for pid, value in props)
    return _varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client that vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def encode_connect(
    *,
    client_id: str,
    protocol: int,
    clean_start: bool,
    keepalive_s: int,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
    maximum_packet_size: int | None = None,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = bytearray(_string("MQTT") + bytes((protocol, flags)) + struct.pack(">H", keepalive_s))
    if protocol == 5:
        # Receive Maximum is sent even at its protocol default of 65535: Mosquitto otherwise
        # caps what it sends us unacknowledged at its own max_inflight_messages.
        props = [
            (PROP_SESSION_EXPIRY, struct.pack(">I", session_expiry_s)),
            (PROP_RECEIVE_MAXIMUM, struct.pack(">H", receive_maximum)),
        ]
        if maximum_packet_size is not None:  # the server must not send us anything larger
            props.append((PROP_MAXIMUM_PACKET_SIZE, struct.pack(">I", maximum_packet_size)))
        body += _properties(props)
    body += _string(client_id)
    if will is not None:
        if protocol == 5:
            body += b"\x00"  # no will properties
        body += _string(will.topic) + _string(will.payload)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _string(password)
    return _packet(CONNECT << 4, bytes(body))


def encode_publish(
    topic: bytes,
    payload: bytes,
    *,
    qos: int,
    mid: int,
    retain: bool,
    dup: bool,
    protocol: int,
    content_type: str | None = None,
) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    head = struct.pack(">H", len(topic)) + topic
    if qos:
        head += struct.pack(">H", mid)
    if protocol == 5:
        head += (
            _properties([(PROP_CONTENT_TYPE, _string(content_type))]) if content_type else b"\x00"
        )
    n = len(head) + len(payload)
    if n < 128:
        return bytes((first, n)) + head + payload
    return bytes((first,)) + _varint(n) + head + payload


def encode_subscribe(mid: int, topics: list[tuple[str, int]], protocol: int) -> bytes:
    body = bytearray(struct.pack(">H", mid))
    if protocol == 5:
        body += b"\x00"
    for topic, qos in topics:
        body += _string(topic) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, bytes(body))


def encode_unsubscribe(mid: int, filters: list[str], protocol: int) -> bytes:
    body = bytearray(struct.pack(">H", mid))
    if protocol == 5:
        body += b"\x00"
    for f in filters:
        body += _string(f)
    return _packet((UNSUBSCRIBE << 4) | 0x02, bytes(body))


def encode_disconnect(
    protocol: int, session_expiry_s: int | None = None, reason_code: int = 0
) -> bytes:
    """DISCONNECT; in MQTT 5 it may set a new session expiry (0: the broker ends the session) and
    say why the client leaves (reason_code, e.g. 0x82 after the broker broke the protocol)."""
    if protocol != 5 or (session_expiry_s is None and not reason_code):
        return DISCONNECT_PACKET
    if session_expiry_s is None:
        return bytes((DISCONNECT << 4, 1, reason_code))  # no properties: their length may go
    props = _properties([(PROP_SESSION_EXPIRY, struct.pack(">I", session_expiry_s))])
    return _packet(DISCONNECT << 4, bytes((reason_code,)) + props)


def encode_pubacks(mids) -> bytes:
    """PUBACK packets for many packet ids, in the given order, as one buffer."""
    ids = np.asarray(mids, dtype=np.uint16)
    out = np.empty((len(ids), 4), dtype=np.uint8)
    out[:, 0] = PUBACK << 4
    out[:, 1] = 2
    out[:, 2] = ids >> 8
    out[:, 3] = ids & 0xFF
    return out.tobytes()


# --- decoding ------------------------------------------------------------------------------------


class Message(NamedTuple):
    """An incoming PUBLISH. mid is 0 for QoS 0. A tuple: the parser builds one per PUBLISH
    with tuple.__new__, a third of what a dataclass's __init__ costs."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    dup: bool
    content_type: str | None = None


@dataclass(slots=True)
class Packet:
    """Any incoming packet but PUBLISH, PUBACK and PINGRESP, which the parser handles inline."""

    type: int
    flags: int
    body: bytes


@dataclass(slots=True)
class ConnAck:
    session_present: bool
    reason_code: int
    properties: dict[int, object] = field(default_factory=dict)


def read_properties(buf: bytes, pos: int) -> tuple[dict[int, object], int]:
    """MQTT 5 properties starting at pos; returns them and the position after them."""
    length, pos = read_varint(buf, pos)
    end = pos + length
    props: dict[int, object] = {}
    while pos < end:
        pid = buf[pos]
        pos += 1
        kind = _PROPERTY_TYPES.get(pid)
        if kind is None:
            raise MalformedPacket(f"unknown property 0x{pid:02x}")
        if kind == _BYTE:
            value, pos = buf[pos], pos + 1
        elif kind == _U16:
            value, pos = (buf[pos] << 8) | buf[pos + 1], pos + 2
        elif kind == _U32:
            value, pos = int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
        elif kind == _VARINT:
            value, pos = read_varint(buf, pos)
        elif kind in (_STRING, _BINARY):
            n = (buf[pos] << 8) | buf[pos + 1]
            raw = bytes(buf[pos + 2 : pos + 2 + n])
            value, pos = (raw.decode("utf-8", "replace") if kind == _STRING else raw), pos + 2 + n
        else:  # user property: a string pair; several may occur
            k = (buf[pos] << 8) | buf[pos + 1]
            key = bytes(buf[pos + 2 : pos + 2 + k]).decode("utf-8", "replace")
            pos += 2 + k
            v = (buf[pos] << 8) | buf[pos + 1]
            val = bytes(buf[pos + 2 : pos + 2 + v]).decode("utf-8", "replace")
            pos += 2 + v
            props.setdefault(pid, []).append((key, val))  # type: ignore[union-attr]
            continue
        props[pid] = value
    if pos != end:
        raise MalformedPacket("properties overrun their length")
    return props, end


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, pos = _varint_or_incomplete(buf, pos)
    if value < 0:
        raise MalformedPacket("truncated variable byte integer")
    return value, pos


def decode_connack(body: bytes, protocol: int) -> ConnAck:
    if len(body) < 2:
        raise MalformedPacket("CONNACK too short")
    props: dict[int, object] = {}
    if protocol == 5 and len(body) > 2:
        props, _ = read_properties(body, 2)
    return ConnAck(bool(body[0] & 1), body[1], props)


def decode_suback(body: bytes, protocol: int) -> tuple[int, list[int]]:
    """SUBACK, or UNSUBACK (whose MQTT 3.1.1 form has no reason codes: the list is empty)."""
    if len(body) < 2:
        raise MalformedPacket(f"SUBACK or UNSUBACK of {len(body)} bytes has no packet identifier")
    mid = (body[0] << 8) | body[1]
    pos = 2
    if protocol == 5:
        _, pos = read_properties(body, pos)
    return mid, list(body[pos:])


# The first byte (type and flags) of every packet a server may send this client besides PUBLISH,
# PUBACK and PINGRESP, which the parser handles inline. A client that never sends QoS 2, never
# receives it (it subscribes with QoS 1 at most) and has no AUTH method gets no PUBREC, PUBREL,
# PUBCOMP or AUTH; CONNECT, SUBSCRIBE, UNSUBSCRIBE and PINGREQ only ever go to a server, and an
# MQTT 3.1.1 server does not send DISCONNECT either.
_OTHERS_ALLOWED = {4: frozenset((0x20, 0x90, 0xB0)), 5: frozenset((0x20, 0x90, 0xB0, 0xE0))}
_FLAGS_EXPECTED = {
    CONNACK: 0,
    PUBACK: 0,
    PUBREL: 2,
    SUBACK: 0,
    UNSUBACK: 0,
    PINGRESP: 0,
    DISCONNECT: 0,
    AUTH: 0,
}
_TOPIC_CACHE_SIZE = 10_000
# (QoS, retain, DUP) of a PUBLISH by the low nibble of its first byte; None where a server must
# not send it: QoS 2 (this client subscribes with QoS 1 at most), QoS 3, QoS 0 with DUP. One
# lookup instead of the bit arithmetic and checks per message.
_PUBLISH_FLAGS = tuple(
    None if (f >> 1) & 3 > 1 or (f & 8 and not f & 6) else ((f >> 1) & 3, bool(f & 1), bool(f & 8))
    for f in range(16)
)


def _publish_refused(b0: int) -> ProtocolViolation:
    """Why a PUBLISH with these flags (a None in _PUBLISH_FLAGS) is refused."""
    qos = (b0 >> 1) & 3
    if qos == 3:
        return MalformedPacket("PUBLISH with QoS 3")
    if qos == 2:
        return ProtocolViolation("PUBLISH with QoS 2 (this client subscribes with QoS 1 at most)")
    return MalformedPacket("QoS 0 PUBLISH with the DUP flag")


class PacketStream:
    """Cuts the byte stream a client receives into packets. feed() returns what became complete.

    PUBLISH becomes a Message, a successful PUBACK its packet id, PINGRESP is counted; anything
    else (including a PUBACK that refuses with an MQTT 5 reason code) is a Packet. Whatever a
    server must not send raises ProtocolViolation (MalformedPacket, PacketTooLarge) and leaves the
    stream unusable: the connection must end. A packet larger than max_packet_size (the whole
    packet, fixed header included) is refused as soon as its length header has arrived, and a
    large packet's reads are joined once, when it is complete.
    """

    __slots__ = (
        "_buf",
        "_connack_seen",
        "_have",
        "_need",
        "_parts",
        "_topics",
        "max_packet_size",
        "protocol",
    )

    def __init__(self, protocol: int, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self.protocol = protocol
        self.max_packet_size = max_packet_size
        self._buf = b""  # the start of an incomplete packet
        self._parts: list[bytes] = []  # reads after _buf, while _need is not reached
        self._have = 0  # bytes in _buf and _parts
        self._need = 0  # the incomplete packet's size, once its length header is complete
        self._connack_seen = False
        self._topics: dict[bytes, str] = {}  # topic names already decoded and checked

    def feed(self, data: bytes) -> tuple[list[Message], list[int], list[Packet], int]:
        if self._need:
            have = self._have + len(data)
            if have < self._need:  # a large packet in the middle: keep the read, copy nothing
                self._parts.append(data)
                self._have = have
                return [], [], [], 0
            buf = b"".join((self._buf, *self._parts, data))
            self._parts.clear()
        else:
            buf = self._buf + data if self._buf else data
        if not self._connack_seen and buf and buf[0] >> 4 != CONNACK:
            raise ProtocolViolation(f"{PACKET_NAMES[buf[0] >> 4]} before CONNACK")
        messages: list[Message] = []
        acked: list[int] = []
        others: list[Packet] = []
        try:
            used, pongs, need = self._cut(buf, messages, acked, others)
        except (IndexError, UnicodeDecodeError) as exc:
            raise MalformedPacket(f"a field overruns its packet or is not UTF-8 ({exc})") from exc
        self._buf = buf[used:] if used < len(buf) else b""
        self._have = len(self._buf)
        self._need = need
        return messages, acked, others, pongs

    # The parser's hot loop, one pass per read: a method per PUBLISH measured ~1.5 % slower
    # (benchmarks/mqtt_parser.py), so the packet kinds stay inline.
    def _cut(  # noqa: C901
        self, buf: bytes, messages: list, acked: list, others: list
    ) -> tuple[int, int, int]:
        """Packets from buf into the lists; returns the bytes used, the PINGRESPs seen and the
        size of the incomplete packet left at the end (0 while its length is unknown)."""
        n = len(buf)
        i = pongs = 0
        v5 = self.protocol == 5
        limit = self.max_packet_size
        topics = self._topics
        publish_flags = _PUBLISH_FLAGS
        new, message, add = tuple.__new__, Message, messages.append
        while i + 2 <= n:
            b0 = buf[i]
            rl = buf[i + 1]
            p = i + 2
            if rl & 0x80:
                if p < n and buf[p] < 0x80:  # a length of two bytes: most telemetry
                    rl = (rl & 0x7F) | (buf[p] << 7)
                    p += 1
                else:
                    rl, p = _varint_or_incomplete(buf, i + 1)
                    if rl < 0:
                        break  # the length itself has not fully arrived
            end = p + rl
            if end - i > limit:
                raise PacketTooLarge(
                    f"{PACKET_NAMES[b0 >> 4]} of {end - i} bytes exceeds the "
                    f"maximum packet size {limit}"
                )
            if end > n:
                return i, pongs, end - i
            kind = b0 >> 4
            if kind == PUBLISH:
                flags = publish_flags[b0 & 0x0F]
                if flags is None:
                    raise _publish_refused(b0)
                qos, retain, dup = flags
                tl = (buf[p] << 8) | buf[p + 1]
                p += 2
                raw = buf[p : p + tl]
                p += tl
                try:  # a dict hit is cheaper than decoding, and the topic was checked once
                    topic = topics[raw]
                except KeyError:
                    if p > end:
                        raise MalformedPacket("PUBLISH topic overruns the packet") from None
                    topic = self._new_topic(raw)
                mid = 0
                if qos:
                    mid = (buf[p] << 8) | buf[p + 1]
                    if not mid:
                        raise ProtocolViolation("QoS 1 PUBLISH with packet identifier 0")
                    p += 2
                content_type = None
                if v5:
                    if buf[p] == 0:
                        p += 1
                    else:
                        props, p = read_properties(buf, p)
                        if PROP_TOPIC_ALIAS in props:
                            raise ProtocolViolation(
                                "PUBLISH with a topic alias (this client allows none)"
                            )
                        content_type = props.get(PROP_CONTENT_TYPE)
                if p > end:
                    raise MalformedPacket("PUBLISH header overruns the packet")
                add(new(message, (topic, buf[p:end], qos, retain, mid, dup, content_type)))
            elif b0 == 0x40 and rl == 2:
                acked.append((buf[p] << 8) | buf[p + 1])
            elif b0 == 0xD0 and rl == 0:
                pongs += 1
            else:
                self._check_other(b0, rl)
                if kind == PUBACK and buf[p + 2] < 0x80:
                    # MQTT 5 "no matching subscribers" (0x10) is success; refusals are a Packet.
                    acked.append((buf[p] << 8) | buf[p + 1])
                else:
                    others.append(Packet(kind, b0 & 0x0F, bytes(buf[p:end])))
            i = end
        return i, pongs, 0

    def _new_topic(self, raw: bytes) -> str:
        """A topic name not seen lately: checked, decoded and remembered."""
        topics = self._topics
        if len(topics) >= _TOPIC_CACHE_SIZE:
            topics.clear()
        topic = topics[raw] = _topic_name(raw)
        return topic

    def _check_other(self, b0: int, rl: int) -> None:
        """Refuse a packet that a server must not send to this client, or one whose fixed
        header is wrong; note the CONNACK."""
        kind, name = b0 >> 4, PACKET_NAMES[b0 >> 4]
        if kind in _FLAGS_EXPECTED and b0 & 0x0F != _FLAGS_EXPECTED[kind]:
            raise MalformedPacket(f"{name} with flags 0x{b0 & 0x0F:x}")
        if kind == PUBACK:
            if rl < 2 or (rl > 2 and self.protocol != 5):
                raise MalformedPacket(f"PUBACK of {rl} bytes")
            return
        if kind == PINGRESP:
            raise MalformedPacket(f"PINGRESP of {rl} bytes")
        if b0 not in _OTHERS_ALLOWED[self.protocol]:
            raise _not_for_this_client(kind, self.protocol)
        if kind == CONNACK:
            if self._connack_seen:
                raise ProtocolViolation("a second CONNACK")
            self._connack_seen = True


def _not_for_this_client(kind: int, protocol: int) -> ProtocolViolation:
    """Why a server must not send this packet type to this client (with these flags)."""
    name = PACKET_NAMES[kind]
    if kind == 0 or (kind == AUTH and protocol != 5):
        return MalformedPacket(name if kind == 0 else "reserved packet type 15")
    if kind in (PUBREC, PUBREL, PUBCOMP):
        why = "this client never uses QoS 2"
    elif kind == AUTH:
        why = "this client has no authentication method"
    elif kind == DISCONNECT:
        why = "an MQTT 3.1.1 server does not send it"
    else:
        why = "only clients send it"
    return ProtocolViolation(f"{name} ({why})")


def _varint_or_incomplete(buf: bytes, pos: int) -> tuple[int, int]:
    """The variable byte integer at pos and the position after it; -1 while buf ends in it."""
    value = 0
    for shift in (0, 7, 14, 21):
        if pos >= len(buf):
            return -1, pos
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def _topic_name(raw: bytes) -> str:
    """The topic name of a PUBLISH from a server, if it may carry it."""
    if not raw:
        raise ProtocolViolation("PUBLISH with an empty topic name (and no topic alias)")
    topic = raw.decode()
    if "\x00" in topic:
        raise MalformedPacket(f"PUBLISH topic name with U+0000: {topic!r}")
    if "+" in topic or "#" in topic:
        raise ProtocolViolation(f"PUBLISH topic name with a wildcard: {topic!r}")
    return topic
