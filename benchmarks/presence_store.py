"""What presence and trips add to every batch's write: TelemetryStore.write as it is, beside the
same write without what they add to it (the vehicle_state upsert announcing vehicle.online for
the vehicles it brings back, and the statement marking the closed trips a late upload falls
into), on the same database, in turn, in one run.

Batches of live samples (default 5,000 samples of 5,000 vehicles: one row per vehicle, the most
vehicle_state rows a batch can touch), every vehicle with closed trips behind it. Prints one JSON
object. Needs PostgreSQL (FLEETGATE_BENCH_PG_DSN, default the local server).
Run: .venv/bin/python -m benchmarks.presence_store [--vehicles 5000] [--batches 20]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import psycopg

from benchmarks._runner import bench_parser, loadavg, run_benchmark
from benchmarks._services import BenchServices
from telemetry.batch import TelemetryBatch
from telemetry.store import TelemetryStore, VehicleRegistration, migrate
from telemetry.store import _store as store_module
from telemetry.store import _trips as trips_module


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=5000, help="vehicles, one sample each a batch")
    p.add_argument("--batches", type=int, default=20, help="timed batches of each kind")
    return p


def _batch(vehicles: np.ndarray, t_ms: int) -> TelemetryBatch:
    b = TelemetryBatch.empty(len(vehicles))
    b.vehicle[:] = vehicles
    b.time_ms[:] = t_ms
    b.received_ms[:] = int(time.time() * 1000)
    b.lat[:] = 52.5 + vehicles * 1e-5
    b.lon[:] = 13.4
    b.speed_kmh[:] = 12.0
    b.locked[:] = 1
    return b


@contextlib.contextmanager
def _without_presence_and_trips():
    """The write as it was before presence and trips took part in it."""
    saved, saved_mark = store_module._UPSERT_STATE_ANNOUNCING, trips_module.mark_stale

    async def no_marking(cur) -> None:
        return None

    # The plain upsert, answering no rows where the announcing one answers the events' sources.
    store_module._UPSERT_STATE_ANNOUNCING = (
        "WITH up AS (" + store_module._UPSERT_STATE + " RETURNING 1) SELECT 'x' WHERE false"
    )
    trips_module.mark_stale = no_marking
    try:
        yield
    finally:
        store_module._UPSERT_STATE_ANNOUNCING, trips_module.mark_stale = saved, saved_mark


async def bench(args: argparse.Namespace) -> dict:
    with BenchServices("fgbench_presence") as services:
        await migrate(services.dsn, storage="native")
        store = await TelemetryStore.open(services.dsn)
        try:
            ids = await store.register_vehicles(
                [VehicleRegistration(f"veh-{i}", f"tcu-{i}", "ebike") for i in range(args.vehicles)]
            )
            vehicles = np.array(sorted(ids.values()), dtype=np.int32)
            t0 = int(time.time() * 1000) - 3_600_000
            with psycopg.connect(services.dsn, autocommit=True) as conn:  # trips behind each
                conn.execute(
                    "INSERT INTO trips (vehicle, status, started_at, ended_at) "
                    "SELECT v, 'ended', to_timestamp(%s / 1000.0) + k * interval '1 min', "
                    "to_timestamp(%s / 1000.0) + k * interval '1 min' + interval '30 s' "
                    "FROM unnest(%s::int[]) AS v, generate_series(0, 4) AS k",
                    (t0, t0, vehicles.tolist()),
                )
            t = t0 + 600_000
            await store.write(_batch(vehicles, t))  # vehicle_state rows exist
            timings: dict[str, list[float]] = {"with": [], "without": []}
            for _ in range(args.batches):
                for kind in ("with", "without"):  # in turn: the machine's load falls on both
                    t += 1000
                    batch = _batch(vehicles, t)
                    context = (
                        _without_presence_and_trips()
                        if kind == "without"
                        else contextlib.nullcontext()
                    )
                    with context:
                        started = time.perf_counter()
                        await store.write(batch)
                        timings[kind].append(time.perf_counter() - started)
        finally:
            await store.close()
        med = {k: float(np.median(v)) * 1000 for k, v in timings.items()}
        return {
            "benchmark": "presence_store",
            "machine": services.machine(),
            "loadavg": loadavg(),
            "vehicles_per_batch": args.vehicles,
            "batches": args.batches,
            "write_ms_median": {k: round(v, 2) for k, v in med.items()},
            "added_ms_per_batch": round(med["with"] - med["without"], 2),
            "added_share": round(med["with"] / med["without"] - 1, 3),
        }


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
