"""The MQTT load for the ingest benchmarks: the simulated fleet's samples, one per QoS 1 message,
written by plain asyncio TCP connections from frames encoded before the clock starts.

Why not the simulator itself: its devices speak through paho-mqtt, as a device would, which
costs about three times the CPU per message of the gateway's own client (benchmarks/README.md,
*Where the MQTT load comes from*); on two cores shared with the broker, the database and the
gateway it could no longer offer the load the gateway takes. Here the payloads are still the
simulator's (its fleet model and encoders, the same devices and samples as `fleetgate sim`), but
the MQTT 5 framing (CONNECT, PUBLISH, PUBACK, DISCONNECT) is written out below from the MQTT 5
specification, so the gateway's parser is not measured against itself. Only telemetry: no
presence, will or commands.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

import numpy as np

from firmware_sim.fleet import FleetOptions, start_time_ms
from firmware_sim.model import FleetModel
from firmware_sim.payloads import CBOR, JSON, encode_samples
from firmware_sim.protocol import DeviceTopics
from firmware_sim.roster import Roster, spread

_PUBLISH_QOS1 = 0x32  # PUBLISH, QoS 1, no DUP, no RETAIN
_PUBACK = 0x40
_DISCONNECT = b"\xe0\x00"
_MAX_IN_FLIGHT_PER_DEVICE = 60_000  # packet ids are 1..65535, taken in turn


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect_frame(client_id: str, keepalive_s: int, session_expiry_s: int) -> bytes:
    """CONNECT, MQTT 5: clean start 0 (a persistent session, as the devices use) and a session
    expiry, no will, no credentials."""
    props = b"\x11" + struct.pack("!I", session_expiry_s)
    body = (
        _utf8("MQTT")
        + b"\x05"  # protocol level
        + b"\x00"  # flags: clean start 0, no will, no username or password
        + struct.pack("!H", keepalive_s)
        + _varint(len(props))
        + props
        + _utf8(client_id)
    )
    return b"\x10" + _varint(len(body)) + body


def publish_frame(topic: bytes, mid: int, payload: bytes) -> bytes:
    """PUBLISH, QoS 1, MQTT 5, no properties."""
    size = 2 + len(topic) + 2 + 1 + len(payload)
    return b"".join(
        (
            bytes((_PUBLISH_QOS1,)),
            _varint(size),
            struct.pack("!H", len(topic)),
            topic,
            struct.pack("!HB", mid, 0),
            payload,
        )
    )


class DeviceConnection(asyncio.Protocol):
    """One device's connection: CONNACK, then PUBACKs counted (refusals apart). benchmarks/
    sessions.py opens its 10,000 sessions with it too."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.acked = 0
        self.refused = 0
        self.sent = 0
        self._buf = b""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        i, n = 0, len(buf)
        while i + 2 <= n:
            kind = buf[i]
            length, shift, j = 0, 0, i + 1
            while j < n:  # the remaining length, a variable byte integer
                byte = buf[j]
                length |= (byte & 0x7F) << shift
                shift += 7
                j += 1
                if not byte & 0x80:
                    break
            else:
                break
            if j + length > n:
                break
            self._packet(kind, buf[j : j + length])
            i = j + length
        self._buf = buf[i:]

    def _packet(self, kind: int, body: bytes) -> None:
        if kind == _PUBACK:
            # A reason code (after the packet id) is there only when it is not "success".
            if len(body) > 2 and body[2] >= 0x80:
                self.refused += 1
            else:
                self.acked += 1
        elif kind == 0x20 and not self.connack.done():  # CONNACK: flags, reason code, ...
            self.connack.set_result(body[1] if len(body) > 1 else 0)

    def connection_lost(self, exc) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"connection lost before CONNACK: {exc}"))
        if not self.closed.done():
            self.closed.set_result(exc)


