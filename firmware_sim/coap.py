"""Simulated sleeping NB-IoT e-bike locks: wake, POST the buffered sample(s) over CoAP, read the
response (a command may be piggybacked on it), answer the command, sleep (docs/coap.md).

Each device has its own UDP socket and does what a constrained CoAP client does: one request at
a time (NSTART 1), confirmable messages retransmitted with RFC 7252's exponential back-off, a
separate response acknowledged, Block1 for a payload larger than one block. Messages are encoded
with aiocoap's codec; the exchange logic is this module's (aiocoap's client context serialises
all requests to one server, which many devices behind one socket are not).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiocoap
import cbor2
import numpy as np
import orjson
from aiocoap.optiontypes import BlockOption

from firmware_sim.model import FleetModel
from firmware_sim.payloads import CBOR, JSON, encode_row, sample_row
from firmware_sim.protocol import COAP_FORMATS, MAX_SAMPLES_PER_BATCH, TOPIC_ROOT, coap_path
from firmware_sim.roster import Roster
from firmware_sim.senml import senml_pack
from firmware_sim.tcu import RESULT, SAMPLE, FleetFirmware, wall_clock_ms

log = logging.getLogger(__name__)

ENCODINGS = COAP_FORMATS  # uplink encodings and their CoAP Content-Formats


class CoapTimeout(Exception):
    """No response: the retransmissions were exhausted (or the separate response never came)."""


@dataclass(frozen=True, slots=True)
class Response:
    code: aiocoap.Code
    payload: bytes
    content_format: int | None
    max_age: int | None
    retransmissions: int
    separate: bool = False  # came after an empty ACK instead of piggybacked on the ACK

    @property
    def ok(self) -> bool:
        return self.code == aiocoap.CHANGED


def _resolve(fut: asyncio.Future | None, value) -> None:
    if fut is not None and not fut.done():
        fut.set_result(value)


class CoapEndpoint(asyncio.DatagramProtocol):
    """One device's UDP socket and its one exchange at a time (a CoAP client, RFC 7252/7959)."""

    def __init__(
        self,
        *,
        ack_timeout_s: float = 2.0,
        ack_random_factor: float = 1.5,
        max_retransmit: int = 4,
        response_timeout_s: float = 30.0,
        block_size: int = 512,
        rng: random.Random | None = None,
    ) -> None:
        self.ack_timeout_s = ack_timeout_s
        self.ack_random_factor = ack_random_factor
        self.max_retransmit = max_retransmit
        self.response_timeout_s = response_timeout_s
        self.block_szx = max(0, min(6, block_size.bit_length() - 5))  # 16 << szx bytes
        self._rng = rng or random.Random()
        self._mid = self._rng.randrange(0x10000)
        self._transport: asyncio.DatagramTransport | None = None
        # The exchange in progress: its MID and token, the ACK (or anything proving receipt) and
        # the response, which may come piggybacked on the ACK or separately, before or after it.
        self._mid_sent: int | None = None
        self._token: bytes | None = None
        self._acked: asyncio.Future | None = None
        self._response: asyncio.Future | None = None

    @classmethod
    async def open(cls, host: str, port: int, **kw) -> CoapEndpoint:
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: cls(**kw), remote_addr=(host, port)
        )
        return endpoint

    def connection_made(self, transport) -> None:
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            msg = aiocoap.Message.decode(data)
        except Exception:
            return  # not CoAP: ignored, as a device would
        if msg.mtype in (aiocoap.CON, aiocoap.NON) and msg.code.is_response():
            if msg.mtype == aiocoap.CON:  # a separate response: acknowledge it (every copy)
                self._send(aiocoap.Message(code=aiocoap.EMPTY, _mtype=aiocoap.ACK, _mid=msg.mid))
            if msg.token == self._token:
                _resolve(self._acked, None)
                _resolve(self._response, msg)
        elif msg.mtype == aiocoap.ACK and msg.mid == self._mid_sent:
            _resolve(self._acked, None)
            if msg.code != aiocoap.EMPTY:
                _resolve(self._response, msg)  # piggybacked

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the server is down: the retransmissions go on

    def _send(self, msg: aiocoap.Message) -> None:
        if self._transport is not None:
            self._transport.sendto(msg.encode())

    async def post(
        self,
        path: Sequence[str],
        payload: bytes,
        *,
        query: Sequence[str] = (),
        content_format: int | None = None,
        accept: int | None = None,
    ) -> Response:
        """A confirmable POST (in Block1 blocks if it does not fit one); the final response."""
        size = 16 << self.block_szx
        if len(payload) <= size:
            return await self._exchange(path, query, payload, content_format, accept, None, None)
        retransmissions = 0
        num = 0
        while True:
            chunk = payload[num * size : (num + 1) * size]
            more = (num + 1) * size < len(payload)
            block = BlockOption.BlockwiseTuple(num, more, self.block_szx)
            resp = await self._exchange(
                path,
                query,
                chunk,
                content_format,
                accept,
                block,
                len(payload) if num == 0 else None,
            )
            retransmissions += resp.retransmissions
            if not more or resp.code != aiocoap.CONTINUE:
                return Response(
                    resp.code,
                    resp.payload,
                    resp.content_format,
                    resp.max_age,
                    retransmissions,
                    resp.separate,
                )
            num += 1

    async def _exchange(
        self, path, query, payload, content_format, accept, block1, size1
    ) -> Response:
        loop = asyncio.get_running_loop()
        self._mid = (self._mid + 1) & 0xFFFF
        token = self._rng.randbytes(4)
        msg = aiocoap.Message(
            code=aiocoap.POST, payload=payload, _mtype=aiocoap.CON, _mid=self._mid, _token=token
        )
        msg.opt.uri_path = tuple(path)
        msg.opt.uri_query = tuple(query)
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        if block1 is not None:
            msg.opt.block1 = block1
        if size1 is not None:
            msg.opt.size1 = size1
        self._mid_sent, self._token = self._mid, token
        self._acked, self._response = loop.create_future(), loop.create_future()
        timeout = self.ack_timeout_s * self._rng.uniform(1.0, self.ack_random_factor)
        sent = 0
        try:
            while True:
                self._send(msg)
                try:
                    await asyncio.wait_for(asyncio.shield(self._acked), timeout)
                    break
                except TimeoutError:
                    if sent >= self.max_retransmit:
                        raise CoapTimeout(f"no ACK after {sent} retransmissions") from None
                    sent += 1
                    timeout *= 2
            try:  # at once when piggybacked; else the separate response
                reply = await asyncio.wait_for(self._response, self.response_timeout_s)
            except TimeoutError:
                raise CoapTimeout("separate response never came") from None
        finally:
            self._mid_sent = self._token = self._acked = self._response = None
        cf = reply.opt.content_format
        return Response(
            reply.code,
            reply.payload,
            None if cf is None else int(cf),
            reply.opt.max_age,
            sent,
            reply.mtype != aiocoap.ACK,
        )


