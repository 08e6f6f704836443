"""The cores the pipeline runs over every batch (geofence, battery, alarms, trips), behind one
small interface, and their IO shells: loading state at start, reloading zones while running.

A stage's process() is synchronous and pure with respect to IO: it returns events and per-vehicle
state that the store writes in the batch's own transaction, so what the database holds and what
the stage has seen never drift apart, and a restarted gateway resumes from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from alarms import TheftDetector, TheftPolicy
from battery import DEFAULT_TYPES, BatteryCore, BatteryPolicy, BatteryType, battery_types
from geofence import (
    Hysteresis,
    InvalidZone,
    SpeedCapChange,
    ViolationPolicy,
    Zone,
    ZoneSet,
    ZoneTracker,
)
from telemetry.batch import TelemetryBatch
from telemetry.store import AdvancedState, Derived, Device, TelemetryStore
from telemetry.vehicle_types import VehicleType
from trips import TripTracker

log = logging.getLogger(__name__)


@dataclass
class StageOutput:
    events: list = field(default_factory=list)
    derived: Derived = field(default_factory=Derived)  # per-vehicle state and history rows


class BatchStage(Protocol):
    name: str

    def process(self, batch: TelemetryBatch) -> StageOutput: ...

    def set_devices(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None: ...


class GeofenceStage:
    """Zones from the database, a ZoneTracker over every batch, zone edits swapped in live."""

    name = "geofence"

    def __init__(
        self,
        store: TelemetryStore,
        *,
        hysteresis: Hysteresis = Hysteresis(),
        violations: ViolationPolicy = ViolationPolicy(),
        on_speed_caps: Callable[[list[SpeedCapChange]], None] | None = None,
    ) -> None:
        self._store = store
        self._hysteresis = hysteresis
        self._violations = violations
        self.on_speed_caps = on_speed_caps
        self.tracker: ZoneTracker | None = None
        self.version: int | None = None
        self.rejected_versions: set[int] = set()

    async def start(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None:
        """Build the zone set from the database and resume every vehicle's stored state."""
        rows = await self._store.load_zones()
        zoneset = await self._build(rows, strict=False)
        self.tracker = ZoneTracker(
            zoneset, hysteresis=self._hysteresis, violations=self._violations
        )
        self.version = rows.version
        self.set_devices(devices)
        states, last_time = await self._store.load_vehicle_json("geofence")
        self.tracker.restore(states, last_time)
        log.info(
            "zones_loaded",
            extra={"version": rows.version, "zones": len(zoneset), "vehicles_resumed": len(states)},
        )

    async def refresh(self) -> bool:
        """Swap in the zone set if the database has a newer version; True if it did."""
        version = await self._store.zone_set_version()
        if version == self.version or version in self.rejected_versions:
            return False
        rows = await self._store.load_zones()
        try:
            zoneset = await self._build(rows, strict=True)
        except InvalidZone as exc:
            # Zones are validated before they are written (API, CLI); one that is not (edited by
            # hand in SQL) must not turn every vehicle's zones upside down: keep the old set.
            self.rejected_versions.add(rows.version)
            log.error("zones_rejected", extra={"version": rows.version, "error": str(exc)})
            return False
        self.tracker.swap(zoneset)
        self.version = rows.version
        log.info("zones_swapped", extra={"version": rows.version, "zones": len(zoneset)})
        return True

    async def _build(self, rows, *, strict: bool) -> ZoneSet:
        zones = []
        for row in rows.rows:
            try:
                zones.append(Zone.from_row(row))
            except InvalidZone as exc:
                if strict:
                    raise
                # At start there is no previous set to keep: leave the bad zone out, loudly.
                log.error("zone_skipped", extra={"zone": row.get("id"), "error": str(exc)})
        zoneset = ZoneSet(zones, global_rules=rows.global_rules, version=rows.version)
        await asyncio.to_thread(lambda: zoneset.index)  # the grid build takes ~0.5 s per 1,000
        return zoneset

    def set_devices(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None:
        # Rules name vehicle type ids (GBFS vehicle_type_ids): the id is all the tracker needs.
        if self.tracker is not None and devices:
            vehicles = [d.vehicle for d in devices.values()]
            self.tracker.set_vehicle_types(vehicles, [d.vehicle_type for d in devices.values()])

    def resume(self, taken: Sequence[AdvancedState]) -> None:
        """Continue vehicles another gateway process advanced from the state it stored: that is
        exact (written with every change), so the hand-over causes no event of its own."""
        states = {r.vehicle: r.geofence for r in taken if r.geofence is not None}
        if states:
            self.tracker.restore(
                states, {v: r.time_ms for r in taken if (v := r.vehicle) in states}
            )

    def process(self, batch: TelemetryBatch) -> StageOutput:
        result = self.tracker.process(batch)
        if result.speed_caps and self.on_speed_caps is not None:
            self.on_speed_caps(result.speed_caps)
        return StageOutput(
            events=result.events,
            derived=Derived(vehicle_json={"geofence": result.states} if result.states else {}),
        )


class BatteryStage:
    """The battery-health core over every batch: its events, battery_health history rows and,
    with every history row, the vehicle's resumable state.

    Persisting a vehicle's state (~2 KB) with every batch would cost more than the samples, so it
    is written with the history rows (at most every 15 min of sample time per vehicle, and at
    every pack swap and charging start or end) and for every vehicle on a graceful stop. After a
    crash the stored state is behind the stored samples: at start the core replays the samples
    committed after its state (up to replay_max_s of sample time and replay_max_samples in all),
    writing again what they derive (events and history rows are unique, so nothing is doubled),
    and continues as if it had not stopped. Samples beyond those limits are a gap, which the
    estimators tolerate; nothing is ever counted twice.
    """

    name = "battery"

    def __init__(
        self,
        store: TelemetryStore,
        *,
        types: Mapping[str, BatteryType] = DEFAULT_TYPES,
        policy: BatteryPolicy = BatteryPolicy(),
        replay_max_s: float = 3600.0,
        replay_max_samples: int = 2_000_000,
    ) -> None:
        self._store = store
        self.core = BatteryCore(types, policy=policy)
        self.replay_max_ms = int(replay_max_s * 1000)
        self.replay_max_samples = replay_max_samples
        self.replayed = 0  # samples replayed at start

    async def start(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None:
        if vehicle_types is None:
            vehicle_types = await self._store.vehicle_types()
        self.set_devices(devices, vehicle_types)
        started = time.perf_counter()
        states, last_time = await self._store.load_vehicle_json("battery_state")
        self.core.restore(states)  # each vehicle where its saved state left off
        behind: dict[int, tuple[int, int]] = {}
        for v, state in states.items():
            saved_t, stored_t = int(state.get("t", -1)), last_time.get(v)
            if stored_t is not None and stored_t > saved_t >= 0:
                behind[v] = (max(saved_t, stored_t - self.replay_max_ms), stored_t)
        # Older than the replay window: a gap before it.
        self.core.restore({}, {v: since for v, (since, _) in behind.items()})
        self.replayed = replayed = await self._replay(behind)
        self.core.restore({}, last_time)  # whatever the replay did not reach: a gap
        log.info(
            "battery_state_loaded",
            extra={
                "vehicles_resumed": len(states),
                "vehicles_replayed": len(behind),
                "samples_replayed": replayed,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def _replay(self, behind: Mapping[int, tuple[int, int]]) -> int:
        """Run the core over the stored samples of `behind` (vehicle -> (since, until] ms) and
        store what it derives; returns how many samples it saw."""
        seen = 0
        async with contextlib.aclosing(self._store.samples_between(behind)) as batches:
            async for batch in batches:
                if seen + len(batch) > self.replay_max_samples:
                    break
                seen += len(batch)
                out = self.process(batch)
                if out.events or out.derived:
                    await self._store.write(TelemetryBatch.empty(), out.events, out.derived)
        if seen:  # a second crash need not replay this again
            await self.save(list(behind))
        return seen

    def set_devices(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None:
        """Each vehicle's pack from its type; vehicle_types (the registry) adds types registered
        since and changes edited ones."""
        if vehicle_types:
            self.core.set_types(battery_types(vehicle_types.values()))
        known = [d for d in devices.values() if d.vehicle_type in self.core.types]
        if known:
            self.core.set_vehicle_types([d.vehicle for d in known], [d.vehicle_type for d in known])

    def resume(self, taken: Sequence[AdvancedState]) -> None:
        """Continue vehicles another gateway process advanced. Its stored state is up to ~15 min
        of sample time behind what it processed; it is taken where it is newer than this
        process's own, and the samples neither state includes are a gap to the estimators (as
        after a crash), never counted twice."""
        self.core.restore(
            {r.vehicle: r.battery_state for r in taken if r.battery_state is not None},
            {r.vehicle: r.time_ms for r in taken},
        )

    def process(self, batch: TelemetryBatch) -> StageOutput:
        update = self.core.update(batch)
        history = update.history
        derived = Derived()
        if len(history):
            derived.battery_health = history.rows()
            derived.vehicle_json["battery_state"] = self.core.export_state(history.vehicle.tolist())
        return StageOutput(events=update.events, derived=derived)

    async def save(self, vehicles: Sequence[int] | None = None) -> None:
        """Store every vehicle's state (graceful stop): a restart then continues seamlessly."""
        await self._store.save_vehicle_json("battery_state", self.core.export_state(vehicles))


def merge_outputs(outputs: Iterable[StageOutput]) -> StageOutput:
    merged = StageOutput()
    for out in outputs:
        merged.events.extend(out.events)
        merged.derived.merge(out.derived)
    return merged


class AlarmStage:
    """The theft detector over every batch; its state is written with the batch that changed it
    (vehicle_state.theft), so a restart neither forgets nor repeats an episode's alarm."""

    name = "alarms"

    def __init__(self, store: TelemetryStore, *, policy: TheftPolicy | None = None) -> None:
        self._store = store
        self.detector = TheftDetector(policy or TheftPolicy())

    async def start(self, devices: Mapping[str, Device]) -> None:
        states, last_time = await self._store.load_vehicle_json("theft")
        self.detector.restore(states, last_time)

    def set_devices(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None:
        pass  # the same rule for every vehicle type

    def process(self, batch: TelemetryBatch) -> StageOutput:
        result = self.detector.process(batch)
        return StageOutput(
            events=list(result.events),
            derived=Derived(vehicle_json={"theft": result.states} if result.states else {}),
        )


class TripStage:
    """Ride boundaries (unlock, lock) found by the trips core in every batch; the store opens and
    closes the trips in the batch's own transaction. The core's state is the newest reported
    lock state, which vehicle_state holds committed with the same batch."""

    name = "trips"

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store
        self.tracker = TripTracker()
        self.boundaries = 0  # seen since start (the measurer is woken when it grows)

    async def start(self, devices: Mapping[str, Device]) -> None:
        self.tracker.restore(await self._store.load_lock_states())

    def set_devices(
        self,
        devices: Mapping[str, Device],
        vehicle_types: Mapping[str, VehicleType] | None = None,
    ) -> None:
        pass  # rides are rides whatever the type

    def process(self, batch: TelemetryBatch) -> StageOutput:
        found = self.tracker.process(batch)
        if not found:
            return StageOutput()
        self.boundaries += len(found.starts) + len(found.ends)

        def rows(items):
            return [(b.vehicle, b.time_ms, b.lat, b.lon) for b in items]

        return StageOutput(
            derived=Derived(trip_starts=rows(found.starts), trip_ends=rows(found.ends))
        )
