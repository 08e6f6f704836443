"""Migration benchmark: a Traccar export imported through `fleetgate migrate import`'s own path,
beside a plain COPY of the same rows into the same table, in one run.

It writes a Traccar-format export (devices.json, geofences.json, groups.json and one positions
file per device, as Traccar's REST API returns them: benchmarks/_traccar_export.py), imports it
into a fresh database with migration.importer.import_export (read, map, check, register, write
through TelemetryStore.write: binary COPY into staging, deduplicated into positions, vehicle
state kept) and reports positions per second. Then the baseline: the rows the import stored,
dumped, the table emptied, and the same rows sent back with one binary COPY straight into
positions: the floor no import into that table can go below.

Targets (issue 18): at least 50,000 positions/s and at least half the COPY's rate.
Run: .venv/bin/python -m benchmarks.migration [--vehicles 1000] [--positions 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks._runner import bench_parser, cpu_seconds, loadavg, progress, run_benchmark
from benchmarks._services import BenchServices
from benchmarks._traccar_export import ExportShape, write_traccar_export

TARGET_POSITIONS_PER_S = 50_000
TARGET_SHARE_OF_COPY = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=1000, help="devices in the export")
    p.add_argument("--positions", type=int, default=10_000, help="positions per device")
    p.add_argument("--seed", type=int, default=0, help="the export's random walk")
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        help="keep the generated export in this folder and reuse it when its shape matches "
        "(default: a temporary folder, removed afterwards)",
    )
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="positions per write of the import (default: the importer's)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes reading and mapping position files (migrate import --workers)",
    )
    return p


def _check(args: argparse.Namespace) -> str | None:
    if args.vehicles < 1 or args.positions < 1:
        return "--vehicles and --positions must be at least 1"
    return None


def prepare_export(folder: Path, shape: ExportShape) -> tuple[int, bool]:
    """The export in folder, written unless the one there has this shape: (positions, reused)."""
    stamp = folder / "benchmark-shape.json"
    wanted = {"vehicles": shape.vehicles, "positions": shape.positions, "seed": shape.seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return shape.vehicles * shape.positions, True
    shutil.rmtree(folder / "positions", ignore_errors=True)
    written = write_traccar_export(folder, shape, progress)
    stamp.write_text(json.dumps(wanted))
    return written, False


async def import_through_the_product(
    dsn: str, folder: Path, chunk_rows: int | None, workers: int
) -> dict:
    """migrate import's path, timed from reading the folder to the recorded run."""
    from migration.importer import ImportOptions, import_export
    from migration.traccar_export import read_traccar_folder
    from telemetry.store import TelemetryStore

    options = ImportOptions(workers=workers)
    if chunk_rows is not None:
        options = ImportOptions(workers=workers, chunk_rows=chunk_rows)
    store = await TelemetryStore.open(dsn)
    try:
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        report = await import_export(store, read_traccar_folder(folder), "benchmark", options)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
    finally:
        await store.close()
    if report.outcome != "imported" or report.problems:
        raise RuntimeError(f"the import did not import: {report.summary()}")
    return {
        "seconds": round(seconds, 2),
        "positions": report.imported["positions"],
        "vehicles": report.imported["vehicles"],
        "positions_per_s": round(report.imported["positions"] / seconds),
        "cpu_s_this_process": round(cpu, 2),
    }


def copy_floor(dsn: str, scratch: Path) -> dict:
    """The same rows, dumped (not timed), the table emptied, and sent back with one binary COPY
    into positions (timed, with its commit)."""
    dump = scratch / "positions.copy"
    with psycopg.connect(dsn) as conn:
        with (
            open(dump, "wb") as out,
            conn.cursor().copy("COPY (SELECT * FROM positions) TO STDOUT (FORMAT BINARY)") as copy,
        ):
            for data in copy:
                out.write(data)
        conn.execute("TRUNCATE positions")
        conn.commit()
        with open(dump, "rb") as source:
            t0 = time.perf_counter()
            with conn.cursor().copy("COPY positions FROM STDIN (FORMAT BINARY)") as copy:
                while block := source.read(1 << 20):
                    copy.write(block)
            conn.commit()
            seconds = time.perf_counter() - t0
        rows = conn.execute("SELECT count(*) FROM positions").fetchone()[0]
    dump.unlink()
    return {"seconds": round(seconds, 2), "rows": rows, "positions_per_s": round(rows / seconds)}


async def bench(args: argparse.Namespace) -> dict:
    from telemetry.store import migrate

    shape = ExportShape(vehicles=args.vehicles, positions=args.positions, seed=args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="fgbench-migration-"))
    folder = args.export or scratch / "export"
    try:
        t0 = time.perf_counter()
        positions, reused = prepare_export(folder, shape)
        generated_s = time.perf_counter() - t0
        with BenchServices("fgbench_migration", broker=False) as services:
            await migrate(services.dsn, storage="native", retention_days=30)
            progress(f"importing {positions:,} positions of {args.vehicles:,} vehicles")
            imported = await import_through_the_product(
                services.dsn, folder, args.chunk_rows, args.workers
            )
            progress(f"imported at {imported['positions_per_s']:,}/s; the COPY baseline next")
            floor = await asyncio.to_thread(copy_floor, services.dsn, scratch)
            machine = services.machine()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    share = imported["positions_per_s"] / floor["positions_per_s"]
    return {
        "benchmark": "migration",
        "machine": machine,
        "loadavg_at_end": loadavg(),
        "export": {
            "vehicles": args.vehicles,
            "positions_per_vehicle": args.positions,
            "positions": positions,
            "bytes": sum(f.stat().st_size for f in folder.rglob("*.json")) if args.export else None,
            "generated_s": round(generated_s, 1),
            "reused": reused,
        },
        "import": {**imported, "workers": args.workers},
        "copy": floor,
        "import_share_of_copy": round(share, 3),
        "targets": {
            "positions_per_s": TARGET_POSITIONS_PER_S,
            "share_of_copy": TARGET_SHARE_OF_COPY,
        },
        "passed": imported["positions_per_s"] >= TARGET_POSITIONS_PER_S
        and share >= TARGET_SHARE_OF_COPY
        and imported["positions"] == floor["rows"] == positions,
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv, check=_check, passed=lambda report: report["passed"])


if __name__ == "__main__":
    main()
