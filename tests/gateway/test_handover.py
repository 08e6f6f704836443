"""gateway/handover.py against the real store: a vehicle another process advanced is continued
from what that process stored, once; what this process committed itself is never taken over."""

from __future__ import annotations

import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.handover import StateHandover
from gateway.metrics import GatewayMetrics
from telemetry.batch import TelemetryBatch
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import AdvancedState, TelemetryStore
from tests.harness import metric, register

pytestmark = pytest.mark.integration


def fixes(vehicle: int, t0: int, n: int) -> TelemetryBatch:
    batch = TelemetryBatch.empty(n)
    batch.vehicle[:] = vehicle
    batch.time_ms[:] = [t0 + k * 1000 for k in range(n)]
    batch.lat[:] = 52.5
    batch.lon[:] = [13.4 + k * 1e-4 for k in range(n)]
    batch.received_ms[:] = t0
    return batch


class RecordingStage:
    def __init__(self) -> None:
        self.resumed: list[list[AdvancedState]] = []

    def resume(self, taken) -> None:
        self.resumed.append(list(taken))


async def started(store: TelemetryStore) -> tuple[StateHandover, RecordingStage, CollectorRegistry]:
    registry = CollectorRegistry()
    stage = RecordingStage()
    handover = StateHandover(store, PlausibilityFilter(), [stage], GatewayMetrics(registry))
    await handover.start()
    return handover, stage, registry


async def test_a_vehicle_another_process_advanced_is_taken_over_once(pg_dsn):
    vehicle = (await register(pg_dsn, [("tcu-1", "veh-1", "ebike")]))["tcu-1"]
    t0 = int(time.time() * 1000) - 600_000
    store = await TelemetryStore.open(pg_dsn)
    try:
        here, stage, registry = await started(store)
        await store.write(fixes(vehicle, t0, 5))  # written by another process
        mine = fixes(vehicle, t0 + 10_000, 3)
        assert await here.sync(mine) == 1
        (taken,) = stage.resumed
        assert [(s.vehicle, s.time_ms) for s in taken] == [(vehicle, t0 + 4000)]
        assert here.known_time(vehicle) == t0 + 4000
        assert metric(registry, "fleetgate_handover_vehicles_total") == 1
        assert await here.sync(mine) == 0, "taken over once, not at every batch"
    finally:
        await store.close()


async def test_what_this_process_committed_is_never_taken_over(pg_dsn):
    vehicle = (await register(pg_dsn, [("tcu-1", "veh-1", "ebike")]))["tcu-1"]
    t0 = int(time.time() * 1000) - 600_000
    store = await TelemetryStore.open(pg_dsn)
    try:
        here, stage, _ = await started(store)
        first = fixes(vehicle, t0, 5)
        assert await here.sync(first) == 0
        await store.write(first)
        here.committed(first)
        assert await here.sync(fixes(vehicle, t0 + 10_000, 2)) == 0 and stage.resumed == []
    finally:
        await store.close()


async def test_a_restarted_process_starts_from_what_is_stored(pg_dsn):
    vehicle = (await register(pg_dsn, [("tcu-1", "veh-1", "ebike")]))["tcu-1"]
    t0 = int(time.time() * 1000) - 600_000
    store = await TelemetryStore.open(pg_dsn)
    try:
        await store.write(fixes(vehicle, t0, 5))
        here, stage, _ = await started(store)  # loads the stored times at start
        assert here.known_time(vehicle) == t0 + 4000
        assert await here.sync(fixes(vehicle, t0 + 10_000, 1)) == 0 and stage.resumed == []
        assert here.known_time(np.int64(10**6)) == -1, "a vehicle never seen is unknown"
    finally:
        await store.close()
