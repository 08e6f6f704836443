"""The telematics units' firmware around the fleet model, sans-IO: what each device publishes,
its offline buffer, presence, remote commands and the ways it misbehaves.

FleetFirmware turns a model step into messages for the devices that are online, and learns from
the transport which messages the broker acknowledged or lost. It owns no socket and no clock
(the wall clock is injected for deadlines and "time in the future"), so all of it runs in tests
without a broker. Every decision is drawn from seeded generators.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from firmware_sim.accounting import FleetStats
from firmware_sim.dialect import DialectEncoder
from firmware_sim.model import CommandRefused, FleetModel
from firmware_sim.payloads import (
    JSON,
    MALFORMED_KINDS,
    STATUS_OFFLINE_WILL,
    encode_batch,
    encode_row,
    encode_samples,
    malformed_payload,
    parse_command,
    received_payload,
    result_payload,
    sample_row,
    status_payload,
)
from firmware_sim.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_SAMPLES_PER_BATCH,
    TOPIC_ROOT,
    DeviceTopics,
)
from firmware_sim.sensors import Samples
from firmware_sim.specs import CAR, VEHICLE_TYPES

# Kinds of outgoing message: what a PUBACK or a loss means for each.
SAMPLE, BATCH, DUPLICATE, MALFORMED, STATUS, RESULT, RECEIVED = range(7)
UPLOAD_ORDERS = ("oldest_first", "reversed", "shuffled")
_STATE_CHANGES = ("lock", "unlock", "immobilise", "mobilise")  # reported with a fresh sample
_BATCH_BYTES = MAX_MESSAGE_BYTES - 16  # room for the array's brackets or CBOR head


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """How often devices break the protocol's good manners. Shares are per sample (duplicates,
    malformed) or per upload (out of order); disconnects are a rate per simulated hour online.
    """

    duplicate_share: float = 0.0  # a sample's message is sent twice
    malformed_share: float = 0.0  # an extra malformed message next to a sample
    malformed_kinds: tuple[str, ...] = tuple(MALFORMED_KINDS)
    out_of_order_share: float = 0.0  # a buffered upload goes newest first or shuffled
    disconnects_per_h: float = 0.0  # connection dropped without DISCONNECT (the will fires)
    offline_s: tuple[float, float] = (30.0, 300.0)  # simulated time spent offline, buffering

    def __post_init__(self) -> None:
        unknown = set(self.malformed_kinds) - set(MALFORMED_KINDS)
        if unknown:
            raise ValueError(f"unknown malformed kinds {sorted(unknown)}")

    @property
    def active(self) -> bool:
        return bool(self.duplicate_share or self.malformed_share or self.disconnects_per_h)


@dataclass(frozen=True, slots=True)
class CommandBehaviour:
    """How a device handles commands: answer delay, and shares it drops, refuses or answers late."""

    delay_ms: tuple[float, float] = (50.0, 300.0)
    drop_share: float = 0.0  # never seen: no execution, no answer (a retry may get through)
    refuse_share: float = 0.0  # answered "failed" with reason "refused", not executed
    late_share: float = 0.0  # executed after delay_ms, but answered late_delay_ms after that
    late_delay_ms: tuple[float, float] = (5_000.0, 20_000.0)
    # Send {"id", "status": "received", "t"} as soon as a command is taken for execution (the
    # optional acknowledgement of docs/protocol.md).
    acknowledge: bool = False
    # After lock/unlock/immobilise/mobilise, publish a sample with the new state at once (as
    # TCUs report a state change), taken at the execution time the result carries.
    report_state: bool = True


class Outgoing:
    """One message a device hands to its transport. ref is what it carries: the sample time
    (SAMPLE), the sample times (BATCH), the malformed kind (MALFORMED), the command id (RESULT,
    RECEIVED)."""

    __slots__ = ("kind", "topic", "payload", "ref", "retain")

    def __init__(self, kind: int, topic: str, payload: bytes, ref=None, retain: bool = False):
        self.kind, self.topic, self.payload = kind, topic, payload
        self.ref, self.retain = ref, retain

    def __repr__(self) -> str:
        return (
            f"Outgoing(kind={self.kind}, topic={self.topic!r}, ref={self.ref!r}, "
            f"{len(self.payload)} B)"
        )


class OfflineBuffer:
    """Samples a device has not got acknowledged yet. A sample leaves the buffer only when the
    message carrying it was acknowledged; a lost upload puts its samples back for the next one.
    When full, the oldest sample not in flight is dropped (as a TCU's flash ring buffer does).
    """

    def __init__(self, max_samples: int = 500_000) -> None:
        self.max_samples = max_samples
        self._frag: dict[int, bytes] = {}
        self._in_flight: set[int] = set()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frag)

    @property
    def waiting(self) -> int:
        """Samples not in flight."""
        return len(self._frag) - len(self._in_flight)

    def add(self, t_ms: int, fragment: bytes) -> int:
        """Keep a sample; returns how many old ones had to go to make room."""
        self._frag[t_ms] = fragment
        dropped = 0
        while len(self._frag) > self.max_samples:
            for t in self._frag:  # insertion order: the oldest kept first
                if t not in self._in_flight and t != t_ms:
                    del self._frag[t]
                    dropped += 1
                    break
            else:
                break
        self.dropped += dropped
        return dropped

    def take(
        self,
        max_per_batch: int = MAX_SAMPLES_PER_BATCH,
        order: str = "oldest_first",
        rng: np.random.Generator | None = None,
        max_bytes: int = _BATCH_BYTES,
    ) -> list[tuple[list[int], list[bytes]]]:
        """Every sample not in flight, as batches of at most max_per_batch samples and
        max_bytes of payload (the protocol's two limits), now in flight.

        The protocol asks for oldest first; "reversed" and "shuffled" are misbehaviour.
        """
        ts = sorted(t for t in self._frag if t not in self._in_flight)
        if order == "reversed":
            ts.reverse()
        elif order == "shuffled":
            (rng or np.random.default_rng()).shuffle(ts)
        elif order != "oldest_first":
            raise ValueError(f"order is one of {UPLOAD_ORDERS}")
        self._in_flight.update(ts)
        frag = self._frag
        batches: list[tuple[list[int], list[bytes]]] = []
        chunk_ts: list[int] = []
        chunk: list[bytes] = []
        size = 0
        for t in ts:
            f = frag[t]
            if chunk and (len(chunk) >= max_per_batch or size + len(f) + 1 > max_bytes):
                batches.append((chunk_ts, chunk))
                chunk_ts, chunk, size = [], [], 0
            chunk_ts.append(t)
            chunk.append(f)
            size += len(f) + 1  # a comma in JSON; CBOR needs less
        if chunk:
            batches.append((chunk_ts, chunk))
        return batches

    def acked(self, ts: Sequence[int]) -> None:
        for t in ts:
            self._frag.pop(t, None)
            self._in_flight.discard(t)

    def release(self, ts: Sequence[int]) -> None:
        """The message carrying ts was lost: they go out again with the next upload."""
        self._in_flight.difference_update(ts)

    def times(self) -> list[int]:
        return sorted(self._frag)


def broker_address(url: str) -> tuple[str, int]:
    """(host, port) of an mqtt://host:port URL (set_config's mqtt_url); ValueError if it is
    not one. TLS (mqtts) is not simulated."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ValueError(f"mqtt_url {url!r}: must look like mqtt://host:port")
    try:
        return parts.hostname, parts.port or 1883
    except ValueError as exc:
        raise ValueError(f"mqtt_url {url!r}: {exc}") from None


@dataclass(slots=True)
class CommandDecision:
    """What a device will do about a received command, after delay_s (wall clock)."""

    command_id: str
    delay_s: float
    command: dict | None = None  # to execute then
    result: bytes | None = None  # or this answer (an earlier result, a refusal)
    ack: bytes | None = None  # to publish at once ("received")
    answer_after_s: float = 0.0  # the result goes out this long after the execution


@dataclass
class CommandLog:
    """A device's memory of commands: results by id (retries get the same answer), which ids
    are being executed, and results held back (a late answer: executed, not answered yet)."""

    results: dict[str, bytes] = field(default_factory=dict)
    executing: set[str] = field(default_factory=set)
    held: dict[str, bytes] = field(default_factory=dict)
    last_exec_t: int = 0  # device time of the newest execution (strictly increasing)


class Tcu:
    """One device: its topics, connection state as the firmware sees it, buffer and commands."""

    def __init__(
        self,
        index: int,
        device_id: str,
        vehicle_type: str,
        encoding: int,
        topic_root: str,
        fw_version: str,
        buffer_max_samples: int,
        commands: CommandBehaviour,
    ) -> None:
        self.index = index
        self.device_id = device_id
        self.vehicle_type = vehicle_type
        self.encoding = encoding
        topics = DeviceTopics.of(topic_root, device_id)
        self.topic_telemetry = topics.telemetry
        self.topic_event = topics.event
        self.topic_status = topics.status
        self.topic_cmd = topics.cmd
        self.topic_result = topics.result
        self.fw_version = fw_version
        self.online = False  # connected, as far as the firmware knows
        self.offline_until_ms: int | None = None  # staying away until this simulated time
        self.buffer = OfflineBuffer(buffer_max_samples)
        self.command_behaviour = commands
        self.command_log = CommandLog()
        self.unsent: list[Outgoing] = []  # command results waiting for a connection
        self.config: dict = {}  # settings set_config gave it
        # set_config {"mqtt_url"}: the broker to move to once the result is acknowledged
        # (the transport moves it, see Fleet); None: stay.
        self.repoint_to: str | None = None
        self.broker = ""  # the broker it is connected to, as the transport names it

    @property
    def wants_online(self) -> bool:
        return self.offline_until_ms is None

    @property
    def will_payload(self) -> bytes:
        return STATUS_OFFLINE_WILL

    def __repr__(self) -> str:
        return f"Tcu({self.device_id!r}, online={self.online}, buffered={len(self.buffer)})"


@dataclass(slots=True)
class Step:
    """The outcome of one model step for the transport."""

    samples: Samples
    messages: list[tuple[Tcu, Outgoing]]  # to publish now, QoS 1, in this order
    disconnect: list[Tcu]  # drop these connections now, without DISCONNECT
    reconnect: list[Tcu]  # these devices' offline periods are over


class FleetFirmware:
    """The firmware of every device of a fleet around one FleetModel.

    The transport calls step() on its clock, publishes Step.messages, and reports back with
    acked()/lost() per message and connection_up()/connection_down() per connection.
    """

    def __init__(
        self,
        model: FleetModel,
        device_ids: Sequence[str],
        *,
        topic_root: str = TOPIC_ROOT,
        encodings: Sequence[int] | np.ndarray | None = None,
        misbehaviour: Misbehaviour = Misbehaviour(),
        commands: CommandBehaviour = CommandBehaviour(),
        seed: int = 0,
        fw_version: str = "fleetgate-sim/1.0",
        track_keys: bool = True,
        buffer_max_samples: int = 500_000,
        wall_ms: Callable[[], int] = wall_clock_ms,
        dialect: DialectEncoder | None = None,
    ) -> None:
        if len(device_ids) != model.n:
            raise ValueError("one device id per vehicle of the model")
        self.model = model
        self.seed = seed
        self.misbehaviour = misbehaviour
        self.wall_ms = wall_ms
        # A legacy device's dialect is JSON: its vehicles' samples are encoded as JSON first.
        self.dialect = dialect
        enc = (
            np.full(model.n, JSON, dtype=np.int8)
            if encodings is None or dialect is not None
            else np.asarray(encodings, np.int8)
        )
        self.encodings = enc
        self.tcus = [
            Tcu(
                i, d, VEHICLE_TYPES[k], int(e), topic_root, fw_version, buffer_max_samples, commands
            )
            for i, (d, k, e) in enumerate(zip(device_ids, model.kind.tolist(), enc.tolist()))
        ]
        if dialect is not None:
            for tcu in self.tcus:
                tcu.topic_telemetry = dialect.topic(tcu.device_id)
        self.by_id = {t.device_id: t for t in self.tcus}
        if len(self.by_id) != len(self.tcus):
            raise ValueError("device ids must be unique")
        self.stats = FleetStats(vehicles=model.n, track_keys=track_keys)
        # Misbehaviour draws have their own generator so that turning it on does not change
        # the model's samples; rare per-event choices are seeded by the event itself.
        self._rng = np.random.default_rng([seed, 0x6D69])
        self._offline: set[int] = set()

    # -- the step --------------------------------------------------------------------------

    def step(self, dt_ms: int) -> Step:
        model, stats, tcus = self.model, self.stats, self.tcus
        samples = model.step_ms(dt_ms)
        t = samples.t_ms
        frags = encode_samples(samples, self.encodings)
        if self.dialect is not None:
            frags = [self.dialect.fragment(f) for f in frags]
        n = len(frags)
        stats.steps += 1
        stats.samples_generated += n
        messages: list[tuple[Tcu, Outgoing]] = []
        append = messages.append
        buffered = 0
        for tcu, frag in zip(tcus, frags):
            if tcu.online:
                append((tcu, Outgoing(SAMPLE, tcu.topic_telemetry, frag, t)))
            else:
                stats.samples_dropped += tcu.buffer.add(t, frag)
                buffered += 1
        stats.samples_buffered += buffered
        stats.samples_published += n - buffered
        disconnect: list[Tcu] = []
        mb = self.misbehaviour
        if mb.active:
            messages = self._misbehave(samples, frags, messages, disconnect, dt_ms)
        reconnect = []
        if self._offline:
            for i in sorted(self._offline):
                tcu = tcus[i]
                if tcu.offline_until_ms is not None and tcu.offline_until_ms <= t:
                    tcu.offline_until_ms = None
                    self._offline.discard(i)
                    reconnect.append(tcu)
        stats.messages_published += len(messages)
        return Step(samples, messages, disconnect, reconnect)

    def _misbehave(self, samples: Samples, frags: list[bytes], messages, disconnect, dt_ms):
        """Duplicates and malformed messages next to the samples they copy, and connections
        dropped; returns the step's messages with the extra ones in place."""
        # A fixed-size draw per step; what depends on which devices happen to be online (a
        # wall-clock matter for the transport) is seeded by the event, not drawn from here.
        u = self._rng.random((5, len(frags)))
        extra: dict[int, list[Outgoing]] = {}
        self._duplicates(u, frags, extra)
        self._malformed(u, samples, extra)
        if self.misbehaviour.disconnects_per_h:
            self._drop_connections(u, samples.t_ms, dt_ms, disconnect)
        if not extra:
            return messages
        out = []
        for item in messages:
            out.append(item)
            more = extra.get(item[0].index)
            if more:
                out.extend((item[0], m) for m in more)
        return out

    def _duplicates(self, u: np.ndarray, frags: list[bytes], extra) -> None:
        for i in np.flatnonzero(u[0] < self.misbehaviour.duplicate_share).tolist():
            tcu = self.tcus[i]
            if tcu.online:
                extra.setdefault(i, []).append(Outgoing(DUPLICATE, tcu.topic_telemetry, frags[i]))
                self.stats.duplicates_sent += 1

    def _malformed(self, u: np.ndarray, samples: Samples, extra) -> None:
        kinds = self.misbehaviour.malformed_kinds
        wall = self.wall_ms()
        for i in np.flatnonzero(u[1] < self.misbehaviour.malformed_share).tolist():
            tcu = self.tcus[i]
            if tcu.online:
                kind = kinds[int(u[3, i] * len(kinds)) % len(kinds)]
                rng = np.random.default_rng([self.seed, i, samples.t_ms, 0xBAD])
                payload = malformed_payload(kind, sample_row(samples, i), tcu.encoding, wall, rng)
                extra.setdefault(i, []).append(
                    Outgoing(MALFORMED, tcu.topic_telemetry, payload, kind)
                )
                self.stats.malformed_sent[kind] += 1

    def _drop_connections(self, u: np.ndarray, t_ms: int, dt_ms: int, disconnect) -> None:
        """Devices whose connection drops in this step (a Poisson rate per hour online) go
        offline for a while."""
        mb = self.misbehaviour
        p = -math.expm1(-mb.disconnects_per_h * dt_ms / 3_600_000)
        for i in np.flatnonzero(u[2] < p).tolist():
            tcu = self.tcus[i]
            if tcu.online and tcu.wants_online:
                lo, hi = mb.offline_s
                away_ms = int((lo + (hi - lo) * u[4, i]) * 1000)
                self._go_offline(tcu, t_ms + max(away_ms, 1))
                disconnect.append(tcu)

    # -- connections -----------------------------------------------------------------------

    def connection_up(self, tcu: Tcu) -> list[Outgoing]:
        """The device is connected: presence, then what it kept while it was not."""
        tcu.online = True
        self.stats.connects += 1
        t = max(self.model.t_ms, tcu.command_log.last_exec_t)  # after a re-point: not before it
        out = [
            Outgoing(STATUS, tcu.topic_status, status_payload(True, t, tcu.fw_version), retain=True)
        ]
        out.extend(tcu.unsent)
        tcu.unsent.clear()
        out.extend(self.upload(tcu))
        self.stats.messages_published += len(out)
        return out

    def upload(self, tcu: Tcu) -> list[Outgoing]:
        """The buffered samples as batches (oldest first, unless misbehaving)."""
        if not tcu.buffer.waiting:
            return []
        order = "oldest_first"
        share = self.misbehaviour.out_of_order_share
        rng = np.random.default_rng([self.seed, tcu.index, self.model.t_ms])
        if share and rng.random() < share:
            order = "reversed" if rng.random() < 0.5 else "shuffled"
            self.stats.batches_out_of_order += 1
        out = []
        for ts, frags in tcu.buffer.take(MAX_SAMPLES_PER_BATCH, order, rng):
            payload = (
                encode_batch(frags, tcu.encoding)
                if self.dialect is None
                else self.dialect.batch(list(frags))
            )
            out.append(Outgoing(BATCH, tcu.topic_telemetry, payload, ts))
            self.stats.samples_published += len(ts)
        self.stats.batches_published += len(out)
        return out

    def connection_down(self, tcu: Tcu, on_purpose: bool) -> None:
        """The connection ended (report lost() for its unacknowledged messages first)."""
        if tcu.online and not on_purpose:
            self.stats.connection_losses += 1
        tcu.online = False

    def go_offline(self, device_id: str, seconds: float) -> Tcu:
        """Make a device drop its connection (no DISCONNECT) and stay away for simulated seconds."""
        tcu = self.by_id[device_id]
        self._go_offline(tcu, self.model.t_ms + max(1, int(seconds * 1000)))
        return tcu

    def _go_offline(self, tcu: Tcu, until_ms: int) -> None:
        tcu.offline_until_ms = until_ms
        self._offline.add(tcu.index)
        if tcu.online:
            self.stats.disconnects += 1
        tcu.online = False  # from now on its samples go to the buffer

    def go_online(self, device_id: str) -> Tcu:
        """End a device's offline period now."""
        tcu = self.by_id[device_id]
        tcu.offline_until_ms = None
        self._offline.discard(tcu.index)
        return tcu

    def end_offline_periods(self) -> list[Tcu]:
        back = [self.tcus[i] for i in sorted(self._offline)]
        for tcu in back:
            tcu.offline_until_ms = None
        self._offline.clear()
        return back

    def goodbye(self, tcu: Tcu) -> Outgoing:
        """Presence before a clean disconnect (which suppresses the will)."""
        # Not before its last execution: after a re-point, "offline at or after the answer's t"
        # is how the platforms know everything before it was delivered (docs/protocol.md).
        t = max(self.model.t_ms, tcu.command_log.last_exec_t)
        return Outgoing(STATUS, tcu.topic_status, status_payload(False, t), retain=True)

    # -- the broker's answers --------------------------------------------------------------

    def acked(self, tcu: Tcu, out: Outgoing) -> None:
        stats = self.stats
        stats.messages_acked += 1
        kind = out.kind
        if kind == SAMPLE:
            stats.samples_acked += 1
            stats.record_acked(tcu.device_id, out.ref, tcu.broker)
        elif kind == BATCH:
            tcu.buffer.acked(out.ref)
            stats.samples_acked += len(out.ref)
            stats.record_acked(tcu.device_id, out.ref, tcu.broker)
        elif kind == DUPLICATE:
            stats.duplicates_acked += 1
        elif kind == MALFORMED:
            stats.malformed_acked[out.ref] += 1
        elif kind == RESULT:
            stats.command_results_sent += 1

    def lost(self, tcu: Tcu, out: Outgoing) -> None:
        """The message may or may not have reached the broker: samples and command results go
        out again; duplicates, malformed messages and presence are not repeated."""
        kind = out.kind
        if kind == SAMPLE:
            self.stats.samples_dropped += tcu.buffer.add(out.ref, out.payload)
            self.stats.samples_resent += 1
        elif kind == BATCH:
            tcu.buffer.release(out.ref)
            self.stats.samples_resent += len(out.ref)
        elif kind == RESULT:
            tcu.unsent.append(out)
        # RECEIVED (an acknowledgement) is best effort: the result follows anyway.

    # -- commands --------------------------------------------------------------------------

    def command_received(self, tcu: Tcu, payload: bytes) -> CommandDecision | None:
        """Decide what to do about a command message; None means no answer (dropped, malformed
        without an id, or already being executed: that execution answers)."""
        self.stats.commands_received += 1
        try:
            cmd = parse_command(payload)
        except ValueError:
            return None
        cid = cmd["id"]
        log, beh = tcu.command_log, tcu.command_behaviour
        rng = np.random.default_rng([self.seed, tcu.index, self.stats.commands_received])
        lo, hi = beh.delay_ms
        delay = (lo + (hi - lo) * rng.random()) / 1000.0
        earlier = log.results.get(cid)
        if earlier is not None:
            return CommandDecision(cid, delay, result=earlier)
        if cid in log.executing or cid in log.held:
            return None  # that execution answers
        if rng.random() < beh.drop_share:
            self.stats.commands_dropped += 1
            return None
        if self._past_deadline(cmd):
            return self._answer_now(tcu, cid, delay, False, "expired")
        if rng.random() < beh.refuse_share:
            return self._answer_now(tcu, cid, delay, False, "refused")
        answer_after = 0.0
        if rng.random() < beh.late_share:
            lo, hi = beh.late_delay_ms
            answer_after = (lo + (hi - lo) * rng.random()) / 1000.0
        log.executing.add(cid)
        ack = None
        if beh.acknowledge:
            ack = received_payload(cid, self.model.t_ms)
            self.stats.command_acks_sent += 1
        return CommandDecision(cid, delay, command=cmd, ack=ack, answer_after_s=answer_after)

    def _past_deadline(self, cmd: dict) -> bool:
        deadline = cmd.get("deadline")
        return isinstance(deadline, int | float) and self.wall_ms() > deadline

    def _answer_now(self, tcu: Tcu, cid: str, delay: float, ok: bool, reason: str | None):
        result = result_payload(cid, ok, self.model.t_ms, reason)
        tcu.command_log.results[cid] = result
        return CommandDecision(cid, delay, result=result)

    def execute(self, tcu: Tcu, decision: CommandDecision) -> list[Outgoing]:
        """Carry out a decided command on the vehicle; returns the messages to publish (the
        result, and for locate or a state change a fresh sample)."""
        cid = decision.command_id
        if decision.command is None:
            self.stats.messages_published += 1
            return [Outgoing(RESULT, tcu.topic_result, decision.result, cid)]
        cmd, model, log = decision.command, self.model, tcu.command_log
        log.executing.discard(cid)
        if self._past_deadline(cmd):
            # Taken before its deadline but due after it (a long delay): a device never acts
            # on a command past its deadline.
            result = log.results[cid] = result_payload(cid, False, model.t_ms, "expired")
            self.stats.messages_published += 1
            return [Outgoing(RESULT, tcu.topic_result, result, cid)]
        self.stats.command_executions[(tcu.device_id, cid)] += 1
        # The device's execution time: after every sample so far and every earlier execution,
        # so "a sample at or after the result's t shows the new state" holds.
        exec_t = max(model.t_ms + 1, log.last_exec_t + 1)
        log.last_exec_t = exec_t
        out: list[Outgoing] = []
        ctype = cmd.get("type")
        try:
            if ctype == "set_config":
                self._configure(tcu, cmd.get("params") or {})
            else:
                self._actuate(tcu.index, ctype, cmd.get("params") or {})
        except CommandRefused as exc:
            result = result_payload(cid, False, model.t_ms, exc.reason)
        else:
            result = result_payload(cid, True, exec_t, None)
            if self._reports_at_once(tcu, ctype, exec_t):
                out.append(self._locate_sample(tcu, exec_t))
        if decision.answer_after_s > 0:
            log.held[cid] = result  # answered by answer_held() later
        else:
            log.results[cid] = result
        out.insert(0, Outgoing(RESULT, tcu.topic_result, result, cid))
        self.stats.messages_published += len(out)
        return out

    def _actuate(self, i: int, ctype: str | None, params: dict) -> None:
        """What the command does to vehicle i; CommandRefused when it cannot."""
        model = self.model
        changes = {
            "lock": model.lock,
            "unlock": model.unlock,
            "immobilise": model.immobilise,
            "mobilise": model.mobilise,
        }
        if ctype in changes:
            changes[ctype](i)
        elif ctype == "set_speed_limit":
            kph = params.get("kph", params.get("maximum_speed_kph"))
            if kph is not None and not isinstance(kph, int | float):
                raise CommandRefused("invalid_params", "kph must be a number")
            model.set_speed_limit(i, kph)
        elif ctype != "locate":
            raise CommandRefused("unsupported_command", f"type {ctype!r}")

    def _configure(self, tcu: Tcu, params: dict) -> None:
        """set_config (docs/protocol.md): scalar settings; `mqtt_url` moves the device to
        another broker. From the execution on, its samples wait for the new connection (they are
        at or after the result's t); the transport leaves once the old broker has acknowledged
        the result and everything before it, and connects to the new one with the same session
        and buffer."""
        if not params or not all(
            isinstance(v, str | int | float | bool) or v is None for v in params.values()
        ):
            raise CommandRefused("invalid_params", "set_config takes scalar settings")
        url = params.get("mqtt_url")
        if url is not None:
            try:
                broker_address(url)
            except ValueError as exc:
                raise CommandRefused("invalid_params", str(exc)) from None
        tcu.config.update(params)
        if url is not None:
            tcu.repoint_to = url
            tcu.online = False  # samples from now on go to the buffer, then the new broker

    def _reports_at_once(self, tcu: Tcu, ctype: str | None, exec_t: int) -> bool:
        """Whether a sample at the execution time goes with the result: for locate, and for a
        state change when the device reports those. Only t + 1 is sure to be free between two
        steps: a second report within one step is left to the next regular sample."""
        if exec_t != self.model.t_ms + 1:
            return False
        return ctype == "locate" or (tcu.command_behaviour.report_state and ctype in _STATE_CHANGES)

    def answer_held(self, tcu: Tcu, command_id: str) -> None:
        """A late answer went out: retries get it from now on."""
        result = tcu.command_log.held.pop(command_id, None)
        if result is not None:
            tcu.command_log.results[command_id] = result

    def _locate_sample(self, tcu: Tcu, t_ms: int) -> Outgoing:
        """A sample of the vehicle's state now, at t_ms: 1 ms after the last step's for the
        first one (so its (device, t) key is its own; steps are at least 2 ms apart in the
        transports); a state report is skipped when that key is taken."""
        model, i = self.model, tcu.index
        lat, lon = model.latlon()
        row: dict = {
            "t": t_ms,
            "lat": round(float(lat[i]), 6),
            "lon": round(float(lon[i]), 6),
            "speed_kmh": round(float(model.speed[i] * 3.6), 1),
            "heading_deg": round(float(model.heading[i]), 1),
            "soc_pct": round(float(model.soc[i]), 2),
            "odometer_m": round(float(model.odometer[i]), 1),
            "locked": bool(model.locked[i]),
        }
        if model.kind[i] == CAR:
            row["ignition"] = bool(model.ignition[i])
            row["immobilised"] = bool(model.immobilised[i])
        self.stats.samples_generated += 1
        self.stats.samples_published += 1
        payload = (
            encode_row(row, tcu.encoding) if self.dialect is None else self.dialect.encode([row])
        )
        return Outgoing(SAMPLE, tcu.topic_telemetry, payload, row["t"])
