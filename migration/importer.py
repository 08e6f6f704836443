"""The import shell: a mapped export into the store — vehicles and devices into the registry,
zones (validated by the geofence core) in one transaction, positions through the store's write
path (binary COPY, deduplicated on (vehicle, time)) in large chunks — and the run recorded.

    async def import_export(store, export, batch, options=ImportOptions()) -> RunReport

`export` is a TraccarExport (migration.traccar_export), a GbfsFeeds (migration.gbfs), a CsvExport
(migration.csv_source) or an already MappedSource. Every record is checked before anything is
written (an unreadable file raises UnreadableInput and nothing is imported); without
options.skip_invalid any problem means nothing is imported (outcome "refused"), with it the
invalid records are skipped and counted. Running it again adds nothing ("already_imported").
The mapped positions of the checking pass are kept for the writing pass (migration.kept: compact
numpy columns, in memory up to options.keep_bytes, beyond that in a temporary file), so an
export is read and mapped once.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from migration.analysis import start_report
from migration.columns import TimeWindow
from migration.kept import DEFAULT_MEMORY_BYTES, KeptChunks
from migration.mapping import DEFAULT, Mapping
from migration.records import MappedPositions, VehicleRecord
from migration.report import RunReport
from migration.sources import MappedSource
from telemetry.batch import TelemetryBatch
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import (
    CommandAuthority,
    DeviceCredentials,
    TelemetryStore,
    VehicleRegistration,
)
from telemetry.vehicle_types import PLAUSIBLE_SPEED_KMH

DAY_MS = 86_400_000
MIN_FILES_PER_WORKER = 4


@dataclass(frozen=True)
class ImportOptions:
    mapping: Mapping = DEFAULT
    skip_invalid: bool = False  # import the valid records, skip (and count) the others
    provision: bool = False  # issue secrets for the imported devices that have none
    since_last_run: bool = False  # only positions newer than the source's watermark per vehicle
    chunk_rows: int = 250_000  # positions per write (one transaction each)
    # Mapped positions of the checking pass kept for the writing pass (about 80 bytes a row) in
    # memory up to this many bytes; the rest in a temporary file (migration.kept).
    keep_bytes: int = DEFAULT_MEMORY_BYTES
    now_ms: int | None = None  # the clock (tests); None: now
    # Processes that read and map position files side by side (a folder export with at least
    # MIN_FILES_PER_WORKER files per process); 1: all in this process. More than 1 starts them
    # with multiprocessing's forkserver, which imports the program's main module again: it must
    # keep its work under `if __name__ == "__main__":`, as every multiprocessing program.
    workers: int = 1
    # The legacy platform (the source) keeps command authority over the imported vehicles until
    # `migrate cutover` (docs/migration.md); False: fleetgate's at once (a rehearsal).
    legacy_holds: bool = True


def map_export(export: Any, mapping: Mapping) -> MappedSource:
    """The mapper for the export's kind."""
    if isinstance(export, MappedSource):
        return export
    from migration.csv_source import CsvExport, map_csv
    from migration.gbfs import GbfsFeeds, map_gbfs
    from migration.traccar import map_traccar
    from migration.traccar_export import TraccarExport

    if isinstance(export, TraccarExport):
        return map_traccar(export, mapping)
    if isinstance(export, GbfsFeeds):
        return map_gbfs(export, mapping)
    if isinstance(export, CsvExport):
        return map_csv(export, mapping)
    raise TypeError(f"not an export: {type(export).__name__}")


async def known_vehicle_types(store: TelemetryStore) -> set[str]:
    """The vehicle types the store registers vehicles of (its registry, after GBFS
    vehicle_types)."""
    return set(await store.vehicle_types())


