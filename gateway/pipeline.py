"""The batch pipeline: device messages in, committed rows out, acknowledgements only after commit.

Transports submit messages with an opaque acknowledgement token; the pipeline cuts batches by
count, bytes or age, decodes and checks them as columns, writes each batch in one transaction
(retrying while the database is away) and only then hands the batch's tokens back to be acked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

import numpy as np

from alarms import alarms_from_device_events
from gateway.metrics import GatewayMetrics
from gateway.stages import BatchStage, merge_outputs
from telemetry.batch import DeviceEvent, TelemetryBatch
from telemetry.decoder import TimeLimits, decode_events, decode_status, decode_telemetry
from telemetry.dialect import Dialect
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import (
    DataRefused,
    Derived,
    Device,
    QuarantinedMessage,
    TelemetryStore,
    retry_while_unavailable,
)
from telemetry.topics import is_device_id
from telemetry.vehicle_types import PLAUSIBLE_SPEED_KMH, VehicleType

log = logging.getLogger(__name__)

# The rejection reason of a message whose processing raised (a fault of the gateway's, not of the
# message's form): it is kept in quarantined_messages and acknowledged, never retried forever.
PROCESSING_FAILED = "processing_failed"
T = TypeVar("T")


class Inbound(NamedTuple):
    """One device message as the pipeline holds it until it is committed and acknowledged."""

    kind: str  # "telemetry" | "event" | "status"
    device_id: str
    payload: bytes
    received_ms: int
    token: Any  # handed back to its transport's acknowledge callback after commit
    content_type: str | None = None
    transport: str = "mqtt"  # key of the acknowledge callback; a metrics label
    retained: bool = False  # MQTT: a retained message the broker sent because we subscribed
    dialect: Dialect | None = None  # the payload dialect of a legacy device's telemetry


# Fields of Inbound, for C-level passes over a batch's messages (map) instead of a Python loop.
_KIND, _DEVICE_ID, _PAYLOAD, _RECEIVED_MS, _TOKEN, _CONTENT_TYPE, _TRANSPORT = (
    itemgetter(i) for i in range(7)
)
_DIALECT = itemgetter(8)


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    """When a batch is cut: at max_messages, max_bytes or when its oldest message is max_age_ms
    old; reading pauses at max_pending messages unacknowledged.

    backlog_messages: with at least this many queued the gateway is behind, and a batch takes
    this many (max_bytes still applies). A batch's fixed costs (queries, round trips, the
    cores' numpy calls) then fall on more samples: ~0.6-0.9 µs less CPU per sample at the max
    rate (benchmarks/README.md). Not always: processing a batch holds the event loop (~8 µs a
    message), and while the queue is short (the paced 30,000/s: batches of ~1,800, cut by age)
    its messages wait less for smaller batches. Memory stays bounded by max_pending.
    """

    max_messages: int = 5000
    max_bytes: int = 8 * 1024 * 1024
    max_age_ms: int = 50
    max_pending: int = 65535
    backlog_messages: int = 20_000


@dataclass(slots=True)
class _BatchInProgress:
    """One batch on its way through the stages: what each stage adds for the ones after it."""

    items: list[Inbound]
    started: float  # time.monotonic() when the batch was taken
    now_ms: int  # the time its checks compare device clocks with
    vehicle_of: dict[str, int]
    # Rejections by (transport, kind), then reason: telemetry's in
    # fleetgate_samples_rejected_total{reason,transport}, events' and statuses' in their own.
    rejected: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    problems: list = field(default_factory=list)  # examples for the log
    received: dict[str, int] = field(default_factory=dict)  # samples decoded or rejected
    sizes: dict[str, int] = field(default_factory=dict)  # samples per transport, in row order
    samples: TelemetryBatch = field(default_factory=TelemetryBatch.empty)
    flagged: int = 0  # samples the plausibility filter flagged
    events: list[DeviceEvent] = field(default_factory=list)  # decoded and derived
    presence: list[tuple[int, bool, int]] = field(default_factory=list)  # (vehicle, online, t)
    derived: Derived = field(default_factory=Derived)
    inserted: int = 0
    duplicates: int = 0
    events_inserted: Counter[str] = field(default_factory=Counter)  # by source
    _kinds: set[str] | None = None

    def of_kind(self, kind: str) -> list[Inbound]:
        kinds = self.kinds()
        if kind not in kinds:
            return []
        if len(kinds) == 1:  # a batch of telemetry alone, the common case
            return self.items
        return [m for m in self.items if m.kind == kind]

    def kinds(self) -> set[str]:
        if self._kinds is None:
            self._kinds = set(map(_KIND, self.items))
        return self._kinds

    def reject(self, transport: str, kind: str, reasons: dict[str, int]) -> None:
        _merge(self.rejected.setdefault((transport, kind), {}), reasons)


class DeviceRegistry:
    """device id -> vehicle, reloaded from the store now and then; an id it does not know is
    looked up in the store at once, so a device registered a moment ago loses nothing. The vehicle
    type registry comes with it: a device of a type registered since is met with its type.

    max_speed_kmh: plausibility limits by vehicle type id that override the type's own
    (VehicleType.plausible_speed_kmh, from its form factor)."""

    def __init__(
        self,
        store: TelemetryStore,
        plausibility: PlausibilityFilter,
        max_speed_kmh: Mapping[str, float] | None = None,
    ) -> None:
        self._store = store
        self._plausibility = plausibility
        self._max_speed_kmh = dict(max_speed_kmh or {})
        self.devices: dict[str, Device] = {}
        self.vehicle_of: dict[str, int] = {}
        self.vehicle_types: dict[str, VehicleType] = {}
        # Called with the devices and the vehicle types after every change (the stages match
        # rules on vehicle types and take each type's battery pack).
        self.on_refresh: list[Callable[[dict[str, Device], dict[str, VehicleType]], None]] = []

    async def refresh(self) -> None:
        """Reload every device and vehicle type (periodic: picks up removals and TCU swaps)."""
        self.vehicle_types = await self._store.vehicle_types()
        self._apply(await self._store.load_registry())

    async def ensure_known(self, device_ids: Sequence[str]) -> None:
        """Look up the well-formed ids not known yet: one indexed query for the batch, made for
        every batch that has some. Not rate-limited: a sample of a device the database knows must
        never be rejected as unknown because this process has not caught up yet."""
        known = self.vehicle_of
        unknown = {d for d in device_ids if d not in known}
        unknown = [d for d in unknown if is_device_id(d)]
        if not unknown:
            return
        found = await self._store.load_devices(unknown)
        if any(d.vehicle_type not in self.vehicle_types for d in found.values()):
            self.vehicle_types = await self._store.vehicle_types()
        if found:
            self._apply({**self.devices, **found})

    def max_speed_kmh(self, vehicle_type: str) -> float:
        if vehicle_type in self._max_speed_kmh:
            return self._max_speed_kmh[vehicle_type]
        known = self.vehicle_types.get(vehicle_type)
        return known.plausible_speed_kmh if known is not None else PLAUSIBLE_SPEED_KMH["other"]

    def _apply(self, devices: dict[str, Device]) -> None:
        self.devices = devices
        self.vehicle_of = {d: dev.vehicle for d, dev in devices.items()}
        if devices:
            vehicles = np.fromiter((d.vehicle for d in devices.values()), np.int64, len(devices))
            limits = np.fromiter(
                (self.max_speed_kmh(d.vehicle_type) for d in devices.values()),
                np.float64,
                len(devices),
            )
            self._plausibility.set_limits(vehicles, limits)
        for callback in self.on_refresh:
            callback(devices, self.vehicle_types)


class IngestPipeline:
    def __init__(
        self,
        store: TelemetryStore,
        registry: DeviceRegistry,
        plausibility: PlausibilityFilter,
        acknowledge: Mapping[str, Callable[[list[Any]], None]],
        *,
        limits: PipelineLimits = PipelineLimits(),
        time_limits: TimeLimits = TimeLimits(),
        metrics: GatewayMetrics,
        on_backpressure: Callable[[bool], None] | None = None,
        on_committed: Callable[[TelemetryBatch, float], None] | None = None,
        on_vehicles_changed: Callable[[set[int]], None] | None = None,
        on_presence: Callable[[list[tuple[int, bool, int]]], None] | None = None,
        stages: Sequence[BatchStage] = (),
        state_sync: Callable[[TelemetryBatch], Awaitable[Any]] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._plausibility = plausibility
        self._acknowledge = acknowledge
        self.limits = limits
        self._time_limits = time_limits
        self._metrics = metrics
        self._on_backpressure = on_backpressure
        self._on_committed = on_committed
        self._on_vehicles_changed = on_vehicles_changed
        self._on_presence = on_presence
        self._stages = list(stages)
        # Before the plausibility filter and the stages see a batch: continue the vehicles that
        # another gateway process advanced from what it stored (gateway/handover.py).
        self._state_sync = state_sync
        self._first_transport = "mqtt"
        self._pending: list[Inbound] = []
        self._pending_bytes = 0
        self._in_write = 0  # messages taken into the batch being written
        self._paused = False
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._db_down = False
        self._last_problem_log = 0.0
        self._suppressed: dict[str, int] = {}
        self._held_upstream: list[Callable[[], int]] = []
        # Read when scraped: a value set at batch boundaries showed 300 while 90,000 messages
        # waited with reading paused and the database away.
        metrics.pending_messages.set_function(self._held)
        metrics.queued_messages.set_function(lambda: len(self._pending))

    # --- transport side -----------------------------------------------------------------------

    def submit(self, item: Inbound) -> None:
        """Take one message (called synchronously from the transport's receive path)."""
        pending = self._pending
        if not pending:
            self._wakeup.set()
        pending.append(item)
        self._pending_bytes += len(item.payload)
        if len(pending) >= self.limits.max_messages or self._pending_bytes >= self.limits.max_bytes:
            self._full.set()
        if not self._paused and len(pending) + self._in_write >= self.limits.max_pending:
            self._set_paused(True)

    def submit_many(self, items: list[Inbound]) -> None:
        """Take the messages of one read (as submit() does each, in one call: a transport that
        receives many at once, such as MQTT, saves a call per message)."""
        pending = self._pending
        if not pending:
            self._wakeup.set()
        pending += items
        self._pending_bytes += sum(map(len, map(_PAYLOAD, items)))
        if len(pending) >= self.limits.max_messages or self._pending_bytes >= self.limits.max_bytes:
            self._full.set()
        if not self._paused and len(pending) + self._in_write >= self.limits.max_pending:
            self._set_paused(True)

    def count_held_upstream(self, held: Callable[[], int]) -> None:
        """Add what a transport received and holds back from the pipeline (an MQTT client while
        reading is paused) to fleetgate_pipeline_pending_messages, so that it shows all a
        process holds unacknowledged."""
        self._held_upstream.append(held)

    @property
    def db_down(self) -> bool:
        """True from a failed write until the next successful one."""
        return self._db_down

    @property
    def unacknowledged(self) -> int:
        return len(self._pending) + self._in_write

    # --- writer side --------------------------------------------------------------------------

    async def run(self) -> None:
        """Cut and commit batches until close() and everything pending is committed.

        Nothing a message contains can end this loop: a batch whose processing raises is split
        until the message that raises is alone, and that one is quarantined (_isolate). What
        still escapes is a fault of the process itself; the gateway then stops and says why.
        """
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._idle.clear()
            age_ms = time.time() * 1000.0 - self._pending[0].received_ms
            wait = (self.limits.max_age_ms - age_ms) / 1000.0
            if wait > 0 and not self._full.is_set() and not self._closing:
                try:
                    await asyncio.wait_for(self._full.wait(), wait)
                except TimeoutError:
                    pass
            items = self._take()
            if items:
                await self._commit(items)

    async def flush(self) -> None:
        """Wait until every message submitted so far is committed and acknowledged."""
        while self._pending or self._in_write:
            self._full.set()
            self._idle.clear()
            await self._idle.wait()

    def close(self) -> None:
        """Stop after what is pending has been committed (graceful shutdown)."""
        self._closing = True
        self._wakeup.set()
        self._full.set()

    def _take(self) -> list[Inbound]:
        """The next batch, off the front of the queue. A backlog's rest stays where it is (del,
        a move of pointers): slicing it off anew (pending[n:]) touched every queued message's
        reference count, up to 60,000 scattered objects a batch, ~0.35 µs per sample taken."""
        limits, pending = self.limits, self._pending
        if len(pending) <= limits.max_messages and self._pending_bytes <= limits.max_bytes:
            taken, self._pending = pending, []  # all of it, the common case
            size = self._pending_bytes
        else:
            count = limits.max_messages
            if len(pending) >= limits.backlog_messages:
                count = max(count, limits.backlog_messages)
            taken = pending[:count]
            size = sum(map(len, map(_PAYLOAD, taken)))
            if size > limits.max_bytes:  # fewer, larger messages: cut by bytes
                n, size = 0, 0
                while n < len(taken) and size < limits.max_bytes:
                    size += len(taken[n].payload)
                    n += 1
                del taken[n:]
            del pending[: len(taken)]
        self._pending_bytes -= size
        self._in_write = len(taken)
        if len(self._pending) < limits.max_messages and self._pending_bytes < limits.max_bytes:
            self._full.clear()
        return taken

    async def _commit(self, items: list[Inbound]) -> None:
        """Commit and acknowledge one batch, whatever its messages hold."""
        try:
            await self._commit_batch(items)
        except Exception as exc:
            self._metrics.pipeline_errors.labels("batch").inc()
            log.error(
                "batch_failed",
                extra={
                    "messages": len(items),
                    "error": _describe(exc),
                    "action": "committing it in parts to find the message that fails",
                },
                exc_info=exc,
            )
            await self._isolate(items, exc)
        self._in_write = 0
        if self._paused and self.unacknowledged < self.limits.max_pending // 2:
            self._set_paused(False)
        if not self._pending:
            self._idle.set()

    async def _isolate(self, items: list[Inbound], exc: Exception) -> None:
        """Bisect a batch whose processing raised: the parts that go through are committed and
        acknowledged as usual (in arrival order, as MQTT wants its PUBACKs), a message that fails
        alone is quarantined. Costs about 2·log2(n) extra commits per bad message."""
        if len(items) == 1:
            await self._quarantine(items[0], exc)
            return
        half = len(items) // 2
        for part in (items[:half], items[half:]):
            try:
                await self._commit_batch(part)
            except Exception as part_exc:
                await self._isolate(part, part_exc)

    async def _quarantine(self, m: Inbound, exc: Exception) -> None:
        """Keep a message the gateway cannot process in quarantined_messages, count it, log it
        with its traceback, and acknowledge it: retrying would fail the same way forever."""
        error = _describe(exc, 2000)
        log.error(
            "message_quarantined",
            extra={
                "device_id": m.device_id,
                "transport": m.transport,
                "kind": m.kind,
                "error": error[:300],
                "payload_bytes": len(m.payload),
                "payload_head": m.payload[:64].hex(),
            },
            exc_info=exc,
        )
        record = QuarantinedMessage(
            m.transport, m.kind, m.device_id, m.received_ms, m.payload, m.content_type, error
        )
        await self._until_stored("quarantine", lambda: self._store.quarantine([record]))
        # Counted as a message rejected whole (an event's or a status's in their own counters).
        self._metrics.count_refused(m.kind, m.transport, PROCESSING_FAILED)
        self._acknowledge_all([m])

    async def _commit_batch(self, items: list[Inbound]) -> None:
        """One batch through the pipeline's stages, in this order. Counters move only once the
        batch has committed, so a batch retried in parts is counted once."""
        started = time.monotonic()
        await self._look_up_new_devices(items)
        work = _BatchInProgress(items, started, int(time.time() * 1000), self._registry.vehicle_of)
        self._decode_telemetry(work)  # and check: device known, time within limits, values
        await self._continue_handed_over(work)
        self._flag_implausible(work)
        self._decode_events(work)
        self._decode_statuses(work)
        self._run_stages(work)  # the cores: geofence, battery
        await self._write(work)
        # Committed. Nothing below may undo that or keep the batch from being acknowledged.
        self._account(work)
        self._tell_listeners(work)
        self._acknowledge_all(items)

    # --- the stages of a batch, in order ------------------------------------------------------

    async def _look_up_new_devices(self, items: list[Inbound]) -> None:
        self._first_transport = items[0].transport
        device_ids = list(set(map(_DEVICE_ID, items)))
        await self._until_stored("registry", lambda: self._registry.ensure_known(device_ids))

    def _decode_telemetry(self, work: _BatchInProgress) -> None:
        batches = []
        for transport, msgs in _by_transport(work.of_kind("telemetry")):
            dialects = list(map(_DIALECT, msgs))
            decoded = decode_telemetry(
                list(map(_DEVICE_ID, msgs)),
                list(map(_PAYLOAD, msgs)),
                np.fromiter(map(_RECEIVED_MS, msgs), np.int64, len(msgs)),
                work.vehicle_of,
                now_ms=work.now_ms,
                limits=self._time_limits,
                content_types=list(map(_CONTENT_TYPE, msgs)),
                dialects=None if dialects.count(None) == len(dialects) else dialects,
            )
            batches.append(decoded.batch)
            work.sizes[transport] = len(decoded.batch)
            work.reject(transport, "telemetry", decoded.rejected)
            work.problems += decoded.problems
            work.received[transport] = len(decoded.batch) + sum(decoded.rejected.values())
        work.samples = batches[0] if len(batches) == 1 else TelemetryBatch.concat(batches)

    async def _continue_handed_over(self, work: _BatchInProgress) -> None:
        """Before plausibility and the cores see the samples: continue the vehicles another
        gateway process advanced from what it stored (gateway/handover.py)."""
        if len(work.samples) and self._state_sync is not None:
            await self._until_stored("state_sync", lambda: self._state_sync(work.samples))

    def _flag_implausible(self, work: _BatchInProgress) -> None:
        work.flagged = self._plausibility.apply(work.samples) if len(work.samples) else 0

    def _decode_events(self, work: _BatchInProgress) -> None:
        for transport, msgs in _by_transport(work.of_kind("event")):
            events, rejected, problems = decode_events(
                [m.device_id for m in msgs],
                [m.payload for m in msgs],
                work.vehicle_of,
                now_ms=work.now_ms,
                limits=self._time_limits,
                content_types=[m.content_type for m in msgs],
            )
            work.events += events
            work.events += alarms_from_device_events(events)  # tamper, crash: alarms too
            work.reject(transport, "event", rejected)
            work.problems += problems

    def _decode_statuses(self, work: _BatchInProgress) -> None:
        for m in work.of_kind("status"):
            vehicle = work.vehicle_of.get(m.device_id)
            status = decode_status(m.payload, m.content_type)
            reason = self._status_refusal(vehicle, status, work.now_ms)
            if reason is not None:
                work.reject(m.transport, "status", {reason: 1})
            else:
                work.presence.append((vehicle, status.online, _status_time(status.t, m)))

    def _status_refusal(self, vehicle: int | None, status, now_ms: int) -> str | None:
        limits = self._time_limits
        if vehicle is None:
            return "unknown_device"
        if status is None:
            return "bad_structure"
        if status.t is not None and status.t > now_ms + limits.max_future_ms:
            # A clock far ahead would pin the vehicle's presence: later statuses are older.
            return "time_in_future"
        if status.t is not None and status.t < now_ms - limits.max_age_ms:
            return "time_too_old"
        return None

    def _run_stages(self, work: _BatchInProgress) -> None:
        """The cores over the samples, before the write: what they derive is committed with
        them."""
        outputs = []
        for stage in self._stages:
            started = time.perf_counter()
            outputs.append(stage.process(work.samples))
            self._metrics.core_seconds.labels(stage.name).observe(time.perf_counter() - started)
        derived = merge_outputs(outputs)
        work.events.extend(derived.events)
        work.derived = derived.derived

    async def _write(self, work: _BatchInProgress) -> None:
        """Write until it commits; a batch the database refuses is split to isolate bad rows."""
        work.inserted, work.duplicates, work.events_inserted = await self._until_stored(
            "write", lambda: self._write_once(work), first_s=0.2, max_s=5.0
        )
        if self._db_down:
            self._db_down = False
            self._metrics.db_up.set(1)
            log.warning("database_recovered", extra={"unacknowledged": self._held()})

    def _account(self, work: _BatchInProgress) -> None:
        try:
            self._count(work)
            self._log_problems(work.rejected, work.problems)
        except Exception:
            self._metrics.pipeline_errors.labels("accounting").inc()
            log.exception("batch_accounting_failed")

    def _tell_listeners(self, work: _BatchInProgress) -> None:
        batch, events, presence = work.samples, work.events, work.presence
        commit_ms = time.time() * 1000.0
        if len(batch) and self._on_committed is not None:
            self._after_commit("on_committed", self._on_committed, batch, commit_ms)
        if presence and self._on_presence is not None:
            self._after_commit("on_presence", self._on_presence, presence)
        if self._on_vehicles_changed is not None and (len(batch) or events or presence):
            changed = set(np.unique(batch.vehicle).tolist())
            changed.update(e.vehicle for e in events)
            changed.update(v for v, _, _ in presence)
            self._after_commit("on_vehicles_changed", self._on_vehicles_changed, changed)

    # --- helpers of the stages ----------------------------------------------------------------

    def _count(self, work: _BatchInProgress) -> None:
        metrics = self._metrics
        for (transport, kind), count in _messages_by_transport_and_kind(work).items():
            metrics.messages_received.labels(transport, kind).inc(count)
        for transport, count in work.received.items():
            metrics.samples_received.labels(transport).inc(count)
        if work.flagged:
            metrics.samples_flagged.labels("implausible_jump").inc(work.flagged)
        for (transport, kind), reasons in work.rejected.items():
            metrics.count_rejected(kind, transport, reasons)
        stored, duplicate = _stored_and_duplicates(work.inserted, work.duplicates, work.sizes)
        for transport, count in stored.items():
            metrics.samples_stored.labels(transport).inc(count)
        for transport, count in duplicate.items():
            metrics.samples_duplicate.labels(transport).inc(count)
        metrics.count_events_stored(work.events_inserted)
        for _, online, _ in work.presence:
            metrics.presence_changes.labels("online" if online else "offline", "status").inc()
        metrics.batch_messages.observe(len(work.items))
        metrics.batch_samples.observe(len(work.samples))
        metrics.commit_seconds.observe(time.monotonic() - work.started)
        if len(work.samples):
            delays = time.time() - work.samples.received_ms / 1000.0
            for q in np.percentile(delays, (10, 50, 90, 99)):  # a few observations, not one per row
                metrics.sample_delay_seconds.observe(max(float(q), 0.0))

    def _after_commit(self, name: str, callback: Callable, *args: Any) -> None:
        """A listener of committed batches (live feed, command interlocks, hand-over): its failure
        is logged and counted, and must not keep the batch from being acknowledged."""
        try:
            callback(*args)
        except Exception:
            self._metrics.pipeline_errors.labels(name).inc()
            log.exception("commit_listener_failed", extra={"listener": name})

    def _acknowledge_all(self, items: list[Inbound]) -> None:
        by_transport: dict[str, list[Any]] = {}
        transports = set(map(_TRANSPORT, items))
        if len(transports) == 1:  # the common case, in one C-level pass
            by_transport[transports.pop()] = list(map(_TOKEN, items))
        else:
            for m in items:  # in arrival order within each transport (MQTT wants PUBACKs in order)
                by_transport.setdefault(m.transport, []).append(m.token)
        for transport, tokens in by_transport.items():
            try:
                self._acknowledge[transport](tokens)
            except Exception:  # not acknowledged: the device or broker sends it again (a duplicate)
                self._metrics.pipeline_errors.labels("acknowledge").inc()
                log.exception(
                    "acknowledge_failed", extra={"transport": transport, "messages": len(tokens)}
                )
        self._metrics.messages_acked.inc(len(items))

    async def _until_stored(
        self, what: str, attempt: Callable[[], Awaitable[T]], *, first_s=1.0, max_s=1.0
    ) -> T:
        """attempt() again and again while the database is away; meanwhile the database counts
        as down (readiness, fleetgate_db_up)."""
        return await retry_while_unavailable(
            attempt,
            lambda exc, delay: self._database_down(what, exc, delay),
            first_s=first_s,
            max_s=max_s,
        )

    def _database_down(self, what: str, exc: Exception, retry_in_s: float) -> None:
        self._db_down = True
        self._metrics.db_up.set(0)
        self._metrics.db_errors.labels("unavailable").inc()
        log.warning(
            "database_unavailable",
            extra={
                "operation": what,
                "error": str(exc)[:300],
                "retry_in_s": retry_in_s,
                "unacknowledged": self._held(),
            },
        )

    async def _write_once(self, work: _BatchInProgress) -> tuple[int, int, Counter[str]]:
        result = await self._write_isolating(work.samples, work.events, work.rejected, work.derived)
        if work.presence:
            await self._store.set_presence(work.presence)
        return result

    async def _write_isolating(
        self, batch, events, rejected, derived
    ) -> tuple[int, int, Counter[str]]:
        """(samples inserted, duplicates, events inserted by source)."""
        try:
            r = await self._store.write(batch, events, derived)
            return r.inserted, r.duplicates, Counter(r.events_by_source)
        except DataRefused as exc:
            # Not the connection: the database refused the data itself (a value the decoder let
            # through but a column cannot hold). Retrying would stall the gateway; losing the batch
            # would lose good rows. Split until the refused rows are alone, and reject only them.
            self._metrics.db_errors.labels("refused").inc()
            n = len(batch) + len(events)
            if n <= 1:
                log.error("sample_refused_by_database", extra={"error": str(exc)[:300]})
                # Attributed to the transport of the batch's first message: rare enough.
                kind = "telemetry" if len(batch) else "event"
                _merge(rejected.setdefault((self._first_transport, kind), {}), {"store_refused": n})
                return 0, 0, Counter()
            half_b, half_e = len(batch) // 2, len(events) // 2
            # What the stages derived goes with both halves (writing it twice is harmless).
            a = await self._write_isolating(
                batch.take(slice(0, half_b)), events[:half_e], rejected, derived
            )
            b = await self._write_isolating(
                batch.take(slice(half_b, None)), events[half_e:], rejected, derived
            )
            return a[0] + b[0], a[1] + b[1], a[2] + b[2]

    def _log_problems(self, rejected: dict[tuple[str, str], dict[str, int]], problems) -> None:
        if not any(rejected.values()):
            return
        for reasons in rejected.values():
            _merge(self._suppressed, reasons)
        now = time.monotonic()
        if now - self._last_problem_log < 1.0:
            return  # at most one line a second, with the counts since the last one
        self._last_problem_log = now
        log.warning(
            "samples_rejected",
            extra={
                "counts": self._suppressed,
                "examples": [
                    {"device_id": p.device_id, "reason": p.reason, "detail": p.detail}
                    for p in problems[:5]
                ],
            },
        )
        self._suppressed = {}

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._metrics.reading_paused.set(1 if paused else 0)
        if self._on_backpressure is not None:
            self._on_backpressure(paused)

    def _held(self) -> int:
        """Everything received and not yet acknowledged: in the pipeline and held upstream."""
        return self.unacknowledged + sum(held() for held in self._held_upstream)


def _status_time(t: int | None, m: Inbound) -> int:
    """When a status was true. Without its own `t`, a status that arrives live stands for the
    time it was received; a retained one the broker replays at every (re)subscription is old news
    of unknown age (epoch 0): it sets presence only for a vehicle whose presence was never set, so
    a restarted gateway never turns a silent vehicle online on the strength of it."""
    if t is not None:
        return t
    return 0 if m.retained else m.received_ms


def _by_transport(messages: list[Inbound]) -> list[tuple[str, list[Inbound]]]:
    """Messages grouped by transport, in arrival order within each group (usually one group)."""
    transports = set(map(_TRANSPORT, messages))
    if len(transports) <= 1:
        return [(transports.pop(), messages)] if messages else []
    groups: dict[str, list[Inbound]] = {}
    for m in messages:
        groups.setdefault(m.transport, []).append(m)
    return list(groups.items())


def _messages_by_transport_and_kind(work: _BatchInProgress) -> Mapping[tuple[str, str], int]:
    """The batch's messages counted by (transport, kind). The common batch, one transport's
    telemetry, without a pass over its messages: a Counter over 5,000 pairs took about 1 ms."""
    if work.kinds() == {"telemetry"} and len(work.sizes) == 1:
        # work.sizes: one entry per transport of the batch's telemetry (_decode_telemetry)
        return {(next(iter(work.sizes)), "telemetry"): len(work.items)}
    items = work.items
    return Counter(zip(map(_TRANSPORT, items), map(_KIND, items)))


def _split(count: int, sizes: dict[str, int]) -> dict[str, int]:
    """A batch's count (stored, duplicates) by transport. The store counts per batch, not per
    row: exact for a batch of one transport, else in proportion to each transport's samples
    (the remainder to the largest), which is exact too when the count is all or none of them."""
    if not sizes:
        return {}
    if len(sizes) == 1:
        return {next(iter(sizes)): count}
    total = sum(sizes.values())
    out = {t: count * n // total for t, n in sizes.items()} if total else dict.fromkeys(sizes, 0)
    out[max(sizes, key=sizes.__getitem__)] += count - sum(out.values())
    return out


def _stored_and_duplicates(
    inserted: int, duplicates: int, sizes: dict[str, int]
) -> tuple[dict[str, int], dict[str, int]]:
    """A batch's stored and duplicate samples by transport: stored in proportion to each
    transport's samples, duplicates to each one's samples not stored, so that per transport
    stored + duplicate is its samples (exact unless the database refused some rows)."""
    stored = _split(inserted, sizes)
    return stored, _split(duplicates, {t: n - stored[t] for t, n in sizes.items()})


def _describe(exc: BaseException, limit: int = 300) -> str:
    return f"{type(exc).__name__}: {exc}"[:limit]


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v
