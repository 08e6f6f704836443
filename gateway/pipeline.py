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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import psycopg

from fleetgate.logs import fields
from gateway.metrics import GatewayMetrics
from gateway.stages import BatchStage, StageOutput, merge_outputs
from telemetry.batch import DeviceEvent, TelemetryBatch
from telemetry.decoder import TimeLimits, decode_events, decode_status, decode_telemetry
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import Device, StoreUnavailable, TelemetryStore

log = logging.getLogger("fleetgate.pipeline")


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
    """device id -> vehicle, reloaded from the store; refreshed at once when an unknown id shows up."""

    def __init__(self, store: TelemetryStore, plausibility: PlausibilityFilter,
                 max_speed_kmh: dict[str, float], min_refresh_s: float = 2.0) -> None:
        self._store = store
        self._plausibility = plausibility
        self._max_speed_kmh = max_speed_kmh
        self._min_refresh_s = min_refresh_s
        self._refreshed_at = -1e9
        self.devices: dict[str, Device] = {}
        self.vehicle_of: dict[str, int] = {}
        # Called with the devices after every reload (the stages match rules on vehicle types).
        self.on_refresh: list[Callable[[dict[str, Device]], None]] = []

    async def refresh(self) -> None:
        devices = await self._store.load_registry()
        self.devices = devices
        self.vehicle_of = {d: dev.vehicle for d, dev in devices.items()}
        self._refreshed_at = time.monotonic()
        if devices:
            vehicles = np.fromiter((d.vehicle for d in devices.values()), np.int64, len(devices))
            limits = np.fromiter((self._max_speed_kmh.get(d.vehicle_type, 300.0)
                                  for d in devices.values()), np.float64, len(devices))
            self._plausibility.set_limits(vehicles, limits)
        for callback in self.on_refresh:
            callback(devices)

    async def ensure_known(self, device_ids: Sequence[str]) -> None:
        """Reload once (rate-limited) if some device id is not known yet: it may be brand new."""
        if time.monotonic() - self._refreshed_at < self._min_refresh_s:
            return
        known = self.vehicle_of
        if any(d not in known for d in device_ids):
            await self.refresh()


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

    def discard_pending(self, transport: str, keep: Callable[[Any], bool]) -> int:
        """Drop that transport's messages not yet in a batch whose token fails keep() (their
        connection is gone and the broker will deliver them again); returns how many."""
        before = len(self._pending)
        self._pending = [m for m in self._pending if m.transport != transport or keep(m.token)]
        self._pending_bytes = sum(len(m.payload) for m in self._pending)
        self._update_gauges()
        return before - len(self._pending)

    @property
    def db_down(self) -> bool:
        """True from a failed write until the next successful one."""
        return self._db_down

    @property
    def unacknowledged(self) -> int:
        return len(self._pending) + self._in_write

    # --- writer side --------------------------------------------------------------------------

    async def run(self) -> None:
        """Cut and commit batches until close() and everything pending is committed."""
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
            await self._commit(self._take())

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
        if (len(self._pending) < limits.max_messages
                and self._pending_bytes < limits.max_bytes):
            self._full.clear()
        self._update_gauges()
        return taken

    async def _commit(self, items: list[Inbound]) -> None:
        metrics = self._metrics
        started = time.monotonic()
        telemetry = [m for m in items if m.kind == "telemetry"]
        events_in = [m for m in items if m.kind == "event"]
        statuses = [m for m in items if m.kind == "status"]

        await self._refresh_registry([m.device_id for m in items])
        self._first_transport = items[0].transport
        vehicle_of = self._registry.vehicle_of
        now_ms = int(time.time() * 1000)
        # Rejections by (transport, kind), then reason: telemetry's in
        # fleetgate_samples_rejected_total{reason,transport}, events' and statuses' in their own.
        rejected: dict[tuple[str, str], dict[str, int]] = {}
        problems = []

        for (transport, kind), count in Counter((m.transport, m.kind) for m in items).items():
            metrics.messages_received.labels(transport, kind).inc(count)
        batches = []
        sizes: dict[str, int] = {}  # samples per transport, in the order of the batch's rows
        for transport, msgs in _by_transport(telemetry):
            decoded = decode_telemetry(
                [m.device_id for m in msgs], [m.payload for m in msgs],
                np.fromiter((m.received_ms for m in msgs), np.int64, len(msgs)),
                vehicle_of, now_ms=now_ms, limits=self._time_limits,
                content_types=[m.content_type for m in msgs])
            batches.append(decoded.batch)
            sizes[transport] = len(decoded.batch)
            _merge(rejected.setdefault((transport, "telemetry"), {}), decoded.rejected)
            problems += decoded.problems
            metrics.samples_received.labels(transport).inc(
                len(decoded.batch) + sum(decoded.rejected.values()))
        batch = batches[0] if len(batches) == 1 else TelemetryBatch.concat(batches)
        if len(batch) and self._state_sync is not None:
            await self._sync_state(batch)
        if len(batch):
            flagged = self._plausibility.apply(batch)
            if flagged:
                metrics.samples_flagged.labels("implausible_jump").inc(flagged)
        events: list[DeviceEvent] = []
        for transport, msgs in _by_transport(events_in):
            decoded_events, ev_rejected, ev_problems = decode_events(
                [m.device_id for m in msgs], [m.payload for m in msgs], vehicle_of,
                now_ms=now_ms, limits=self._time_limits,
                content_types=[m.content_type for m in msgs])
            events += decoded_events
            _merge(rejected.setdefault((transport, "event"), {}), ev_rejected)
            problems += ev_problems
        presence = self._presence_updates(statuses, vehicle_of, rejected)
        derived = self._run_stages(batch)
        events.extend(derived.events)

        inserted, duplicates, events_inserted = await self._write(
            batch, events, presence, rejected, derived.derived)

        elapsed = time.monotonic() - started
        for (transport, kind), reasons in rejected.items():
            metrics.count_rejected(kind, transport, reasons)
        stored, duplicate = _stored_and_duplicates(inserted, duplicates, sizes)
        for transport, count in stored.items():
            metrics.samples_stored.labels(transport).inc(count)
        for transport, count in duplicate.items():
            metrics.samples_duplicate.labels(transport).inc(count)
        metrics.count_events_stored(events_inserted)
        metrics.batch_messages.observe(len(items))
        metrics.batch_samples.observe(len(batch))
        metrics.commit_seconds.observe(elapsed)
        if len(batch):
            commit_ms = time.time() * 1000.0
            delays = (commit_ms - batch.received_ms) / 1000.0
            for q in np.percentile(delays, (10, 50, 90, 99)):  # a few observations, not one per row
                metrics.sample_delay_seconds.observe(max(float(q), 0.0))
            if self._on_committed is not None:
                self._on_committed(batch, commit_ms)
        if presence and self._on_presence is not None:
            self._on_presence(presence)
        if self._on_vehicles_changed is not None and (len(batch) or events or presence):
            changed = set(np.unique(batch.vehicle).tolist())
            changed.update(e.vehicle for e in events)
            changed.update(v for v, _, _ in presence)
            self._on_vehicles_changed(changed)
        self._log_problems(rejected, problems)

        by_transport: dict[str, list[Any]] = {}
        for m in items:  # in arrival order within each transport (MQTT wants PUBACKs in order)
            by_transport.setdefault(m.transport, []).append(m.token)
        for transport, tokens in by_transport.items():
            self._acknowledge[transport](tokens)
        metrics.messages_acked.inc(len(items))
        self._in_write = 0
        self._update_gauges()
        if self._paused and self.unacknowledged < self.limits.max_pending // 2:
            self._set_paused(False)
        if not self._pending:
            self._idle.set()

    def _run_stages(self, batch: TelemetryBatch) -> StageOutput:
        """The cores over the batch, before the write: what they derive is committed with it."""
        outputs = []
        for stage in self._stages:
            started = time.perf_counter()
            outputs.append(stage.process(batch))
            self._metrics.core_seconds.labels(stage.name).observe(time.perf_counter() - started)
        return merge_outputs(outputs)

    def _presence_updates(self, statuses, vehicle_of, rejected) -> list[tuple[int, bool, int]]:
        updates = []
        for m in statuses:
            vehicle = vehicle_of.get(m.device_id)
            status = decode_status(m.payload, m.content_type)
            if vehicle is None:
                _merge(rejected.setdefault((m.transport, "status"), {}), {"unknown_device": 1})
            elif status is None:
                _merge(rejected.setdefault((m.transport, "status"), {}), {"bad_structure": 1})
            else:
                updates.append((vehicle, status.online, status.t or m.received_ms))
                self._metrics.presence_changes.labels(
                    "online" if status.online else "offline", "status").inc()
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

    async def _write(self, batch, events, presence, rejected, derived
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
                    log.warning("database_recovered", extra=fields(unacknowledged=self.unacknowledged))
                return result
            except StoreUnavailable as exc:
                await self._database_down("write", exc, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _database_down(self, what: str, exc: Exception, backoff: float = 1.0) -> None:
        self._db_down = True
        self._metrics.db_up.set(0)
        self._metrics.db_errors.labels("unavailable").inc()
        log.warning("database_unavailable", extra=fields(
            operation=what, error=str(exc)[:300], retry_in_s=backoff,
            unacknowledged=self.unacknowledged))
        await asyncio.sleep(backoff)

    async def _write_isolating(self, batch, events, rejected, derived
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
                log.error("sample_refused_by_database", extra=fields(error=str(exc)[:300]))
                # Attributed to the transport of the batch's first message: rare enough.
                kind = "telemetry" if len(batch) else "event"
                _merge(rejected.setdefault((self._first_transport, kind), {}),
                       {"store_refused": n})
                return 0, 0, Counter()
            half_b, half_e = len(batch) // 2, len(events) // 2
            # What the stages derived goes with both halves (writing it twice is harmless).
            a = await self._write_isolating(batch.take(slice(0, half_b)), events[:half_e],
                                            rejected, derived)
            b = await self._write_isolating(batch.take(slice(half_b, None)), events[half_e:],
                                            rejected, derived)
            return a[0] + b[0], a[1] + b[1], a[2] + b[2]

    def _log_problems(self, rejected: dict[str, dict[str, int]], problems) -> None:
        if not any(rejected.values()):
            return
        for reasons in rejected.values():
            _merge(self._suppressed, reasons)
        now = time.monotonic()
        if now - self._last_problem_log < 1.0:
            return  # at most one line a second, with the counts since the last one
        self._last_problem_log = now
        log.warning("samples_rejected", extra=fields(
            counts=self._suppressed,
            examples=[{"device_id": p.device_id, "reason": p.reason, "detail": p.detail}
                      for p in problems[:5]]))
        self._suppressed = {}

    def _set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._metrics.reading_paused.set(1 if paused else 0)
        if self._on_backpressure is not None:
            self._on_backpressure(paused)

    def _update_gauges(self) -> None:
        self._metrics.pending_messages.set(self.unacknowledged)
        self._metrics.queued_messages.set(len(self._pending))


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


def _stored_and_duplicates(inserted: int, duplicates: int, sizes: dict[str, int]
                           ) -> tuple[dict[str, int], dict[str, int]]:
    """A batch's stored and duplicate samples by transport: stored in proportion to each
    transport's samples, duplicates to each one's samples not stored, so that per transport
    stored + duplicate is its samples (exact unless the database refused some rows)."""
    stored = _split(inserted, sizes)
    return stored, _split(duplicates, {t: n - stored[t] for t, n in sizes.items()})


def _merge(into: dict[str, int], counts: dict[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v