@dataclass
class CoapFleetOptions:
    """A fleet of sleeping CoAP locks; the defaults are a small demo fleet."""

    vehicles: int = 10
    car_share: float = 0.0  # NB-IoT locks: e-bikes
    # Shares by vehicle type (specs.parse_mix: {"ebike": 0.6, "scooter": 0.3, "car": 0.1}),
    # spread evenly over the ids; replaces car_share when given.
    mix: dict[str, float] | None = None
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 5683
    path_root: str = TOPIC_ROOT
    encoding: str = "senml+cbor"  # one of ENCODINGS
    wake_interval_s: float = 300.0  # simulated time between two wakes (one sample each)
    start_ms: int | None = None  # simulated clock at the start (default: rounds end now)
    rounds: int = 1  # for start_ms's default
    device_id_pattern: str = "lock-{n:04d}"
    vehicle_ref_pattern: str = "bike-{n:04d}"
    ack_timeout_s: float = 2.0
    max_retransmit: int = 4
    block_size: int = 512
    max_commands_per_wake: int = 4  # commands answered before going back to sleep
    track_keys: bool = True

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding is one of {sorted(ENCODINGS)}")


@dataclass
class CoapFleetStats:
    wakes: int = 0
    uplinks: int = 0
    samples_acked: int = 0
    responses: dict[str, int] = field(default_factory=dict)  # "2.04", "5.03", "timeout", ...
    retransmissions: int = 0
    separate_responses: int = 0  # telemetry answered after an empty ACK (> ~100 ms)
    commands_received: int = 0
    results_posted: int = 0
    latencies_s: list[float] = field(default_factory=list)  # request -> 2.04 of telemetry
    acked_keys: set[tuple[str, int]] = field(default_factory=set)

    def count(self, what: str) -> None:
        self.responses[what] = self.responses.get(what, 0) + 1


