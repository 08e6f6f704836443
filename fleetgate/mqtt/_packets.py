"""MQTT 3.1.1 / 5 packets as bytes: encoders for what a client sends, a stream parser for what it
receives. Sans-IO: no sockets here, so every corner is testable with plain bytes.

Only what a telemetry client needs is implemented: QoS 0 and 1 (subscriptions ask for at most 1),
no topic aliases, no AUTH exchange. The parser is on the gateway's hot path and stays lean.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

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
PROP_MAXIMUM_QOS = 0x24
PROP_MAXIMUM_PACKET_SIZE = 0x27

# Wire types of every MQTT 5 property, so that unknown ones can be skipped correctly.
_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STRING, 0x13: _U16, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}

CONNACK_V3_REASONS = {
    1: "unacceptable protocol version", 2: "client identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}
REASON_NAMES = {
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
    0x83: "implementation specific error", 0x84: "unsupported protocol version",
    0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8B: "server shutting down", 0x8C: "bad authentication method",
    0x8D: "keep alive timeout", 0x8E: "session taken over", 0x8F: "topic filter invalid",
    0x90: "topic name invalid", 0x93: "receive maximum exceeded", 0x95: "packet too large",
    0x97: "quota exceeded", 0x99: "payload format invalid", 0x9A: "retain not supported",
    0x9B: "QoS not supported", 0x9E: "shared subscriptions not supported",
    0x9F: "connection rate exceeded", 0xA2: "wildcard subscriptions not supported",
}

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # v3.1.1, and v5 "normal disconnection" (reason 0 may be omitted)


class MalformedPacket(ValueError):
    """The peer sent bytes that are not a valid MQTT packet."""


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


def encode_connect(*, client_id: str, protocol: int, clean_start: bool, keepalive_s: int,
                   session_expiry_s: int = 0, receive_maximum: int = 65535,
                   username: str | None = None, password: str | None = None,
                   will: Will | None = None) -> bytes:
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
        props = [(PROP_SESSION_EXPIRY, struct.pack(">I", session_expiry_s)),
                 (PROP_RECEIVE_MAXIMUM, struct.pack(">H", receive_maximum))]
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


def encode_publish(topic: bytes, payload: bytes, *, qos: int, mid: int, retain: bool, dup: bool,
                   protocol: int, content_type: str | None = None) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    head = struct.pack(">H", len(topic)) + topic
    if qos:
        head += struct.pack(">H", mid)
    if protocol == 5:
        head += _properties([(PROP_CONTENT_TYPE, _string(content_type))]) if content_type else b"\x00"
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


def encode_disconnect(protocol: int, session_expiry_s: int | None = None) -> bytes:
    """DISCONNECT; in MQTT 5 it may set a new session expiry (0: the broker ends the session)."""
    if protocol != 5 or session_expiry_s is None:
        return DISCONNECT_PACKET
    props = _properties([(PROP_SESSION_EXPIRY, struct.pack(">I", session_expiry_s))])
    return _packet(DISCONNECT << 4, b"\x00" + props)


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

@dataclass(slots=True)
class Message:
    """An incoming PUBLISH. mid is 0 for QoS 0."""

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
            value, pos = int.from_bytes(buf[pos:pos + 4], "big"), pos + 4
        elif kind == _VARINT:
            value, pos = read_varint(buf, pos)
        elif kind in (_STRING, _BINARY):
            n = (buf[pos] << 8) | buf[pos + 1]
            raw = bytes(buf[pos + 2:pos + 2 + n])
            value, pos = (raw.decode("utf-8", "replace") if kind == _STRING else raw), pos + 2 + n
        else:  # user property: a string pair; several may occur
            k = (buf[pos] << 8) | buf[pos + 1]
            key = bytes(buf[pos + 2:pos + 2 + k]).decode("utf-8", "replace")
            pos += 2 + k
            v = (buf[pos] << 8) | buf[pos + 1]
            val = bytes(buf[pos + 2:pos + 2 + v]).decode("utf-8", "replace")
            pos += 2 + v
            props.setdefault(pid, []).append((key, val))  # type: ignore[union-attr]
            continue
        props[pid] = value
    if pos != end:
        raise MalformedPacket("properties overrun their length")
    return props, end


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for _ in range(4):
        if pos >= len(buf):
            raise MalformedPacket("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def decode_connack(body: bytes, protocol: int) -> ConnAck:
    if len(body) < 2:
        raise MalformedPacket("CONNACK too short")
    props: dict[int, object] = {}
    if protocol == 5 and len(body) > 2:
        props, _ = read_properties(body, 2)
    return ConnAck(bool(body[0] & 1), body[1], props)


def decode_suback(body: bytes, protocol: int) -> tuple[int, list[int]]:
    """SUBACK, or UNSUBACK (whose MQTT 3.1.1 form has no reason codes: the list is empty)."""
    mid = (body[0] << 8) | body[1]
    pos = 2
    if protocol == 5:
        _, pos = read_properties(body, pos)
    return mid, list(body[pos:])


class PacketStream:
    """Cuts a byte stream into packets. feed() returns what became complete.

    PUBLISH becomes a Message, a successful PUBACK its packet id, PINGRESP is counted; anything
    else (including a PUBACK that refuses with an MQTT 5 reason code) is a Packet.
    """

    __slots__ = ("protocol", "max_packet", "_buf")

    def __init__(self, protocol: int, max_packet: int = 268_435_455) -> None:
        self.protocol = protocol
        self.max_packet = max_packet
        self._buf = b""

    def feed(self, data: bytes) -> tuple[list[Message], list[int], list[Packet], int]:
        buf = self._buf + data if self._buf else data
        messages: list[Message] = []
        acked: list[int] = []
        others: list[Packet] = []
        try:
            used, pongs = self._cut(buf, messages, acked, others)
        except (IndexError, UnicodeDecodeError) as exc:
            raise MalformedPacket(f"a field overruns its packet or is not UTF-8 ({exc})") from exc
        self._buf = buf[used:] if used < len(buf) else b""
        return messages, acked, others, pongs

    def _cut(self, buf: bytes, messages: list, acked: list, others: list) -> tuple[int, int]:
        n = len(buf)
        i = pongs = 0
        v5 = self.protocol == 5
        while i + 2 <= n:
            b0 = buf[i]
            rl = buf[i + 1]
            p = i + 2
            if rl & 0x80:
                rl &= 0x7F
                shift, complete = 7, False
                while p < n:
                    b = buf[p]
                    p += 1
                    rl |= (b & 0x7F) << shift
                    if not b & 0x80:
                        complete = True
                        break
                    shift += 7
                    if shift > 21:
                        raise MalformedPacket("remaining length longer than 4 bytes")
                if not complete:
                    break  # the length itself has not fully arrived
            if rl > self.max_packet:
                raise MalformedPacket(f"packet of {rl} bytes exceeds the limit {self.max_packet}")
            end = p + rl
            if end > n:
                break
            kind = b0 >> 4
            if kind == PUBLISH:
                qos = (b0 >> 1) & 3
                if qos == 3:
                    raise MalformedPacket("PUBLISH with QoS 3")
                tl = (buf[p] << 8) | buf[p + 1]
                topic = buf[p + 2:p + 2 + tl].decode()
                p += 2 + tl
                mid = 0
                if qos:
                    mid = (buf[p] << 8) | buf[p + 1]
                    p += 2
                content_type = None
                if v5:
                    if buf[p] == 0:
                        p += 1
                    else:
                        props, p = read_properties(buf, p)
                        content_type = props.get(PROP_CONTENT_TYPE)
                if p > end:
                    raise MalformedPacket("PUBLISH header overruns the packet")
                messages.append(Message(topic, buf[p:end], qos, bool(b0 & 1), mid, bool(b0 & 8),
                                        content_type))
            elif kind == PUBACK and (rl == 2 or buf[p + 2] < 0x80):
                # Success, or MQTT 5 "no matching subscribers" (0x10); refusals become a Packet.
                acked.append((buf[p] << 8) | buf[p + 1])
            elif kind == PINGRESP:
                pongs += 1
            else:
                others.append(Packet(kind, b0 & 0x0F, bytes(buf[p:end])))
            i = end
        return i, pongs