class Load:
    """The fleet's telemetry, encoded: frames[v][k] is vehicle v's PUBLISH of step k, for the
    options.total_steps steps of the same fleet `fleetgate sim` would run with these options."""

    def __init__(self, options: FleetOptions) -> None:
        o = self.options = options
        steps = o.total_steps
        if steps is None:
            raise ValueError("a load is bounded: set samples_per_vehicle or duration_s")
        roster = Roster.build(
            o.vehicles, o.car_share, o.device_id_pattern, o.vehicle_ref_pattern, mix=o.mix
        )
        self.device_ids = roster.device_ids
        self.start_ms = start_time_ms(o)
        model = FleetModel(roster.kinds, seed=o.seed, start_ms=self.start_ms, area=o.area)
        encodings = np.where(spread(o.vehicles, o.cbor_share), CBOR, JSON)
        topics = [DeviceTopics.of(o.topic_root, d).telemetry.encode() for d in self.device_ids]
        self.frames: list[list[bytes]] = [[] for _ in self.device_ids]
        for k in range(steps):
            t = o.step_time_ms(self.start_ms, k)
            samples = model.step_ms(t - model.t_ms)
            payloads = encode_samples(samples, encodings)
            mid = k % 65535 + 1
            for frames, topic, payload in zip(self.frames, topics, payloads):
                frames.append(publish_frame(topic, mid, payload))
        self.steps = steps


async def publish_load(
    options: FleetOptions,
    *,
    on_publishing: Callable[[], None] | None = None,
    timeout_s: float = 300.0,
) -> dict:
    """Connect every device, publish its steps (options.fast: as fast as the broker
    acknowledges, within options.max_in_flight; else paced at options.rate_hz per device),
    wait for every PUBACK and disconnect.

    Returns what the simulator reported: samples acknowledged, messages published, seconds
    from the first publish to the last PUBACK, and wall_offset_ms (paced: a sample with time t
    was published at wall-clock t + wall_offset_ms).
    """
    o = options
    load = Load(o)
    loop = asyncio.get_running_loop()
    devices: list[DeviceConnection] = []
    for device_id in load.device_ids:
        _, device = await loop.create_connection(DeviceConnection, o.host, o.port)
        device.transport.write(connect_frame(device_id, o.keepalive_s, o.session_expiry_s))
        devices.append(device)
    codes = await asyncio.wait_for(asyncio.gather(*(d.connack for d in devices)), 30)
    if any(codes):
        raise ConnectionError(f"CONNACK reason codes {sorted(set(codes))}: the broker refused")
    if on_publishing is not None:
        on_publishing()
    started = time.monotonic()
    wall_offset_ms = time.time_ns() // 1_000_000 - load.start_ms
    await _write(load, devices, o)
    deadline = time.monotonic() + timeout_s
    while sum(d.acked + d.refused for d in devices) < sum(d.sent for d in devices):
        if time.monotonic() > deadline or any(d.closed.done() for d in devices):
            break
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - started
    for d in devices:
        if not d.transport.is_closing():
            d.transport.write(_DISCONNECT)
            d.transport.close()
    await asyncio.gather(*(d.closed for d in devices))
    return {
        "samples_acked": sum(d.acked for d in devices),
        "samples_refused": sum(d.refused for d in devices),
        "messages_published": sum(d.sent for d in devices),
        "elapsed_s": elapsed,
        "wall_offset_ms": wall_offset_ms,
    }


async def _write(load: Load, devices: list[DeviceConnection], o: FleetOptions) -> None:
    """Write the steps in order, a burst of steps per event-loop turn and device."""
    loop = asyncio.get_running_loop()
    per_turn = max(1, o.publish_burst // max(1, len(devices)))
    window = min(o.max_in_flight, _MAX_IN_FLIGHT_PER_DEVICE * len(devices))
    done, wall0 = 0, loop.time()
    while done < load.steps:
        if any(d.closed.done() for d in devices):
            raise ConnectionError("the broker closed a device's connection")
        if o.fast:
            in_flight = sum(d.sent - d.acked - d.refused for d in devices)
            if in_flight > window:
                await asyncio.sleep(0.001)
                continue
            end = min(done + per_turn, load.steps)
        else:
            due = int((loop.time() - wall0) * o.rate_hz)
            if due <= done:
                await asyncio.sleep(max((done + 1) / o.rate_hz - (loop.time() - wall0), 0.0005))
                continue
            end = min(due, done + per_turn, load.steps)
        for device, frames in zip(devices, load.frames):
            device.transport.write(b"".join(frames[done:end]))
            device.sent += end - done
        done = end
        await asyncio.sleep(0)