class SleepingLock:
    """One device: its token, its socket and the samples not yet acknowledged with a 2.04."""

    def __init__(self, fleet: CoapFleet, index: int, device_id: str, token: str | None) -> None:
        self.fleet = fleet
        self.index = index
        self.device_id = device_id
        self.token = token
        self.buffer: list[dict] = []
        self.endpoint: CoapEndpoint | None = None

    @property
    def query(self) -> tuple[str, ...]:
        return (f"t={self.token}",) if self.token else ()

    def path(self, leaf: str) -> tuple[str, ...]:
        return coap_path(self.fleet.options.path_root, self.device_id, leaf)

    async def wake(self) -> Response | None:
        """Send what is buffered (up to 1000 samples), handle a piggybacked command; the
        telemetry response, or None after a timeout."""
        fleet, o, stats = self.fleet, self.fleet.options, self.fleet.stats
        stats.wakes += 1
        if self.endpoint is None:
            self.endpoint = await CoapEndpoint.open(
                o.host,
                o.port,
                ack_timeout_s=o.ack_timeout_s,
                max_retransmit=o.max_retransmit,
                block_size=o.block_size,
                rng=random.Random(hash((o.seed, self.index))),
            )
        if not self.buffer:
            return None
        samples = self.buffer[:MAX_SAMPLES_PER_BATCH]
        payload = fleet.encode(samples)
        started = time.monotonic()
        stats.uplinks += 1
        try:
            resp = await self.endpoint.post(
                self.path("telemetry"),
                payload,
                query=self.query,
                content_format=ENCODINGS[o.encoding],
            )
        except CoapTimeout as exc:
            stats.count("timeout")
            log.info("coap_uplink_timeout", extra={"device_id": self.device_id, "error": str(exc)})
            return None
        stats.retransmissions += resp.retransmissions
        stats.separate_responses += resp.separate
        stats.count(str(resp.code.dotted))
        if resp.code == aiocoap.CHANGED:
            stats.latencies_s.append(time.monotonic() - started)
            del self.buffer[: len(samples)]
            stats.samples_acked += len(samples)
            if o.track_keys:
                stats.acked_keys.update((self.device_id, s["t"]) for s in samples)
        elif resp.code.is_successful() or resp.code.class_ == 4:
            del self.buffer[: len(samples)]  # refused for good: sending it again changes nothing
        await self._commands(resp)
        return resp

    async def _commands(self, resp: Response) -> None:
        """Execute a command that came with a response and post what the firmware answers
        (its result; after a locate or a state change, a fresh sample). A response to those
        posts may carry the next command."""
        fleet, stats = self.fleet, self.fleet.stats
        tcu = fleet.firmware.tcus[self.index]
        for _ in range(fleet.options.max_commands_per_wake):
            if not (resp.ok and resp.payload):
                return
            stats.commands_received += 1
            decision = fleet.firmware.command_received(tcu, resp.payload)
            if decision is None:
                return
            outs = fleet.firmware.execute(tcu, decision)
            fleet.firmware.answer_held(tcu, decision.command_id)  # awake: it answers now
            resp = Response(aiocoap.EMPTY, b"", None, None, 0)
            for out in outs:
                if out.kind == RESULT:
                    leaf, cf = "cmd/result", COAP_FORMATS["json"]
                    stats.results_posted += 1
                elif out.kind == SAMPLE:
                    leaf, cf = "telemetry", COAP_FORMATS["cbor" if tcu.encoding == CBOR else "json"]
                else:
                    continue
                try:
                    answer = await self.endpoint.post(
                        self.path(leaf), out.payload, query=self.query, content_format=cf
                    )
                except CoapTimeout:
                    stats.count("timeout")
                    return
                stats.count(str(answer.code.dotted))
                if answer.ok and answer.payload:
                    resp = answer  # the next command

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None


