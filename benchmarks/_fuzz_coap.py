"""Seeded CoAP datagrams for benchmarks/fuzz.py, and the UDP peers that send them: valid uplinks
mixed with refused ones (content-formats, tokens, paths, methods, options, Block1 transfers,
payloads from the MQTT fuzzer) and datagrams that are not CoAP at all.

Messages are encoded here, not by aiocoap, so that they can break RFC 7252's rules; replies are
decoded with aiocoap and matched to requests by message id and token.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

import aiocoap
import cbor2
import orjson

from benchmarks._fuzz_payloads import Devices, PayloadFuzzer, valid_sample
from telemetry.schema import MAX_PAYLOAD_BYTES
from telemetry.senml import encode_pack

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST = 1, 2
# Option numbers (RFC 7252, 7959, 7641, 7967, 8613, 9175).
IF_MATCH, URI_HOST, ETAG, OBSERVE, URI_PORT, OSCORE = 1, 3, 4, 6, 7, 9
URI_PATH, CONTENT_FORMAT, MAX_AGE, URI_QUERY, ACCEPT = 11, 12, 14, 15, 17
BLOCK2, BLOCK1, PROXY_URI, SIZE1, NO_RESPONSE, ECHO = 23, 27, 35, 60, 258, 252
FORMATS = {"json": 50, "cbor": 60, "senml+json": 110, "senml+cbor": 112}
MEDIA_TYPES = {
    50: "application/json",
    60: "application/cbor",
    110: "application/senml+json",
    112: "application/senml+cbor",
}
# Codes a request of each kind may get; SUBMITTED: those after which the pipeline has the
# message (its samples and rejections are counted there or in the ingress's check).
SUBMITTED = ("2.04", "4.00")


def uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""


def block(num: int, more: bool, szx: int) -> bytes:
    return uint((num << 4) | (8 if more else 0) | szx)


def _extended(n: int) -> tuple[int, bytes]:
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes((n - 13,))
    return 14, (n - 269).to_bytes(2, "big")


def encode(
    mtype: int,
    code: int,
    mid: int,
    token: bytes,
    options: list[tuple[int, bytes]],
    payload: bytes = b"",
    *,
    version: int = 1,
    tkl: int | None = None,
) -> bytes:
    """A CoAP message; options in any order are sorted, as the encoding needs."""
    out = bytearray(
        (
            (version << 6) | (mtype << 4) | (len(token) if tkl is None else tkl),
            code,
            mid >> 8,
            mid & 0xFF,
        )
    )
    out += token
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta, dext = _extended(number - last)
        length, lext = _extended(len(value))
        out.append((delta << 4) | length)
        out += dext + lext + value
        last = number
    if payload:
        out += b"\xff" + payload
    return bytes(out)


@dataclass
class CoapRequest:
    """One request (or a Block1 transfer: several) as the fuzzer means it; the peer gives it a
    message id and token when it sends it."""

    family: str
    options: list[tuple[int, bytes]]
    payload: bytes = b""
    mtype: int = CON
    code: int = POST
    expect: tuple[str, ...] = ()  # codes it should get; () = any
    valid_samples: tuple[tuple[str, int], ...] = ()
    # (kind, device_id, payload, media type): what the pipeline decodes if it is submitted.
    decode: tuple[str, str, bytes, str | None] | None = None
    blocks: list[CoapRequest] = field(default_factory=list)  # a Block1 transfer's requests
    raw: bytes | None = None  # a datagram sent as is (no exchange: "fire and forget")
    twice: bool = False  # sent twice with the same message id (a retransmission)
    quiet: bool = False  # expected to get no answer at all: waited for briefly, sent once
    retry_on_503: bool = False  # a valid uplink: sent again after 5.03, as a device does

    def wire(self, mid: int, token: bytes) -> bytes:
        return encode(self.mtype, self.code, mid, token, self.options, self.payload)

    def describe(self) -> dict:
        """The request in short, for a report."""
        return {
            "options": [(n, v[:40].hex()) for n, v in self.options][:12],
            "payload_head_hex": self.payload[:64].hex(),
            "mtype": self.mtype,
            "code": self.code,
            "blocks": len(self.blocks),
            "raw_head_hex": (self.raw or b"")[:32].hex(),
        }


def _path(root: str, device: str, resource: str) -> list[tuple[int, bytes]]:
    return [(URI_PATH, p.encode()) for p in (*root.split("/"), device, *resource.split("/"))]


class CoapFuzzer:
    """next() makes one request of a family drawn by weight, reproducibly from the seed."""

    FAMILIES: ClassVar[dict[str, float]] = {
        "valid": 0.40,
        "payload": 0.20,
        "content_format": 0.05,
        "token": 0.07,
        "path_method": 0.05,
        "options": 0.06,
        "block1": 0.04,
        "retransmission": 0.03,
        "not_coap": 0.10,
    }

    def __init__(
        self,
        seed: int,
        root: str,
        tokens: dict[str, str],
        devices: Devices,
        payloads: PayloadFuzzer,
        now_ms: int,
    ) -> None:
        self.rng = random.Random(seed)
        self.root = root
        self.tokens = tokens
        self.valid_devices = devices.coap_valid
        self.fuzz_devices = devices.coap_fuzz
        self.payloads = payloads
        self._t = {d: now_ms - 3_000_000 + i * 83 for i, d in enumerate(self.valid_devices)}
        self._names = list(self.FAMILIES)
        self._weights = list(self.FAMILIES.values())

    def next(self) -> CoapRequest:
        family = self.rng.choices(self._names, self._weights)[0]
        return getattr(self, family)()

    def _auth(self, device: str) -> list[tuple[int, bytes]]:
        return [(URI_QUERY, f"t={self.tokens[device]}".encode())]

    def _uplink(self, family: str) -> CoapRequest:
        """A valid uplink of a valid device (1 to 3 samples) in one of the four formats."""
        rng = self.rng
        device = rng.choice(self.valid_devices)
        samples = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            self._t[device] += 1000
            samples.append(valid_sample(rng, self._t[device], False))
        fmt = rng.choice(list(FORMATS))
        body: object = samples[0] if len(samples) == 1 else samples
        payload = (
            orjson.dumps(body)
            if fmt == "json"
            else cbor2.dumps(body)
            if fmt == "cbor"
            else encode_pack(samples, cbor=fmt == "senml+cbor", base_name=f"{device}/")
        )
        options = _path(self.root, device, "telemetry") + self._auth(device)
        media = None
        if fmt.startswith("senml") or rng.random() < 0.7:
            options.append((CONTENT_FORMAT, uint(FORMATS[fmt])))
            media = MEDIA_TYPES[FORMATS[fmt]]
        return CoapRequest(
            family,
            options,
            payload,
            expect=("2.04",),
            valid_samples=tuple((device, s["t"]) for s in samples),
            decode=("telemetry", device, payload, media),
            retry_on_503=True,
        )

    # --- families ---------------------------------------------------------------------------

    def valid(self) -> CoapRequest:
        req = self._uplink("valid")
        if self.rng.random() < 0.1:  # non-confirmable: answered non-confirmable
            req.mtype = NON
        return req

    def payload(self) -> CoapRequest:
        """A payload of the MQTT fuzzer's telemetry or event families, under a fitting or a
        random accepted content-format."""
        rng = self.rng
        while True:
            m = self.payloads.next()
            if m.kind in ("telemetry", "event") and len(m.payload) <= 1000 and m.family != "topic":
                break
        device = rng.choice(self.fuzz_devices)
        resource = m.kind
        cf = {
            "application/json": 50,
            "application/cbor": 60,
            "application/senml+json": 110,
            "application/senml+cbor": 112,
        }.get((m.content_type or "").split(";")[0])
        if rng.random() < 0.2:
            cf = rng.choice((None, 50, 60, 110, 112))
        options = _path(self.root, device, resource) + self._auth(device)
        if cf is not None:
            options.append((CONTENT_FORMAT, uint(cf)))
        if resource == "event" and cf in (110, 112):
            return CoapRequest("payload", options, m.payload, expect=("4.15",))
        media = MEDIA_TYPES.get(cf)
        return CoapRequest(
            "payload",
            options,
            m.payload,
            expect=SUBMITTED,
            decode=(resource, device, m.payload, media),
        )

    def content_format(self) -> CoapRequest:
        rng = self.rng
        device = rng.choice(self.fuzz_devices)
        resource = rng.choice(("telemetry", "event"))
        cf = rng.choice(
            (0, 40, 41, 42, 47, 51, 61, 111, 113, 11050, 65535, 2**24 - 1, 2**32 - 1)
            if resource == "telemetry"
            else (0, 110, 112, 111, 65535)
        )
        payload = orjson.dumps(valid_sample(rng, self._t[self.valid_devices[0]] - 10**6, False))
        options = _path(self.root, device, resource) + self._auth(device)
        return CoapRequest(
            "content_format",
            options + [(CONTENT_FORMAT, uint(cf))],
            payload,
            expect=("4.15",) if cf < 2**16 else (),
        )

    def token(self) -> CoapRequest:
        rng = self.rng
        device = rng.choice(self.fuzz_devices)
        other = rng.choice(self.valid_devices)
        payload = orjson.dumps(valid_sample(rng, self._t[other] - 10**6, False))
        path = _path(self.root, device, "telemetry")
        query = rng.choice(
            (
                [],
                [(URI_QUERY, b"t=")],
                [(URI_QUERY, b"t=wrong")],
                [(URI_QUERY, f"t={self.tokens[other]}".encode())],  # another device's token
                [(URI_QUERY, f"T={self.tokens[device]}".encode())],
                [(URI_QUERY, b"t=" + b"x" * 250)],
                [(URI_QUERY, f"t={self.tokens[device]}x".encode())],
                [
                    (URI_QUERY, b"x=1"),
                    (URI_QUERY, b"t=wrong"),
                    (URI_QUERY, f"t={self.tokens[device]}".encode()),
                ],
                [(URI_QUERY, "t=\u00e9".encode())],
            )
        )
        r = rng.random()
        if r < 0.15:  # a device that is not registered, or an id that is not one
            path = _path(
                self.root,
                rng.choice(("fz-ghost-0001", "a b", "x" * 65, "", "$x", "é")),
                "telemetry",
            )
            query = [(URI_QUERY, b"t=abc")]
        elif r < 0.25:  # text options that are not UTF-8: not CoAP the gateway can read
            auth = self._auth(device)
            options = rng.choice(
                (
                    path + [(URI_QUERY, b"t=\xff\xfe")],
                    path[:2] + [(URI_PATH, b"fz\xff"), path[3]] + auth,
                    path + auth + [(URI_HOST, b"\xc0\xaf")],
                )
            )
            return CoapRequest("token", options, payload, expect=("none",), quiet=True)
        return CoapRequest("token", path + query, payload, expect=("4.01",))

    def path_method(self) -> CoapRequest:
        rng = self.rng
        device = rng.choice(self.fuzz_devices)
        payload = orjson.dumps(valid_sample(rng, self._t[self.valid_devices[0]] - 10**6, False))
        auth = self._auth(device)
        r = rng.random()
        if r < 0.4:  # not a POST
            code = rng.choice((1, 3, 4, 5, 6, 7))
            return CoapRequest(
                "path_method",
                _path(self.root, device, "telemetry") + auth,
                payload,
                code=code,
                expect=("4.05",),
            )
        if r < 0.85:
            paths = (
                [],
                [(URI_PATH, b"fg")],
                _path(self.root, device, ""),
                _path(self.root, device, "telemetry/x"),
                _path("fg/v2", device, "telemetry"),
                _path(self.root, device, "status"),
                _path(self.root, device, "cmd"),
                [(URI_PATH, b"")],
                [(URI_PATH, b".well-known"), (URI_PATH, b"core")],
            )
            return CoapRequest(
                "path_method", list(rng.choice(paths)) + auth, payload, expect=("4.04",)
            )
        # A command result the command service has never heard of, or none at all.
        result = rng.choice(
            (
                (b'{"id": "0b8e0000-0000-0000-0000-000000000000", "status": "succeeded", "t": 1}'),
                b"{}",
                b"x",
                b"[" * 2000,
                b'{"id": 1, "status": "succeeded"}',
                b"\xa0",
                b"",
                b"a" * 5000,
            )
        )
        return CoapRequest("path_method", _path(self.root, device, "cmd/result") + auth, result)

    def options(self) -> CoapRequest:
        """A valid uplink of a fuzz device with options RFC 7252 lets a server refuse or ignore."""
        rng = self.rng
        device = rng.choice(self.fuzz_devices)
        t = self._t[self.valid_devices[0]] - rng.randrange(10**6, 2 * 10**6)
        payload = orjson.dumps(valid_sample(rng, t, False))
        options = _path(self.root, device, "telemetry") + self._auth(device)
        extra = rng.choice(
            (
                [(2049, b"x")],
                [(65001, b"")],
                [(OSCORE, b"\x09\x00")],
                [(2048, b"ignored")],
                [(URI_HOST, b"gw.example")],
                [(URI_PORT, uint(5683))],
                [(IF_MATCH, b"\x01")],
                [(ETAG, b"\x01\x02")],
                [(OBSERVE, b"")],
                [(ACCEPT, uint(60))],
                [(ACCEPT, uint(9999))],
                [(MAX_AGE, uint(1))],
                [(PROXY_URI, b"coap://elsewhere/x")],
                [(39, b"coap")],
                [(CONTENT_FORMAT, uint(50)), (CONTENT_FORMAT, uint(60))],
                [(CONTENT_FORMAT, b"\x00\x00\x32")],
                [(CONTENT_FORMAT, b"\x00\x00\x00\x00\x00\x32")],
                [(URI_PATH, b"x" * 300)],
                [(URI_QUERY, b"y" * 300)],
                [(BLOCK2, block(0, False, 2))],
                [(SIZE1, uint(10))],
                [(NO_RESPONSE, uint(8))],
                [(ECHO, b"e" * 41)],
                [(292, b"tag")],
                [(16, uint(0))],
                [(16, b"\xff\xff")],
                [(BLOCK1, block(0, False, 7))],
                [(BLOCK1, b"\x00\x00\x00\x00")],
                [(URI_PATH, b"\x00")],
                [(1000, b"")],
            )
        )
        return CoapRequest(
            "options", options + extra, payload, decode=("telemetry", device, payload, None)
        )

    def block1(self) -> CoapRequest:
        """Block1 transfers: a valid batch in blocks, one announced or grown too large, one
        starting in the middle."""
        rng = self.rng
        r = rng.random()
        if r < 0.5:  # valid, to a valid device: its samples must be stored
            device = rng.choice(self.valid_devices)
            samples = []
            for _ in range(rng.randrange(5, 30)):
                self._t[device] += 1000
                samples.append(valid_sample(rng, self._t[device], False))
            payload = orjson.dumps(samples)
            szx = rng.choice((2, 3, 4, 5, 6))
            size = 16 << szx
            base = (
                _path(self.root, device, "telemetry")
                + self._auth(device)
                + [(CONTENT_FORMAT, uint(50))]
            )
            blocks = []
            for num in range((len(payload) + size - 1) // size):
                more = (num + 1) * size < len(payload)
                opts = base + [(BLOCK1, block(num, more, szx))]
                if num == 0:
                    opts.append((SIZE1, uint(len(payload))))
                blocks.append(
                    CoapRequest(
                        "block1",
                        opts,
                        payload[num * size : (num + 1) * size],
                        expect=("2.31",) if more else ("2.04",),
                    )
                )
            return CoapRequest(
                "block1",
                [],
                expect=("2.04",),
                blocks=blocks,
                retry_on_503=True,
                valid_samples=tuple((device, s["t"]) for s in samples),
                decode=("telemetry", device, payload, "application/json"),
            )
        device = rng.choice(self.fuzz_devices)
        base = _path(self.root, device, "telemetry") + self._auth(device)
        chunk = b"[" + b" " * 1023
        if r < 0.7:  # Size1 over the limit
            return CoapRequest(
                "block1",
                base + [(BLOCK1, block(0, True, 6)), (SIZE1, uint(MAX_PAYLOAD_BYTES + 1))],
                chunk,
                expect=("4.13",),
            )
        if r < 0.85:  # a block past the limit
            return CoapRequest(
                "block1", base + [(BLOCK1, block(256, True, 6))], chunk, expect=("4.13", "4.08")
            )
        return CoapRequest(
            "block1",
            base + [(BLOCK1, block(rng.randrange(1, 50), True, 6))],
            chunk,
            expect=("4.08",),
        )

    def retransmission(self) -> CoapRequest:
        req = self._uplink("retransmission")
        req.twice = True
        return req

    def not_coap(self) -> CoapRequest:
        """Datagrams sent without an exchange: garbage, truncated or malformed CoAP, pings,
        stray acknowledgements and responses."""
        rng = self.rng
        device = rng.choice(self.fuzz_devices)
        mid = rng.randrange(0x10000)
        # Never a POST the gateway can read: it would count one as a refused uplink, and
        # nobody here waits for the answer that says which. (POSTs refused for their path,
        # token or options are the other families'.)
        good = encode(
            CON,
            GET,
            mid,
            b"\x01\x02",
            _path(self.root, device, "telemetry") + [(URI_QUERY, b"t=not-the-token")],
            b'{"t": 1}',
        )
        raw = rng.choice(
            (
                b"",
                rng.randbytes(1),
                rng.randbytes(3),
                bytes((rng.randrange(0x40),)) + rng.randbytes(rng.randrange(3, 1200)),  # version 0
                good[: rng.randrange(1, len(good))],
                bytes((0x00,)) + good[1:],
                bytes((0x80,)) + good[1:],
                bytes((0xC0,)) + good[1:],
                bytes((0x49,)) + good[1:] + b"\x00" * 9,
                bytes((0x4F,)) + good[1:],
                good[:4] + b"\x01\x02" + b"\xf0",
                good[:6] + b"\xff",
                encode(CON, 0, mid, b"\x01", []),
                encode(CON, 0, mid, b"", []),
                encode(CON, 0, mid, b"", [], b"payload"),
                encode(NON, 0, mid, b"", []),
                encode(ACK, 0, mid, b"", []),
                encode(RST, 0, mid, b"", []),
                encode(CON, 69, mid, b"\x07", []),
                encode(NON, 132, mid, b"\x07", [], b"x"),
                encode(CON, GET, mid, b"\x01", [(URI_PATH, b"x")] * 300),
                encode(CON, 0xFF, mid, b"", []),
                encode(CON, GET, mid, b"", [], b"\xff" * 10),
                good + rng.randbytes(16),
                good.replace(b"\xff", b"\xf0", 1),
            )
        )
        return CoapRequest("not_coap", [], raw=raw)


# --- the sending side ---------------------------------------------------------------------------


@dataclass
class CoapOutcome:
    """What the fuzzer's CoAP traffic got."""

    requests: Counter = field(default_factory=Counter)  # by family
    datagrams: int = 0
    codes: Counter = field(default_factory=Counter)  # (family, code)
    unexpected: Counter = field(default_factory=Counter)  # (family, code) outside expect
    examples: dict = field(default_factory=dict)  # (family, code) -> request, shown once
    retransmissions: int = 0
    resent_after_503: int = 0
    stray_replies: Counter = field(default_factory=Counter)  # replies nobody waited for
    not_answered_valid: int = 0  # valid uplinks that never got a 2.04


