"""The gateway's CPU for one batch as a function of its size: a fixed part per batch and a part per
sample, from the decode to the commit (benchmarks/ingest.py measures the whole process, receive
side and all, and cannot tell the two apart).

A fresh database and broker, fleetgate's gateway in this process (its stages, its store) and
batches of the simulated fleet's single-sample JSON messages handed straight to the pipeline's
commit (IngestPipeline._commit_batch: device lookup, hand-over check, decode, plausibility, the
cores, the write in one transaction, accounting, listeners): no MQTT in between. For each size,
--reps batches after one to warm up; the CPU time of this process per batch (time.process_time:
what the gateway's own thread and psycopg spent, not the server's) is the least of the reps, the
figure least disturbed by other processes on a loaded machine. A straight line through (size,
CPU) gives the fixed cost per batch and the cost per sample. With each size: the statements a
batch sends (cursor execute and COPY; BEGIN and COMMIT besides), the minor page faults per batch
and the CPU of each synchronous step (benchmarks/_stage_profile.py) per batch. With 300
vehicles a batch of 300 samples or more holds every one: what each vehicle of a batch costs
counts as fixed.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time
from collections.abc import Iterator

import numpy as np
import psycopg
from psycopg import AsyncCursor

from benchmarks._runner import bench_parser, loadavg, run_benchmark
from benchmarks._services import BenchServices, running_gateway
from benchmarks._stage_profile import StageProfile
from benchmarks.ingest import registrations
from firmware_sim.fleet import FleetOptions
from firmware_sim.model import FleetModel
from firmware_sim.payloads import JSON, encode_samples
from firmware_sim.roster import Roster
from gateway.pipeline import Inbound


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--sizes", default="100,1000,5000", help="samples per batch, comma-separated")
    p.add_argument("--reps", type=int, default=8, help="measured batches per size")
    p.add_argument("--vehicles", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    return p


def fleet_messages(vehicles: int, seed: int, count: int) -> list[tuple[str, bytes]]:
    """(device id, JSON payload) of `count` samples, one step of the whole fleet after another
    (one second apart, ending an hour ago: every one within the time limits)."""
    o = FleetOptions(vehicles=vehicles, seed=seed)
    roster = Roster.build(
        o.vehicles, o.car_share, o.device_id_pattern, o.vehicle_ref_pattern, mix=o.mix
    )
    steps = -(-count // vehicles)
    model = FleetModel(
        roster.kinds,
        seed=seed,
        start_ms=int(time.time() * 1000) - 3_600_000 - steps * 1000,
        area=o.area,
    )
    encoding = np.full(vehicles, JSON)
    out: list[tuple[str, bytes]] = []
    while len(out) < count:
        out += zip(roster.device_ids, encode_samples(model.step_ms(1000), encoding))
    return out[:count]


@contextlib.contextmanager
def counted_statements() -> Iterator[dict[str, int]]:
    """Counts the statements the store's cursors send (execute, COPY) while the block runs."""
    counts = {"execute": 0, "copy": 0}
    execute, copy = AsyncCursor.execute, AsyncCursor.copy

    async def counted_execute(self, *args, **kwargs):
        counts["execute"] += 1
        return await execute(self, *args, **kwargs)

    def counted_copy(self, *args, **kwargs):
        counts["copy"] += 1
        return copy(self, *args, **kwargs)

    AsyncCursor.execute, AsyncCursor.copy = counted_execute, counted_copy
    try:
        yield counts
    finally:
        AsyncCursor.execute, AsyncCursor.copy = execute, copy


async def bench(args: argparse.Namespace) -> dict:
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    sizes = [int(s) for s in args.sizes.split(",")]
    messages = fleet_messages(args.vehicles, args.seed, sum(sizes) * (args.reps + 1))
    with BenchServices("fgbatch") as services:
        await migrate(services.dsn)
        store = await TelemetryStore.open(services.dsn)
        await store.register_vehicles(
            [
                VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t)
                for d, r, t in registrations(args.vehicles, args.seed)
            ]
        )
        await store.close()
        async with running_gateway(services.dsn, services.broker, "fleet", "batch-cost") as gw:
            pipeline = gw.pipeline
            pipeline._acknowledge = {"mqtt": lambda tokens: None}  # no broker sent these
            by_size: dict[int, dict] = {}
            taken = 0
            for size in sizes:
                cpu = []
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                with StageProfile() as profile, counted_statements() as statements:
                    for rep in range(args.reps + 1):
                        now = int(time.time() * 1000)
                        batch = [
                            Inbound("telemetry", d, p, now, None)
                            for d, p in messages[taken : taken + size]
                        ]
                        taken += size
                        started = time.process_time()
                        await pipeline._commit_batch(batch)
                        if rep:  # the first warms up
                            cpu.append(time.process_time() - started)
                batches = args.reps + 1
                by_size[size] = {
                    "cpu_ms_per_batch": round(min(cpu) * 1e3, 3),
                    "cpu_ms_per_batch_median": round(float(np.median(cpu)) * 1e3, 3),
                    "cpu_us_per_sample": round(min(cpu) * 1e6 / size, 2),
                    "statements_per_batch": {k: v / batches for k, v in statements.items()},
                    "minor_faults_per_batch": round(
                        (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / batches
                    ),
                    "step_us_per_batch": {
                        label: round(ns / 1e3 / batches)
                        for label, ns in profile.ns.items()
                        if ns and not label.startswith(("mqtt", "ingress"))
                    },
                }
        with psycopg.connect(services.dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM positions").fetchone()[0]
        per_sample, fixed = (
            np.polyfit(sizes, [by_size[s]["cpu_ms_per_batch"] for s in sizes], 1)
            if len(sizes) > 1
            else (float("nan"), float("nan"))
        )
        return {
            "benchmark": "batch_cost",
            "machine": services.machine(),
            "vehicles": args.vehicles,
            "samples": taken,
            "every_sample_stored": stored == taken,
            "fixed_ms_per_batch": round(float(fixed), 3),
            "us_per_sample": round(float(per_sample) * 1e3, 3),
            "by_size": by_size,
            "loadavg": loadavg(),
        }


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
