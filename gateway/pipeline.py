"""The batch pipeline: device messages in, committed rows out, acknowledgements only after commit.

Transports submit messages with an opaque acknowledgement token; the pipeline cuts batches by
count, bytes or age, decodes and checks them as columns, writes each batch in one transaction
(retrying while the database is away) and only then hands the batch's tokens back to be acked.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import psycopg

from gateway.metrics import GatewayMetrics
from gateway.stages import BatchStage, StageOutput, merge_outputs
from telemetry.batch import DeviceEvent, TelemetryBatch
from telemetry.decoder import TimeLimits, decode_events, decode_status, decode_telemetry
from telemetry.plausibility import PlausibilityFilter
from telemetry.schema import DEVICE_ID_PATTERN
from telemetry.store import Device, QuarantinedMessage, StoreUnavailable, TelemetryStore

log = logging.getLogger(__name__)

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
# The rejection reason of a message whose processing raised (a fault of the gateway's, not of the
# message's form): it is kept in quarantined_messages and acknowledged, never retried forever.
PROCESSING_FAILED = "processing_failed"


class Inbound(NamedTuple):
    """One device message as the pipeline holds it until it is committed and acknowledged."""

    kind: str  # "telemetry" | "event" | "status"
    device_id: str
    payload: bytes
    received_ms: int
    token: Any  # handed back to its transport's acknowledge callback after commit
    content_type: str | None = None
    transport: str = "mqtt"  # key of the acknowledge callback; a metrics label


@dataclass(frozen=True, slots=True)
class PipelineLimits:
    max_messages: int = 5000
    max_bytes: int = 8 * 1024 * 1024
    max_age_ms: int = 50
    max_pending: int = 65535


class DeviceRegistry:
    """device id -> vehicle, reloaded from the store now and then; an id it does not know is
    looked up in the store at once, so a device registered a moment ago loses nothing."""

    def __init__(
        self,
        store: TelemetryStore,
        plausibility: PlausibilityFilter,
        max_speed_kmh: dict[str, float],
    ) -> None:
        self._store = store
        self._plausibility = plausibility
        self._max_speed_kmh = max_speed_kmh
        self.devices: dict[str, Device] = {}
        self.vehicle_of: dict[str, int] = {}
        # Called with the devices after every change (the stages match rules on vehicle types).
        self.on_refresh: list[Callable[[dict[str, Device]], None]] = []

    async def refresh(self) -> None:
        """Reload every device (periodic: picks up removals and TCU swaps)."""
        self._apply(await self._store.load_registry())

    async def ensure_known(self, device_ids: Sequence[str]) -> None:
        """Look up the well-formed ids not known yet: one indexed query for the batch, made for
        every batch that has some. Not rate-limited: a sample of a device the database knows must
        never be rejected as unknown because this process has not caught up yet."""
        known = self.vehicle_of
        unknown = {d for d in device_ids if d not in known}
        unknown = [d for d in unknown if _DEVICE_ID.fullmatch(d)]
        if not unknown:
            return
        found = await self._store.load_devices(unknown)
        if found:
            self._apply({**self.devices, **found})

    def _apply(self, devices: dict[str, Device]) -> None:
        self.devices = devices
        self.vehicle_of = {d: dev.vehicle for d, dev in devices.items()}
        if devices:
            vehicles = np.fromiter((d.vehicle for d in devices.values()), np.int64, len(devices))
            limits = np.fromiter(
                (self._max_speed_kmh.get(d.vehicle_type, 300.0) for d in devices.values()),
                np.float64,
                len(devices),
            )
            self._plausibility.set_limits(vehicles, limits)
        for callback in self.on_refresh:
            callback(devices)


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
        limits, pending = self.limits, self._pending
        n, size = 0, 0
        while n < len(pending) and n < limits.max_messages and size < limits.max_bytes:
            size += len(pending[n].payload)
            n += 1
        taken, self._pending = pending[:n], pending[n:]
        self._pending_bytes -= size
        self._in_write = n
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
        while True:
            try:
                await self._store.quarantine([record])
                break
            except StoreUnavailable as down:
                await self._database_down("quarantine", down)
        # Counted as a message rejected whole (an event's or a status's in their own counters).
        self._metrics.count_refused(m.kind, m.transport, PROCESSING_FAILED)
        self._acknowledge_all([m])

    async def _commit_batch(self, items: list[Inbound]) -> None:
        """Decode, check, run the cores over, write and acknowledge one batch. Counters move only
        once the batch has committed, so a batch retried in parts is counted once."""
        telemetry = [m for m in items if m.kind == "telemetry"]
        events_in = [m for m in items if m.kind == "event"]
        statuses = [m for m in items if m.kind == "status"]

        started = time.monotonic()
        await self._refresh_registry([m.device_id for m in items])
        self._first_transport = items[0].transport
        vehicle_of = self._registry.vehicle_of
        now_ms = int(time.time() * 1000)
        # Rejections by (transport, kind), then reason: telemetry's in
        # fleetgate_samples_rejected_total{reason,transport}, events' and statuses' in their own.
        rejected: dict[tuple[str, str], dict[str, int]] = {}
        problems = []

        batches = []
        received: dict[str, int] = {}  # samples decoded or rejected, per transport
        sizes: dict[str, int] = {}  # samples per transport, in the order of the batch's rows
        for transport, msgs in _by_transport(telemetry):
            decoded = decode_telemetry(
                [m.device_id for m in msgs],
                [m.payload for m in msgs],
                np.fromiter((m.received_ms for m in msgs), np.int64, len(msgs)),
                vehicle_of,
                now_ms=now_ms,
                limits=self._time_limits,
                content_types=[m.content_type for m in msgs],
            )
            batches.append(decoded.batch)
            sizes[transport] = len(decoded.batch)
            _merge(rejected.setdefault((transport, "telemetry"), {}), decoded.rejected)
            problems += decoded.problems
            received[transport] = len(decoded.batch) + sum(decoded.rejected.values())
        batch = batches[0] if len(batches) == 1 else TelemetryBatch.concat(batches)
        if len(batch) and self._state_sync is not None:
            await self._sync_state(batch)
        flagged = self._plausibility.apply(batch) if len(batch) else 0
        events: list[DeviceEvent] = []
        for transport, msgs in _by_transport(events_in):
            decoded_events, ev_rejected, ev_problems = decode_events(
                [m.device_id for m in msgs],
                [m.payload for m in msgs],
                vehicle_of,
                now_ms=now_ms,
                limits=self._time_limits,
                content_types=[m.content_type for m in msgs],
            )
            events += decoded_events
            _merge(rejected.setdefault((transport, "event"), {}), ev_rejected)
            problems += ev_problems
        presence = self._presence_updates(statuses, vehicle_of, rejected, now_ms)
        derived = self._run_stages(batch)
        events.extend(derived.events)

        inserted, duplicates, events_inserted = await self._write(
            batch, events, presence, rejected, derived.derived
        )

        # Committed. Nothing below may undo that or keep the batch from being acknowledged.
        try:
            self._count(
                items,
                received,
                rejected,
                sizes,
                inserted,
                duplicates,
                events_inserted,
                flagged,
                batch,
                presence,
                time.monotonic() - started,
            )
            self._log_problems(rejected, problems)
        except Exception:
            self._metrics.pipeline_errors.labels("accounting").inc()
            log.exception("batch_accounting_failed")
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
        self._acknowledge_all(items)

    def _count(
        self,
        items,
        received,
        rejected,
        sizes,
        inserted,
        duplicates,
        events_inserted,
        flagged,
        batch,
        presence,
        elapsed,
    ) -> None:
        metrics = self._metrics
        for (transport, kind), count in Counter((m.transport, m.kind) for m in items).items():
            metrics.messages_received.labels(transport, kind).inc(count)
        for transport, count in received.items():
            metrics.samples_received.labels(transport).inc(count)
        if flagged:
            metrics.samples_flagged.labels("implausible_jump").inc(flagged)
        for (transport, kind), reasons in rejected.items():
            metrics.count_rejected(kind, transport, reasons)
        stored, duplicate = _stored_and_duplicates(inserted, duplicates, sizes)
        for transport, count in stored.items():
            metrics.samples_stored.labels(transport).inc(count)
        for transport, count in duplicate.items():
            metrics.samples_duplicate.labels(transport).inc(count)
        metrics.count_events_stored(events_inserted)
        for _, online, _ in presence:
            metrics.presence_changes.labels("online" if online else "offline", "status").inc()
        metrics.batch_messages.observe(len(items))
        metrics.batch_samples.observe(len(batch))
        metrics.commit_seconds.observe(elapsed)
        if len(batch):
            delays = time.time() - batch.received_ms / 1000.0
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

    def _run_stages(self, batch: TelemetryBatch) -> StageOutput:
        """The cores over the batch, before the write: what they derive is committed with it."""
        outputs = []
        for stage in self._stages:
            started = time.perf_counter()
            outputs.append(stage.process(batch))
            self._metrics.core_seconds.labels(stage.name).observe(time.perf_counter() - started)
        return merge_outputs(outputs)

    def _presence_updates(
        self, statuses, vehicle_of, rejected, now_ms: int
    ) -> list[tuple[int, bool, int]]:
        updates = []
        limits = self._time_limits
        for m in statuses:
            vehicle = vehicle_of.get(m.device_id)
            status = decode_status(m.payload, m.content_type)
            reason = None
            if vehicle is None:
                reason = "unknown_device"
            elif status is None:
                reason = "bad_structure"
            elif status.t is not None and status.t > now_ms + limits.max_future_ms:
                # A clock far ahead would pin the vehicle's presence: later statuses are older.
                reason = "time_in_future"
            elif status.t is not None and status.t < now_ms - limits.max_age_ms:
                reason = "time_too_old"
            if reason is not None:
                _merge(rejected.setdefault((m.transport, "status"), {}), {reason: 1})
            else:
                updates.append((vehicle, status.online, status.t or m.received_ms))
        return updates

    async def _sync_state(self, batch: TelemetryBatch) -> None:
        while True:
            try:
                await self._state_sync(batch)
                return
            except StoreUnavailable as exc:
                await self._database_down("state_sync", exc)

    async def _refresh_registry(self, device_ids: list[str]) -> None:
        while True:
            try:
                await self._registry.ensure_known(device_ids)
                return
            except StoreUnavailable as exc:
                await self._database_down("registry", exc)

    async def _write(
        self, batch, events, presence, rejected, derived
    ) -> tuple[int, int, Counter[str]]:
        """Write until it commits; a batch the database refuses is split to isolate bad rows."""
        backoff = 0.2
        while True:
            try:
                result = await self._write_isolating(batch, events, rejected, derived)
                if presence:
                    await self._store.set_presence(presence)
                if self._db_down:
                    self._db_down = False
                    self._metrics.db_up.set(1)
                    log.warning("database_recovered", extra={"unacknowledged": self._held()})
                return result
            except StoreUnavailable as exc:
                await self._database_down("write", exc, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _database_down(self, what: str, exc: Exception, backoff: float = 1.0) -> None:
        self._db_down = True
        self._metrics.db_up.set(0)
        self._metrics.db_errors.labels("unavailable").inc()
        log.warning(
            "database_unavailable",
            extra={
                "operation": what,
                "error": str(exc)[:300],
                "retry_in_s": backoff,
                "unacknowledged": self._held(),
            },
        )
        await asyncio.sleep(backoff)

    async def _write_isolating(
        self, batch, events, rejected, derived
    ) -> tuple[int, int, Counter[str]]:
        """(samples inserted, duplicates, events inserted by source)."""
        try:
            r = await self._store.write(batch, events, derived)
            return r.inserted, r.duplicates, Counter(r.events_by_source)
        except StoreUnavailable:
            raise
        except psycopg.Error as exc:
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


def _by_transport(messages: list[Inbound]) -> list[tuple[str, list[Inbound]]]:
    """Messages grouped by transport, in arrival order within each group (usually one group)."""
    groups: dict[str, list[Inbound]] = {}
    for m in messages:
        groups.setdefault(m.transport, []).append(m)
    return list(groups.items())


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
