"""The simulator's transport: one MQTT connection per simulated TCU, driven on the wall clock.

Fleet wires FleetFirmware (sans-IO) to the devices' MQTT connections (mqtt_connection, on
paho-mqtt): it steps the model at rate_hz per vehicle (paced, sped up, or as fast as the broker
acknowledges), publishes QoS 1, reconnects, reports PUBACKs and losses back to the firmware and
executes commands after their delay. `run_fleet` is what `fleetgate sim` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from firmware_sim.accounting import FleetStats
from firmware_sim.dialect import DialectEncoder
from firmware_sim.model import FleetModel
from firmware_sim.mqtt_connection import ConnectionLost, MqttConnection, MqttError
from firmware_sim.payloads import CBOR, JSON
from firmware_sim.protocol import TOPIC_ROOT
from firmware_sim.roster import Roster, spread
from firmware_sim.specs import Area
from firmware_sim.tcu import (
    RECEIVED,
    RESULT,
    CommandBehaviour,
    CommandDecision,
    FleetFirmware,
    Misbehaviour,
    Outgoing,
    Tcu,
    broker_address,
    wall_clock_ms,
)

log = logging.getLogger(__name__)


@dataclass
class FleetOptions:
    """Everything a simulated fleet run needs; the defaults are a small live demo fleet."""

    vehicles: int = 10
    car_share: float = 0.5  # the rest are e-bikes; spread evenly over the ids
    # Shares by vehicle type (specs.parse_mix: {"ebike": 0.6, "scooter": 0.3, "car": 0.1}),
    # spread evenly over the ids; replaces car_share when given.
    mix: dict[str, float] | None = None
    rate_hz: float = 1.0  # samples per vehicle per second of simulated time
    seed: int = 0
    topic_root: str = TOPIC_ROOT
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    # Per-device MQTT secrets (device id -> secret, `fleetgate devices provision`): a device
    # then logs in as itself, username = device id; None: username/password above for all.
    credentials: dict[str, str] | None = None
    cbor_share: float = 0.0  # devices that encode CBOR; the rest JSON
    # A legacy payload dialect's TOML file (docs/dialects.md): every device speaks it, on its
    # topic, instead of the protocol (cbor_share then does not apply).
    dialect: str | None = None
    misbehaviour: Misbehaviour = field(default_factory=Misbehaviour)
    commands: CommandBehaviour = field(default_factory=CommandBehaviour)
    samples_per_vehicle: int | None = None  # stop after this many steps ...
    duration_s: float | None = None  # ... or this much simulated time; else until stopped
    start_ms: int | None = None  # simulated clock at the start (see start_time_ms)
    speedup: float = 1.0  # simulated seconds per wall-clock second
    fast: bool = False  # no pacing: as fast as the broker acknowledges
    max_in_flight: int = 20_000  # fast mode: unacknowledged messages fleet-wide
    publish_burst: int = 4_000  # messages per event-loop turn when catching up or fast
    device_id_pattern: str = "{type}-{n:04d}"  # n = 1-based vehicle number, type ebike/car
    vehicle_ref_pattern: str = "veh-{n:04d}"
    fw_version: str = "fleetgate-sim/1.0"
    protocol: int = 5
    keepalive_s: int = 30
    # Persistent sessions like real TCUs (commands wait in the broker while offline), but short,
    # so a test or benchmark fleet does not leave queues on a shared broker for days.
    session_expiry_s: int = 600
    connect_concurrency: int = 64
    connect_timeout_s: float = 10.0
    flush_timeout_s: float = 60.0
    clear_retained: bool = False  # at stop, delete the retained presence messages
    # Keep every acknowledged (device, t) for tests; None: only in bounded runs, so an endless
    # demo does not grow without limit. Benchmarks turn it off.
    track_keys: bool | None = None
    buffer_max_samples: int = 500_000
    area: Area = field(default_factory=Area)
    ageing_speedup: float = 1.0
    # Vehicles given by name instead of by count and patterns, (device_id, vehicle_ref,
    # vehicle_type) each: the vehicles a migration imported (`fleetgate migrate rehearse`).
    named: list[tuple[str, str, str]] | None = None
    # Where vehicles stand at the start, device id -> (lat, lon) (their last known fix); the
    # others start at random in the area.
    start_fixes: dict[str, tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.rate_hz <= 500:
            raise ValueError("rate_hz must be in (0, 500]: a device's samples are ≥ 2 ms apart")

    def step_time_ms(self, start_ms: int, k: int) -> int:
        """The simulated time of step k (0-based): exact on average for any rate, whole ms."""
        return start_ms + int(round((k + 1) * 1000.0 / self.rate_hz))

    @property
    def total_steps(self) -> int | None:
        if self.samples_per_vehicle is not None:
            return int(self.samples_per_vehicle)
        if self.duration_s is not None:
            return int(self.duration_s * self.rate_hz)
        return None


def start_time_ms(options: FleetOptions, now_ms: int | None = None) -> int:
    """The simulated clock's start: options.start_ms, else chosen so the gateway accepts the
    samples' times (at most 5 min ahead of its clock, at most 30 days old). A bounded fast or
    sped-up run is back-dated to end about now; an unbounded one starts a day back, which gives
    a day of simulated headroom before its samples would lie in the gateway's future."""
    if options.start_ms is not None:
        return int(options.start_ms)
    now = wall_clock_ms() if now_ms is None else now_ms
    steps = options.total_steps
    if options.fast or options.speedup > 1.0:
        if steps is None:
            return now - 86_400_000
        ahead = 1.0 if options.fast else 1.0 - 1.0 / options.speedup
        return now - int(steps * 1000.0 / options.rate_hz * ahead)
    return now