class CoapPeer(asyncio.DatagramProtocol):
    """One UDP socket and its exchanges, one at a time (as a device's stack does)."""

    def __init__(self, rng: random.Random, outcome: CoapOutcome) -> None:
        self.rng = rng
        self.outcome = outcome
        self.transport: asyncio.DatagramTransport | None = None
        self._mid = rng.randrange(0x10000)
        self._acks: dict[int, asyncio.Future] = {}
        self._responses: dict[bytes, asyncio.Future] = {}

    @classmethod
    async def open(cls, host: str, port: int, rng: random.Random, outcome: CoapOutcome) -> CoapPeer:
        _, peer = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: cls(rng, outcome), remote_addr=(host, port)
        )
        return peer

    def connection_made(self, transport) -> None:
        self.transport = transport

    def error_received(self, exc: Exception) -> None:
        pass

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            msg = aiocoap.Message.decode(data)
        except Exception:
            self.outcome.stray_replies["undecodable"] += 1
            return
        if msg.mtype in (aiocoap.CON, aiocoap.NON) and msg.code.is_response():
            if msg.mtype == aiocoap.CON:  # a separate response: acknowledged
                self.transport.sendto(encode(ACK, 0, msg.mid, b"", []))
            fut = self._responses.get(msg.token)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                self.outcome.stray_replies[f"{msg.mtype.name} {msg.code.dotted}"] += 1
        elif msg.mtype in (aiocoap.ACK, aiocoap.RST):
            fut = self._acks.get(msg.mid)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                self.outcome.stray_replies[f"{msg.mtype.name} {msg.code.dotted}"] += 1
        else:
            self.outcome.stray_replies[f"{msg.mtype.name} {msg.code.dotted}"] += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def fire(self, data: bytes) -> None:
        self.outcome.datagrams += 1
        self.transport.sendto(data)

    _last_payload: bytes = b""  # of the last final response (a 5.03's reason)

    async def exchange(
        self, req: CoapRequest, *, ack_timeout_s: float = 4.0, response_timeout_s: float = 40.0
    ) -> str:
        """Send one request; its final response code ('2.04', 'RST', 'none')."""
        if req.quiet:
            ack_timeout_s, response_timeout_s = 1.0, 1.0
        loop = asyncio.get_running_loop()
        mid, token = self._next_mid(), self.rng.randbytes(4)
        wire = req.wire(mid, token)
        ack = self._acks[mid] = loop.create_future()
        response = self._responses[token] = loop.create_future()
        try:
            if req.mtype == NON:
                self.fire(wire)
                reply = await _within(response, response_timeout_s / 4)
            else:
                reply = await self._confirmed(req, wire, ack, response, ack_timeout_s)
                if reply is not None and reply.mtype == aiocoap.ACK and reply.code == aiocoap.EMPTY:
                    reply = await _within(response, response_timeout_s)  # a separate response
        finally:
            self._acks.pop(mid, None)
            self._responses.pop(token, None)
        if reply is None:
            return "none"
        if reply.mtype == aiocoap.RST:
            return "RST"
        self._last_payload = reply.payload
        return reply.code.dotted

    async def _confirmed(
        self,
        req: CoapRequest,
        wire: bytes,
        ack: asyncio.Future,
        response: asyncio.Future,
        timeout: float,
    ) -> aiocoap.Message | None:
        """Send a CON (again, RFC 7252 style, up to 4 times) until something proves it arrived:
        its ACK (empty, or carrying the response), a RST, or a separate response."""
        for sends in range(1 if req.quiet else 5):
            if sends:
                self.outcome.retransmissions += 1
            self.fire(wire)
            if req.twice and not sends:
                self.fire(wire)
            try:
                return await asyncio.wait_for(asyncio.shield(ack), timeout)
            except TimeoutError:
                if response.done():  # a separate response whose ACK got lost
                    return response.result()
        return None

    async def send(self, req: CoapRequest) -> tuple[str, int]:
        """A request or transfer to its end: (final code, how often the pipeline got it).

        A valid uplink answered 5.03 is sent again, as a device would (sooner than Max-Age:
        this is a test); a 5.03 `store_unavailable` came after the message was submitted, so
        the pipeline decodes and counts it even though no 2.04 came."""
        out = self.outcome
        out.requests[req.family] += 1
        if req.raw is not None:
            self.fire(req.raw)
            return "sent", 0
        submissions = 0
        for attempt in range(20):
            self._last_payload = b""
            if req.blocks:
                for part in req.blocks:
                    code = await self.exchange(part)
                    if code != "2.31":
                        break
            else:
                code = await self.exchange(req)
            if code in SUBMITTED or (code == "5.03" and self._last_payload == b"store_unavailable"):
                submissions += 1
            if code == "5.03" and req.retry_on_503 and attempt < 19:
                out.resent_after_503 += 1
                await asyncio.sleep(0.5)
                continue
            break
        return code, submissions


async def _within(fut: asyncio.Future, timeout: float) -> aiocoap.Message | None:
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return None
