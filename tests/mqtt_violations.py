"""What a server must not send a client (the gateway's): packets that break MQTT 3.1.1 or 5, as
bytes, each with the error, reason code and words the codec refuses it with; and the CONNACK
that opens every stream a client reads."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from gateway.mqtt._packets import MalformedPacket, ProtocolViolation

CONNACKS = {4: b"\x20\x02\x00\x00", 5: b"\x20\x03\x00\x00\x00"}


def _raw(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte, len(body))) + body


@dataclass
class Pub:
    """A PUBLISH as a broker could send it, in either protocol's form."""

    first_byte: int
    topic: bytes
    mid: int | None = 5
    properties: bytes = b"\x00"  # MQTT 5 only

    def wire(self, protocol: int) -> bytes:
        body = struct.pack(">H", len(self.topic)) + self.topic
        if self.mid is not None:
            body += struct.pack(">H", self.mid)
        return _raw(self.first_byte, body + (self.properties if protocol == 5 else b"") + b"x")


# What a server must not send a client that subscribes with QoS 1 at most, never publishes with
# QoS 2 and has no AUTH method: (wire, protocols, exception, reason code, words of the message).
VIOLATIONS = [
    (Pub(0x34, b"a"), (4, 5), ProtocolViolation, 0x82, "QoS 2"),
    (Pub(0x36, b"a"), (4, 5), MalformedPacket, 0x81, "QoS 3"),
    (Pub(0x32, b"a", mid=0), (4, 5), ProtocolViolation, 0x82, "packet identifier 0"),
    (Pub(0x38, b"a", mid=None), (4, 5), MalformedPacket, 0x81, "DUP"),
    (Pub(0x32, b""), (4, 5), ProtocolViolation, 0x82, "empty topic"),
    (Pub(0x32, b"a\x00b"), (4, 5), MalformedPacket, 0x81, "U+0000"),
    (Pub(0x32, b"a/+"), (4, 5), ProtocolViolation, 0x82, "wildcard"),
    (Pub(0x30, b"a/#", mid=None), (4, 5), ProtocolViolation, 0x82, "wildcard"),
    (Pub(0x32, b"\xff\xfe"), (4, 5), MalformedPacket, 0x81, "UTF-8"),
    (Pub(0x32, b"a", properties=b"\x03\x23\x00\x01"), (5,), ProtocolViolation, 0x82, "topic alias"),
    (_raw(0x40, b"\x00"), (4, 5), MalformedPacket, 0x81, "PUBACK of 1 bytes"),
    (_raw(0x40, b""), (4, 5), MalformedPacket, 0x81, "PUBACK of 0 bytes"),
    (_raw(0x40, b"\x00\x01\x00"), (4,), MalformedPacket, 0x81, "PUBACK of 3 bytes"),
    (_raw(0x41, b"\x00\x01"), (4, 5), MalformedPacket, 0x81, "flags"),
    (_raw(0xD0, b"\x00"), (4, 5), MalformedPacket, 0x81, "PINGRESP of 1 bytes"),
    (
        _raw(0x10, b"\x00\x04MQTT\x05\x02\x00\x1e\x00\x00\x00"),
        (4, 5),
        ProtocolViolation,
        0x82,
        "CONNECT",
    ),
    (_raw(0x82, b"\x00\x01\x00\x01a\x01"), (4, 5), ProtocolViolation, 0x82, "SUBSCRIBE"),
    (_raw(0xA2, b"\x00\x01\x00\x01a"), (4, 5), ProtocolViolation, 0x82, "UNSUBSCRIBE"),
    (_raw(0xC0, b""), (4, 5), ProtocolViolation, 0x82, "PINGREQ"),
    (_raw(0x50, b"\x00\x01"), (4, 5), ProtocolViolation, 0x82, "PUBREC"),
    (_raw(0x62, b"\x00\x01"), (4, 5), ProtocolViolation, 0x82, "PUBREL"),
    (_raw(0x70, b"\x00\x01"), (4, 5), ProtocolViolation, 0x82, "PUBCOMP"),
    (_raw(0xF0, b"\x18\x00"), (5,), ProtocolViolation, 0x82, "AUTH"),
    (_raw(0xF0, b""), (4,), MalformedPacket, 0x81, "reserved packet type 15"),
    (_raw(0xE0, b""), (4,), ProtocolViolation, 0x82, "MQTT 3.1.1 server"),
    (_raw(0x00, b""), (4, 5), MalformedPacket, 0x81, "reserved packet type 0"),
    (_raw(0x20, b"\x00\x00\x00"), (4, 5), ProtocolViolation, 0x82, "second CONNACK"),
    (_raw(0x21, b"\x00\x00"), (4, 5), MalformedPacket, 0x81, "flags"),
    (_raw(0x93, b"\x00\x01\x00\x01"), (4, 5), MalformedPacket, 0x81, "flags"),
]


def violations(protocols=(4, 5)):
    """VIOLATIONS as pytest parameters (wire, protocol, error, code, words), per protocol."""
    return [
        pytest.param(
            w.wire(p) if isinstance(w, Pub) else w,
            p,
            e,
            c,
            words,
            id=f"v{p}-{words}-{(w.first_byte if isinstance(w, Pub) else w[0]):02x}",
        )
        for w, ps, e, c, words in VIOLATIONS
        for p in ps
        if p in protocols
    ]
