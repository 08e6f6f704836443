"""Vehicles moving between gateway processes: before the cores see a batch, every vehicle that
another process has advanced is continued from what that process stored, not from whatever this
process remembers from an earlier time it held the vehicle.

Each process keeps, per vehicle, the newest sample time it knows to be stored: loaded at start,
raised by its own commits. One query per batch returns the batch's vehicles whose stored time is
newer: none while one process holds every vehicle it is sent, a few when a broker hands vehicles
over (a process joins or leaves), all of them on a broker that spreads each vehicle's messages
over the processes (Mosquitto). docs/deployment.md says what that means for each core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from gateway.metrics import GatewayMetrics
from telemetry.batch import TelemetryBatch
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import AdvancedState, TelemetryStore

log = logging.getLogger(__name__)


class ResumableStage(Protocol):
    def resume(self, taken: Sequence[AdvancedState]) -> None: ...


class StateHandover:
    def __init__(
        self,
        store: TelemetryStore,
        plausibility: PlausibilityFilter,
        stages: Sequence[ResumableStage],
        metrics: GatewayMetrics,
        log_every_s: float = 10.0,
    ) -> None:
        self._store = store
        self._plausibility = plausibility
        self._stages = list(stages)
        self._metrics = metrics
        self._known = np.full(0, -1, dtype=np.int64)  # newest stored sample time known, ms
        self._log_every_s = log_every_s
        self._last_log = -1e9
        self._unlogged = 0

    async def start(self) -> None:
        """Load what is stored. Call before the stages load their states: a vehicle written in
        between is then taken over again at its next batch, never missed."""
        vehicles, t = await self._store.load_sample_times()
        if len(vehicles):
            self._grow(int(vehicles.max()) + 1)
            self._known[vehicles] = t

    async def sync(self, batch: TelemetryBatch) -> int:
        """Take over the batch's vehicles that another process advanced; returns how many."""
        started = time.perf_counter()
        vehicles = np.unique(batch.vehicle).astype(np.int64)
        self._grow(int(vehicles[-1]) + 1)
        taken = await self._store.advanced_states(vehicles.tolist(), self._known[vehicles].tolist())
        if taken:
            for stage in self._stages:
                stage.resume(taken)
            fixes = [r for r in taken if r.fix_time_ms is not None and r.lat is not None]
            if fixes:
                self._plausibility.restore(
                    np.array([r.vehicle for r in fixes], np.int64),
                    np.array([r.fix_time_ms for r in fixes], np.int64),
                    np.array([r.lat for r in fixes], np.float64),
                    np.array([r.lon for r in fixes], np.float64),
                )
            for r in taken:
                self._known[r.vehicle] = max(self._known[r.vehicle], r.time_ms)
            self._metrics.handover_vehicles.inc(len(taken))
            self._log(len(taken))
        self._metrics.handover_check_seconds.observe(time.perf_counter() - started)
        return len(taken)

    def committed(self, batch: TelemetryBatch) -> None:
        """This process stored the batch: its vehicles are known up to their newest sample."""
        if len(batch):
            self._grow(int(batch.vehicle.max()) + 1)
            np.maximum.at(self._known, batch.vehicle.astype(np.int64), batch.time_ms)

    def known_time(self, vehicle: int) -> int:
        return int(self._known[vehicle]) if vehicle < len(self._known) else -1

    def _log(self, count: int) -> None:
        # On a broker that spreads vehicles over processes this happens with every batch: one
        # line per interval with the count since the last one, not one per batch.
        self._unlogged += count
        now = time.monotonic()
        if now - self._last_log >= self._log_every_s:
            log.info(
                "vehicles_taken_over",
                extra={
                    "vehicles": self._unlogged,
                    "since_s": round(min(now - self._last_log, 1e6), 1),
                },
            )
            self._last_log, self._unlogged = now, 0

    def _grow(self, size: int) -> None:
        if size > len(self._known):
            size = max(size, 2 * len(self._known), 1024)
            self._known = np.concatenate(
                [self._known, np.full(size - len(self._known), -1, dtype=np.int64)]
            )