async def time_window(store: TelemetryStore | None, now_ms: int | None) -> TimeWindow:
    """Now, and the oldest time the store keeps (its retention), if there is a store."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    retention = await store.retention_days() if store is not None else None
    return TimeWindow(now_ms, oldest_ms=None if retention is None else now_ms - retention * DAY_MS)


async def import_export(
    store: TelemetryStore, export: Any, batch: str, options: ImportOptions = ImportOptions()
) -> RunReport:
    """Import an export as migration batch `batch` and record the run; the run's report.
    Raises UnreadableInput (migration.errors) when a position file cannot be read, before
    anything is written."""
    started_at = datetime.now(UTC)
    source = map_export(export, options.mapping)
    registry = await store.load_registry()
    source.reject_unknown_types(await known_vehicle_types(store), source.origin)
    source.reject_fitted_elsewhere({d: r.vehicle_ref for d, r in registry.items()}, source.origin)
    window = await time_window(store, options.now_ms)
    report = start_report(source, options.mapping)
    report.batch = batch
    # Every chunk is read and checked before anything is written, with --skip-invalid too: an
    # unreadable file (UnreadableInput) means nothing is imported.
    kept = KeptChunks(options.keep_bytes)
    try:
        with _collector_paused():
            await asyncio.to_thread(_check_positions, source, window, report, kept, options)
        return await _import_checked(store, source, report, kept, registry, options, started_at)
    finally:
        kept.close()


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector off while the export is parsed and mapped: every
    position's JSON dicts count as allocations that wake it, and each collection walks the
    chunk's objects again (measured: 20-30 % of the checking pass's CPU). The pass makes no
    reference cycles (its objects are freed by reference counting); cycles made elsewhere in
    the process meanwhile are collected once it is back on."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


async def _import_checked(store, source, report, kept, registry, options, started_at) -> RunReport:
    """The writing pass, after every position was read and checked (and kept)."""
    if report.has_problems and not options.skip_invalid:
        report.outcome = "refused"
        await _record(store, report, source, options, started_at, {})
        return report
    report.imported["zones"] = await _put_zones(store, source.registry.zones)
    vehicle_ids = await _register(store, source.registry.vehicles, registry, report)
    if options.legacy_holds and vehicle_ids:
        await CommandAuthority(store).hold_for_legacy(vehicle_ids.values(), source.source)
    if options.provision and vehicle_ids:
        report.secrets = await DeviceCredentials(store).provision_many(
            sorted(vehicle_ids), skip_provisioned=True
        )
    writer = _PositionWriter(store, source, vehicle_ids, options)
    # implausible jumps flagged as the gateway flags them live: by each type's limit
    writer.set_limits({t: v.plausible_speed_kmh for t, v in (await store.vehicle_types()).items()})
    if options.since_last_run:
        writer.watermarks = await store.migration_watermarks(source.source)
    try:
        async for mapped in _in_a_thread(kept):
            await writer.add(mapped)
        await writer.finish()
    finally:
        await writer.abandon()
    report.imported["positions"] = writer.inserted
    report.duplicates = writer.duplicates
    report.implausible = writer.implausible
    imported_any = any(report.imported.values()) or bool(report.secrets)
    report.outcome = "imported" if imported_any else "already_imported"
    await _record(store, report, source, options, started_at, writer.newest)
    return report


async def _in_a_thread(chunks):
    """The chunks, each read and mapped in a worker thread, so that the event loop keeps
    feeding the writes in flight (the database works while the next chunk is parsed)."""
    iterator = iter(chunks)
    done = object()
    while (mapped := await asyncio.to_thread(next, iterator, done)) is not done:
        yield mapped


def _check_positions(source, window, report, kept: KeptChunks, options) -> None:
    """Map every chunk, counting positions and problems, and keep the importable rows for the
    writing pass (none once a problem refuses the import)."""
    if source.map_chunk is not None:
        report.counts.setdefault("positions", 0)
    for mapped in _mapped(source, window, options.workers):
        report.counts["positions"] += len(mapped.rows) + sum(mapped.skipped.values())
        report.count_skipped(mapped.skipped)
        report.add_problems(mapped.problems)
        if options.skip_invalid or not report.has_problems:
            kept.add(mapped.rows)


def _mapped(source: MappedSource, window: TimeWindow, workers: int) -> Iterator[MappedPositions]:
    """The source's chunks mapped, in order: by worker processes where the chunks are files
    enough to share, else here."""
    files = source.files or []
    if source.file_mapper is None or workers < 2 or len(files) < MIN_FILES_PER_WORKER * workers:
        for _file, mapped in source.chunks(window):
            yield mapped
        return
    devices, rejected = source.devices(), dict(source.registry.rejected_devices)
    # forkserver: a fork of this process would copy its event loop and pool threads.
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(workers, mp_context=context)
    try:
        pending: deque = deque()
        for file in files:
            pending.append(pool.submit(source.file_mapper, file, devices, rejected, window))
            if len(pending) >= 2 * workers:  # a few ahead, not the whole export in memory
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # done, or an unreadable file: the files not started yet are not read
        pool.shutdown(wait=True, cancel_futures=True)


async def _put_zones(store: TelemetryStore, rows: list[dict[str, Any]]) -> int:
    """Store the zones that are new or differ from the stored ones, all in one transaction
    (as `zones import`); how many."""
    if not rows:
        return 0
    from geofence import Zone, ZoneSet

    stored = {r["id"]: Zone.from_row(r).to_row() for r in (await store.load_zones()).rows}
    changed = [r for r in rows if stored.get(r["id"]) != r]
    if changed:
        ZoneSet([Zone.from_row(r) for r in changed])  # one id once: the core's check
        await store.put_zones(changed)
    return len(changed)


async def _register(store, vehicles: list[VehicleRecord], registry, report) -> dict[str, int]:
    """Register the vehicles not registered as they are; device id -> vehicles.id of every
    vehicle of the export."""
    by_ref = {d.vehicle_ref: d for d in registry.values()}
    new = [
        v
        for v in vehicles
        if (have := by_ref.get(v.vehicle_ref)) is None
        or (have.device_id, have.vehicle_type) != (v.device_id, v.vehicle_type)
    ]
    if new:
        await store.register_vehicles(
            [VehicleRegistration(v.vehicle_ref, v.device_id, v.vehicle_type) for v in new]
        )
    report.imported["vehicles"] = sum(1 for v in new if v.vehicle_ref not in by_ref)
    report.imported["devices"] = sum(1 for v in new if v.device_id not in registry)
    devices = await store.load_devices([v.device_id for v in vehicles])
    return {d: device.vehicle for d, device in devices.items()}


@dataclass
class _PositionWriter:
    """Mapped chunks gathered into writes of options.chunk_rows rows, each sorted by vehicle
    and time, flagged for implausible jumps, and written through TelemetryStore.write."""

    store: TelemetryStore
    source: MappedSource
    vehicle_ids: dict[str, int]
    options: ImportOptions
    watermarks: dict[int, int] = field(default_factory=dict)
    newest: dict[int, int] = field(default_factory=dict)
    inserted: int = 0
    duplicates: int = 0
    implausible: int = 0
    _pending: list[TelemetryBatch] = field(default_factory=list)
    _rows: int = 0
    # Writes in flight: two, so that one commits while the next is sent (each its own
    # transaction on its own pooled connection; chunks are sorted by vehicle, so two writes
    # share at most one vehicle_state row and take their row locks in one order).
    _writing: list[asyncio.Task] = field(default_factory=list)
    max_in_flight: int = 2
    _plausibility: PlausibilityFilter = field(default_factory=PlausibilityFilter)

    def set_limits(self, speed_by_type: dict[str, float]) -> None:
        """Each vehicle's plausible speed by its type (telemetry.vehicle_types)."""
        other = PLAUSIBLE_SPEED_KMH["other"]
        self._plausibility = PlausibilityFilter(default_max_speed_kmh=other)
        types = {v.device_id: v.vehicle_type for v in self.source.registry.vehicles}
        ids = [(self.vehicle_ids[d], t) for d, t in types.items() if d in self.vehicle_ids]
        if ids:
            self._plausibility.set_limits(
                np.array([v for v, _ in ids]),
                np.array([speed_by_type.get(t, other) for _, t in ids]),
            )

    async def add(self, mapped: MappedPositions) -> None:
        batch = self._batch(mapped)
        if len(batch):
            self._pending.append(batch)
            self._rows += len(batch)
        if self._rows >= self.options.chunk_rows:
            await self.flush()

    def _batch(self, mapped: MappedPositions) -> TelemetryBatch:
        rows = mapped.rows
        ids = [self.vehicle_ids.get(d, -1) for d in rows.devices]
        vehicle = np.array(ids + [-1], np.int64)[rows.device]
        keep = vehicle >= 0
        if self.watermarks:
            never = -(2**62)
            marks = np.array([self.watermarks.get(v, never) for v in ids] + [never], np.int64)
            keep &= rows.columns["time_ms"] > marks[rows.device]
        batch = TelemetryBatch.empty(int(keep.sum()))
        batch.vehicle[:] = vehicle[keep]
        for name, values in rows.columns.items():
            getattr(batch, name)[:] = values[keep]
        return batch

    async def flush(self) -> None:
        if not self._pending:
            return
        batch = TelemetryBatch.concat(self._pending)
        self._pending, self._rows = [], 0
        batch = batch.take(np.lexsort((batch.time_ms, batch.vehicle)))
        self.implausible += self._plausibility.apply(batch)
        for start in range(0, len(batch), self.options.chunk_rows):
            part = batch.take(slice(start, start + self.options.chunk_rows))
            while len(self._writing) >= self.max_in_flight:
                await self._collect(self._writing.pop(0))
            # write_history: straight into positions where nothing is stored in the part's
            # spans yet (about twice as fast as write()'s deduplicating staging path).
            self._writing.append(asyncio.create_task(self.store.write_history(part)))
        last = batch.latest_per_vehicle()
        for v, t in zip(batch.vehicle[last].tolist(), batch.time_ms[last].tolist()):
            if t > self.newest.get(v, -(2**62)):
                self.newest[v] = t

    async def _collect(self, task: asyncio.Task) -> None:
        result = await task
        self.inserted += result.inserted
        self.duplicates += result.duplicates

    async def finish(self) -> None:
        """Write what is gathered and wait for every write."""
        await self.flush()
        while self._writing:
            await self._collect(self._writing.pop(0))

    async def abandon(self) -> None:
        """After a failure: cancel the writes in flight (their transactions roll back)."""
        for task in self._writing:
            task.cancel()
        await asyncio.gather(*self._writing, return_exceptions=True)
        self._writing.clear()


async def _record(store, report: RunReport, source, options, started_at, newest) -> None:
    report.run = await store.record_migration_run(
        batch=report.batch or "",
        source=source.source,
        origin=source.origin,
        delta=options.since_last_run,
        outcome=report.outcome,
        started_at=started_at,
        report=report.to_json(),
        watermarks=newest,
    )