class _Link:
    """One device's connection: the client, its unacknowledged messages, its task."""

    __slots__ = ("tcu", "client", "pending", "task", "wake", "up", "relost", "host", "port")

    def __init__(self, tcu: Tcu, host: str, port: int) -> None:
        self.tcu = tcu
        self.host, self.port = host, port  # the broker; set_config's mqtt_url moves it
        tcu.broker = f"mqtt://{host}:{port}"
        self.client: MqttConnection | None = None
        self.pending: deque[tuple[asyncio.Future, Outgoing]] = deque()
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.up = asyncio.Event()
        self.relost = False  # a message failed while the connection stayed up


class Fleet:
    """A simulated fleet on a broker. Create, optionally read registrations(), then
    `await start()`, `await run(stop_event)`, `await stop()` (or use run_fleet)."""

    def __init__(self, options: FleetOptions) -> None:
        self.options = o = options
        n = o.vehicles
        self.roster = Roster.build(
            n, o.car_share, o.device_id_pattern, o.vehicle_ref_pattern, mix=o.mix
        )
        if o.named is not None:
            self.roster = Roster.named(o.named)
        self.device_ids = self.roster.device_ids
        self.vehicle_refs = self.roster.vehicle_refs
        self.start_ms = start_time_ms(o)
        self.model = FleetModel(
            self.roster.kinds,
            seed=o.seed,
            start_ms=self.start_ms,
            area=o.area,
            ageing_speedup=o.ageing_speedup,
        )
        if o.start_fixes:
            placed = [
                (i, o.start_fixes[d]) for i, d in enumerate(self.device_ids) if d in o.start_fixes
            ]
            if placed:
                self.model.motion.place(
                    np.array([i for i, _ in placed]),
                    np.array([lat for _, (lat, _) in placed]),
                    np.array([lon for _, (_, lon) in placed]),
                )
        encodings = np.where(spread(n, o.cbor_share), CBOR, JSON)
        self.firmware = FleetFirmware(
            self.model,
            self.device_ids,
            topic_root=o.topic_root,
            encodings=encodings,
            misbehaviour=o.misbehaviour,
            commands=o.commands,
            seed=o.seed,
            fw_version=o.fw_version,
            track_keys=o.track_keys if o.track_keys is not None else o.total_steps is not None,
            buffer_max_samples=o.buffer_max_samples,
            dialect=DialectEncoder.load(o.dialect) if o.dialect else None,
        )
        self.stats: FleetStats = self.firmware.stats
        self._links: list[_Link] = []
        self._outstanding = 0
        self._stopping = False
        self._closing = False
        self._answers: set[asyncio.TimerHandle] = set()
        self._repoints: set[asyncio.Task] = set()
        self._connect_gate: asyncio.Semaphore | None = None
        self.steps_done = 0
        self.wall_offset_ms = 0

    # -- what the registry and tests read ---------------------------------------------------

    def registrations(self) -> list[tuple[str, str, str]]:
        """(device_id, vehicle_ref, vehicle_type) of every vehicle, for the device registry."""
        return self.roster.registrations()

    @property
    def connected(self) -> int:
        """How many devices have their connection up right now."""
        return sum(1 for link in self._links if link.client is not None and link.client.connected)

    def tcu(self, device_id: str) -> Tcu:
        return self.firmware.by_id[device_id]

    def expected_keys(self) -> set[tuple[str, int]]:
        """(device_id, t) of every sample the steps so far produced (locate answers excluded)."""
        ts = [self.options.step_time_ms(self.start_ms, k) for k in range(self.steps_done)]
        return {(d, t) for d in self.device_ids for t in ts}

    # -- life cycle ------------------------------------------------------------------------

    async def start(self, timeout: float = 60.0) -> None:
        """Connect every device (concurrently, a bounded number at a time); returns when all
        are online, or raises TimeoutError (the stragglers keep trying)."""
        self._connect_gate = asyncio.Semaphore(self.options.connect_concurrency)
        self._links = [_Link(t, self.options.host, self.options.port) for t in self.firmware.tcus]
        for link in self._links:
            link.task = asyncio.create_task(
                self._connection(link), name=f"sim-{link.tcu.device_id}"
            )
        try:
            async with asyncio.timeout(timeout):
                for link in self._links:
                    await link.up.wait()
        except TimeoutError:
            up = sum(link.up.is_set() for link in self._links)
            where = f"{self.options.host}:{self.options.port}"
            raise TimeoutError(
                f"only {up} of {len(self._links)} simulated devices connected to "
                f"{where} within {timeout} s"
            ) from None
        self.stats.started_monotonic = time.monotonic()
        log.info(
            "sim_fleet_connected",
            extra={
                "vehicles": len(self._links),
                "broker": f"{self.options.host}:{self.options.port}",
            },
        )

    async def run(self, stop_event: asyncio.Event | None = None) -> FleetStats:
        """Step and publish until the configured number of steps, or until stop_event is set."""
        if not self._links:
            await self.start()
        o = self.options
        loop = asyncio.get_running_loop()
        total = o.total_steps
        per_turn = max(1, o.publish_burst // max(1, o.vehicles))
        # The simulated clock is tied to the wall clock from here on (paced modes).
        wall0, done0 = loop.time(), self.steps_done
        # Paced at speedup 1, a sample with time t is published at wall-clock t + this offset
        # (benchmarks measure publish-to-commit latency with it).
        self.wall_offset_ms = wall_clock_ms() - self.model.t_ms
        while (total is None or self.steps_done < total) and not self._stopping:
            if stop_event is not None and stop_event.is_set():
                break
            if o.fast:
                if self._outstanding > o.max_in_flight:
                    await asyncio.sleep(0.001)
                    self._sweep()
                    continue
                steps = per_turn
            else:
                elapsed = (loop.time() - wall0) * o.speedup  # simulated seconds
                due = done0 + int(elapsed * o.rate_hz) - self.steps_done
                if due <= 0:
                    next_at = (self.steps_done - done0 + 1) / o.rate_hz
                    await self._sleep(max((next_at - elapsed) / o.speedup, 0.0005), stop_event)
                    continue
                steps = min(due, per_turn)
            if total is not None:
                steps = min(steps, total - self.steps_done)
            for _ in range(steps):
                self._step(o.step_time_ms(self.start_ms, self.steps_done) - self.model.t_ms)
            self._sweep()
            await asyncio.sleep(0)
        return self.stats

    async def stop(self, flush: bool = True) -> FleetStats:
        """Stop stepping; with flush, bring offline devices back and wait until every sample
        and command result is acknowledged (up to flush_timeout_s); then publish offline
        presence and disconnect cleanly."""
        self._stopping = True
        if flush and self._links:
            await self._flush()
        self._closing = True
        for handle in self._answers:
            handle.cancel()
        self._answers.clear()
        await self._say_goodbye()
        self._sweep()
        await asyncio.gather(*(self._disconnect(link) for link in self._links))
        await self._end_connection_tasks()
        self.stats.finished_monotonic = time.monotonic()
        return self.stats

    async def _flush(self) -> None:
        """Every device online, until all it produced is acknowledged or flush_timeout_s."""
        for tcu in self.firmware.end_offline_periods():
            self._links[tcu.index].wake.set()
        deadline = time.monotonic() + self.options.flush_timeout_s
        while time.monotonic() < deadline:
            self._sweep()
            self._reupload(all_online=True)
            if self._all_answered():
                return
            await asyncio.sleep(0.02)
        log.warning("sim_flush_timeout", extra={"outstanding": self.stats.outstanding})

    def _all_answered(self) -> bool:
        return (
            self.stats.outstanding <= 0
            and not self._answers
            and not any(link.pending or link.tcu.unsent for link in self._links)
        )

    async def _say_goodbye(self) -> None:
        """Offline presence from every connected device (and, if asked, no retained presence
        left behind), acknowledged before the DISCONNECT that suppresses the will."""
        goodbyes = []
        for link in self._links:
            client = link.client
            if client is None or not client.connected:
                continue
            out = self.firmware.goodbye(link.tcu)
            with contextlib.suppress(ConnectionLost):
                goodbyes.append(client.publish(out.topic, out.payload, retain=True))
                if self.options.clear_retained:
                    goodbyes.append(client.publish(link.tcu.topic_status, b"", retain=True))
        if goodbyes:
            await asyncio.wait(goodbyes, timeout=10.0)

    async def _end_connection_tasks(self) -> None:
        for link in self._links:
            link.wake.set()
        tasks = [link.task for link in self._links if link.task is not None]
        if tasks:
            _, not_done = await asyncio.wait(tasks, timeout=10.0)
            for task in not_done:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def go_offline(self, device_id: str, seconds: float) -> None:
        """Drop a device's connection without DISCONNECT (its will fires) for simulated seconds."""
        tcu = self.firmware.go_offline(device_id, seconds)
        link = self._links[tcu.index] if self._links else None
        if link is not None and link.client is not None:
            link.client.abort()

    def go_online(self, device_id: str) -> None:
        tcu = self.firmware.go_online(device_id)
        if self._links:
            self._links[tcu.index].wake.set()

    # -- the hot path ----------------------------------------------------------------------

    def _step(self, dt_ms: int) -> None:
        step = self.firmware.step(dt_ms)
        self.steps_done += 1
        links = self._links
        for tcu in step.disconnect:
            client = links[tcu.index].client
            if client is not None:
                client.abort()
        for tcu in step.reconnect:
            links[tcu.index].wake.set()
        lost = self.firmware.lost
        published = 0
        for tcu, out in step.messages:
            link = links[tcu.index]
            client = link.client
            if client is None:
                lost(tcu, out)
                continue
            try:
                fut = client.publish(out.topic, out.payload, out.retain)
            except ConnectionLost:
                lost(tcu, out)
                continue
            link.pending.append((fut, out))
            published += 1
        self._outstanding += published

    def _publish(self, link: _Link, out: Outgoing) -> None:
        client = link.client
        if client is None or not client.connected:
            self.firmware.lost(link.tcu, out)
            return
        try:
            fut = client.publish(out.topic, out.payload, out.retain)
        except ConnectionLost:
            self.firmware.lost(link.tcu, out)
            return
        link.pending.append((fut, out))
        self._outstanding += 1

    def _sweep(self) -> None:
        """Tell the firmware about every message whose fate is known, oldest first per device."""
        acked, lost = self.firmware.acked, self.firmware.lost
        done = 0
        for link in self._links:
            pending = link.pending
            while pending and pending[0][0].done():
                fut, out = pending.popleft()
                done += 1
                if not fut.cancelled() and fut.exception() is None:
                    acked(link.tcu, out)
                else:
                    lost(link.tcu, out)
                    link.relost = True
        self._outstanding -= done
        self._reupload()

    def _reupload(self, all_online: bool = False) -> None:
        """Samples that went back to the buffer while the connection stayed up (a refused
        PUBACK, a publish while reconnecting) go out again; a new connection uploads anyway."""
        for link in self._links:
            if not (link.relost or all_online):
                continue
            link.relost = False
            tcu, client = link.tcu, link.client
            if tcu.online and client is not None and client.connected:
                if tcu.buffer.waiting:
                    for out in self.firmware.upload(tcu):
                        self._publish(link, out)
                if tcu.unsent:
                    unsent, tcu.unsent = tcu.unsent, []
                    for out in unsent:
                        self._publish(link, out)

    # -- connections -----------------------------------------------------------------------

    async def _connection(self, link: _Link) -> None:
        """Keep one device connected while it wants to be, with a persistent session."""
        o, tcu, fw = self.options, link.tcu, self.firmware
        backoff = 0.2
        rng = np.random.default_rng([o.seed, tcu.index, 0xC0])
        while not self._closing:
            if not tcu.wants_online:
                link.wake.clear()
                if not tcu.wants_online:
                    await link.wake.wait()
                continue
            client = MqttConnection(
                link.host,
                link.port,
                client_id=tcu.device_id,
                protocol=o.protocol,
                session_expiry_s=o.session_expiry_s,
                keepalive_s=o.keepalive_s,
                receive_maximum=64,
                **self.mqtt_login(tcu.device_id),
                will=(tcu.topic_status, tcu.will_payload),
                on_message=partial(self._on_message, link),
            )
            try:
                async with self._connect_gate:
                    await client.connect(timeout=o.connect_timeout_s)
                await client.subscribe(tcu.topic_cmd)
            except (OSError, TimeoutError, MqttError) as exc:
                client.abort()
                log.debug(
                    "sim_connect_failed",
                    extra={"device_id": tcu.device_id, "error": repr(exc)[:200]},
                )
                await self._sleep(backoff * (0.5 + rng.random()), None)
                backoff = min(backoff * 2, 5.0)
                continue
            if self._closing or not tcu.wants_online:
                client.abort()
                continue
            backoff = 0.2
            link.client = client
            for out in fw.connection_up(tcu):
                self._publish(link, out)
            link.up.set()
            on_purpose = True
            try:
                await client.wait_closed()
            except ConnectionLost as exc:
                on_purpose = False
                log.debug(
                    "sim_connection_lost",
                    extra={"device_id": tcu.device_id, "error": str(exc)[:200]},
                )
            link.up.clear()
            link.client = None
            self._sweep()  # the client failed every unacknowledged publish when it closed
            fw.connection_down(tcu, on_purpose=on_purpose or self._closing)
            if not on_purpose and not self._closing:
                await self._sleep(backoff * (0.5 + rng.random()), None)

    def mqtt_login(self, device_id: str) -> dict[str, str | None]:
        """The username and password device_id connects with."""
        o = self.options
        if o.credentials is None:
            return {"username": o.username, "password": o.password}
        return {"username": device_id, "password": o.credentials.get(device_id)}

    async def _disconnect(self, link: _Link) -> None:
        client = link.client
        if client is not None and client.connected:
            with contextlib.suppress(MqttError, OSError):
                await client.disconnect(timeout=5.0)

    async def _repoint(self, link: _Link) -> None:
        """set_config's mqtt_url: once the current broker has acknowledged everything sent
        to it (the result last), say offline there and leave cleanly; the connection loop then
        connects to the new broker (same client id, buffer and unsent results)."""
        tcu = link.tcu
        url, tcu.repoint_to = tcu.repoint_to, None
        host, port = broker_address(url)
        loop = asyncio.get_running_loop()
        until = loop.time() + 10.0
        while link.pending and loop.time() < until:
            self._sweep()
            await asyncio.sleep(0.01)
        client = link.client
        if client is not None and client.connected:
            out = self.firmware.goodbye(tcu)
            with contextlib.suppress(ConnectionLost, MqttError, TimeoutError):
                await asyncio.wait_for(client.publish(out.topic, out.payload, retain=True), 5.0)
        link.host, link.port = host, port
        tcu.broker = f"mqtt://{host}:{port}"
        log.info("sim_repointed", extra={"device_id": tcu.device_id, "broker": tcu.broker})
        if client is not None:
            await self._disconnect(link)

    async def _sleep(self, seconds: float, stop_event: asyncio.Event | None) -> None:
        if stop_event is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), seconds)

    # -- commands --------------------------------------------------------------------------

    def _on_message(self, link: _Link, topic: str, payload: bytes) -> None:
        if topic != link.tcu.topic_cmd:
            return
        decision = self.firmware.command_received(link.tcu, payload)
        if decision is not None and not self._closing:
            if decision.ack is not None:
                self._publish(
                    link,
                    Outgoing(RECEIVED, link.tcu.topic_result, decision.ack, decision.command_id),
                )
            self._schedule_answer(link, decision)

    def _schedule_answer(self, link: _Link, decision: CommandDecision) -> None:
        """Execute and answer after the device's delay, on the wall clock like a real TCU; a
        late answer goes out answer_after_s after the execution."""
        loop = asyncio.get_running_loop()

        def later(delay: float, fn) -> None:
            handle: list[asyncio.TimerHandle] = []

            def run() -> None:
                self._answers.discard(handle[0])
                fn()

            handle.append(loop.call_later(delay, run))
            self._answers.add(handle[0])

        cid = decision.command_id

        def answer() -> None:
            out = self.firmware.execute(link.tcu, decision)
            held = [o for o in out if o.kind == RESULT] if decision.answer_after_s > 0 else []
            for o in out:
                if o not in held:
                    self._publish(link, o)
            if link.tcu.repoint_to is not None:
                task = asyncio.create_task(self._repoint(link), name=f"sim-repoint-{cid}")
                self._repoints.add(task)
                task.add_done_callback(self._repoints.discard)
            if held:

                def late() -> None:
                    self.firmware.answer_held(link.tcu, decision.command_id)
                    for o in held:
                        self._publish(link, o)

                later(decision.answer_after_s, late)

        later(decision.delay_s, answer)


async def run_fleet(
    options: FleetOptions,
    stop_event: asyncio.Event | None = None,
    *,
    on_started: Callable[[Fleet], Awaitable[None] | None] | None = None,
) -> FleetStats:
    """Run a simulated fleet until its steps are done or stop_event is set; flush and disconnect.

    on_started(fleet), plain or async, runs once every device is connected and before the first
    sample: the place to register fleet.registrations() in the device registry, or to keep the
    fleet for printing fleet.stats.summary() while it runs.
    """
    fleet = Fleet(options)
    try:
        await fleet.start()
        if on_started is not None:
            result = on_started(fleet)
            if inspect.isawaitable(result):
                await result
        await fleet.run(stop_event)
    finally:
        await fleet.stop(flush=True)
    return fleet.stats