class CoapFleet:
    """Sleeping locks around one FleetModel. Each round steps the model by the wake interval
    (one new sample per device) and wakes every device once; `tokens` are the devices' CoAP
    tokens (fleetgate devices provision)."""

    def __init__(self, options: CoapFleetOptions, tokens: dict[str, str] | None = None) -> None:
        self.options = o = options
        n = o.vehicles
        self.roster = Roster.build(
            n, o.car_share, o.device_id_pattern, o.vehicle_ref_pattern, mix=o.mix
        )
        self.device_ids = self.roster.device_ids
        self.vehicle_refs = self.roster.vehicle_refs
        step_ms = int(o.wake_interval_s * 1000)
        start = o.start_ms if o.start_ms is not None else wall_clock_ms() - o.rounds * step_ms
        self.model = FleetModel(self.roster.kinds, seed=o.seed, start_ms=start)
        # The firmware's command handling (ids remembered, results) is the MQTT devices' one.
        cbor = o.encoding in ("cbor", "senml+cbor")
        self.firmware = FleetFirmware(
            self.model,
            self.device_ids,
            encodings=np.full(n, CBOR if cbor else JSON, np.int8),
            seed=o.seed,
        )
        tokens = tokens or {}
        self.locks = [
            SleepingLock(self, i, d, tokens.get(d)) for i, d in enumerate(self.device_ids)
        ]
        self.by_id = {lock.device_id: lock for lock in self.locks}
        self.stats = CoapFleetStats()
        self.rounds_done = 0

    def registrations(self) -> list[tuple[str, str, str]]:
        """(device_id, vehicle_ref, vehicle_type) of every vehicle, for the device registry."""
        return self.roster.registrations()

    def encode(self, samples: list[dict]) -> bytes:
        enc = self.options.encoding
        if enc.startswith("senml"):
            return senml_pack(samples, cbor=enc == "senml+cbor")
        if len(samples) == 1:
            return encode_row(samples[0], CBOR if enc == "cbor" else JSON)
        return cbor2.dumps(samples) if enc == "cbor" else orjson.dumps(samples)

    def step(self) -> None:
        """Advance the model by one wake interval: every device buffers its new sample."""
        samples = self.model.step_ms(int(self.options.wake_interval_s * 1000))
        for lock in self.locks:
            lock.buffer.append(sample_row(samples, lock.index))
        self.rounds_done += 1

    async def run_round(self, concurrency: int | None = None) -> None:
        """One step, then every device wakes once (concurrency at a time; all by default)."""
        self.step()
        await self.wake_all(concurrency)

    async def wake_all(self, concurrency: int | None = None, spread_s: float = 0.0) -> None:
        """Wake every device once, at most concurrency at a time, or spread evenly over
        spread_s seconds of wall-clock time (paced)."""
        gate = asyncio.Semaphore(concurrency or len(self.locks))
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(k: int, lock: SleepingLock) -> None:
            if spread_s:
                await asyncio.sleep(max(0.0, t0 + spread_s * k / len(self.locks) - loop.time()))
            async with gate:
                await lock.wake()

        await asyncio.gather(*(one(k, lock) for k, lock in enumerate(self.locks)))

    def close(self) -> None:
        for lock in self.locks:
            lock.close()
