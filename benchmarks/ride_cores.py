"""Alarms and trips cores benchmark: what the theft detector and the trip tracker add to every
batch, beside the battery core on the same batch in the same run, and the theft detector with
its vectorised fast path against its per-sample loop over every vehicle.

A simulated fleet (half e-bikes, half cars; most parked and locked, some riding) is stepped
through the cores; the timed batch (default 100,000 samples of 10,000 vehicles) is then given to
each from the same state. Also: measuring one ride of 2,000 fixes (trips.measure_ride).
Run: .venv/bin/python -m benchmarks.ride_cores [--vehicles 10000] [--samples 100000]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

from alarms import TheftDetector
from battery import DEFAULT_TYPES, BatteryCore
from benchmarks._runner import bench_parser, best_of, loadavg, machine, run_benchmark
from firmware_sim.model import CAR, EBIKE, FleetModel
from telemetry.batch import TelemetryBatch
from telemetry.earth import M_PER_DEG
from tests.sim_samples import as_batch
from trips import RideSamples, TripTracker, measure_ride


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=10_000, help="vehicles in the fleet")
    p.add_argument("--samples", type=int, default=100_000, help="samples in the timed batch")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each, best kept")
    return p


def _fleet_batches(vehicles: int, samples: int) -> tuple[TelemetryBatch, TelemetryBatch]:
    """A warm-up batch and the timed one: `samples // vehicles` steps of 10 s of every vehicle."""
    kinds = np.where(np.arange(vehicles) % 2 == 0, EBIKE, CAR)
    model = FleetModel(kinds, seed=3)
    warm = TelemetryBatch.concat([as_batch(model.step(10.0)) for _ in range(30)])
    steps = max(1, samples // vehicles)
    timed = TelemetryBatch.concat([as_batch(model.step(10.0)) for _ in range(steps)])
    return warm, timed


def _theft_loop_only(det: TheftDetector, batch: TelemetryBatch) -> None:
    """The detector's per-sample state machine over every vehicle (its fast path off)."""
    from alarms.theft import TheftResult, _fresh_rows, _Rows

    rows = _fresh_rows(batch, det)
    s = _Rows.take(batch, rows, det)
    result = TheftResult()
    for g in range(len(s.vehicles)):
        det._run_vehicle(int(s.vehicles[g]), s, int(s.group_start[g]), int(s.group_end[g]), result)


def _ride(n: int) -> RideSamples:
    rng = np.random.default_rng(5)
    north = np.cumsum(rng.uniform(15, 25, n)) + rng.normal(0, 3, n)
    north[rng.choice(n, 20, replace=False)] += 4000  # GPS jumps
    nan = np.full(n, np.nan)
    return RideSamples(
        time_ms=np.arange(n, dtype=np.int64) * 5000,
        lat=52.5 + north / M_PER_DEG,
        lon=np.full(n, 13.4),
        speed_kmh=np.full(n, 15.0),
        soc_pct=np.linspace(90, 60, n),
        pack_v=np.full(n, 36.0),
        pack_a=np.full(n, 8.0),
        odometer_m=nan,
        flags=np.zeros(n, dtype=np.int16),
    )


def bench(args: argparse.Namespace) -> dict:
    warm, timed = _fleet_batches(args.vehicles, args.samples)
    theft, trips, battery = TheftDetector(), TripTracker(), BatteryCore(DEFAULT_TYPES)
    vehicles = np.arange(args.vehicles)
    battery.set_vehicle_types(vehicles, ["ebike" if v % 2 == 0 else "car" for v in vehicles])
    theft.process(warm)
    trips.process(warm)
    battery.update(warm)

    def fresh(core):
        return lambda: copy.deepcopy(core)

    def timed_run(make, run):
        def once():
            core = make()
            return run(core, timed)

        return best_of(once, args.repeat)

    copy_theft, _ = best_of(fresh(theft), args.repeat)
    copy_trips, _ = best_of(fresh(trips), args.repeat)
    copy_battery, _ = best_of(fresh(battery), args.repeat)
    t_theft, result = timed_run(fresh(theft), lambda c, b: c.process(b))
    t_loop, _ = timed_run(fresh(theft), _theft_loop_only)
    t_trips, found = timed_run(fresh(trips), lambda c, b: c.process(b))
    t_battery, _ = timed_run(fresh(battery), lambda c, b: c.update(b))
    # The state copies are timed apart and taken off each run.
    t_theft, t_loop = t_theft - copy_theft, t_loop - copy_theft
    t_trips, t_battery = t_trips - copy_trips, t_battery - copy_battery
    ride = _ride(2000)
    t_measure, figures = best_of(lambda: measure_ride(ride, 0, 2000 * 5000), args.repeat)
    n = len(timed)

    def per_sample(t: float) -> float:
        return round(max(t, 0.0) / n * 1e6, 3)

    return {
        "benchmark": "ride_cores",
        "machine": machine(),
        "loadavg": loadavg(),
        "vehicles": args.vehicles,
        "samples": n,
        "us_per_sample": {
            "theft_detector": per_sample(t_theft),
            "theft_detector_loop_only": per_sample(t_loop),
            "trip_tracker": per_sample(t_trips),
            "battery_core_baseline": per_sample(t_battery),
        },
        "fast_path_speedup": round(t_loop / t_theft, 1) if t_theft > 0 else None,
        "alarms": len(result.events),
        "trip_boundaries": len(found.starts) + len(found.ends),
        "measure_ride_2000_fixes_ms": round(t_measure * 1000, 2),
        "measure_ride_rejected_fixes": figures.fixes_rejected,
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
