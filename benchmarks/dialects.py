"""Dialect decoding benchmark: the same samples decoded as native protocol payloads (the baseline)
and as payloads of each shipped dialect, in one run, through telemetry.decoder.decode_telemetry.

The samples are the simulated fleet's (firmware_sim), one per message; each decoded batch is
checked against the native one (times and fixes) and reported with its rejections (none).
Run: .venv/bin/python -m benchmarks.dialects [--messages 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import numpy as np

from benchmarks._runner import bench_parser, best_in_turn, loadavg, machine, run_benchmark
from firmware_sim.dialect import DialectEncoder
from firmware_sim.model import CAR, EBIKE, FleetModel
from firmware_sim.payloads import JSON, encode_samples
from telemetry.decoder import decode_telemetry
from telemetry.dialect import SHIPPED, load_dialect

VEHICLES = 100


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--messages", type=int, default=20_000, help="messages per encoding")
    p.add_argument("--repeat", type=int, default=5, help="best of this many runs of each")
    return p


def _native_payloads(messages: int) -> tuple[list[str], list[bytes], int]:
    """(device ids, native JSON single-sample payloads, now in ms)."""
    model = FleetModel([EBIKE, CAR] * (VEHICLES // 2), seed=3, start_ms=1_764_410_000_000)
    enc = np.full(model.n, JSON)
    devices: list[str] = []
    singles: list[bytes] = []
    while len(singles) < messages:
        singles += encode_samples(model.step(1.0), enc)
        devices += [f"v{i}" for i in range(model.n)]
    return devices[:messages], singles[:messages], model.t_ms


def bench(args: argparse.Namespace) -> dict:
    devices, native, now_ms = _native_payloads(args.messages)
    registry = {f"v{i}": i for i in range(VEHICLES)}
    received = [now_ms] * len(native)
    cases: dict[str, tuple[list[bytes], object]] = {"native": (native, None)}
    for name in SHIPPED:
        path = Path(str(resources.files("telemetry").joinpath(f"dialects/{name}.toml")))
        encoder = DialectEncoder.load(path)
        cases[name] = ([encoder.fragment(p) for p in native], load_dialect(name))

    def decoder(payloads, dialect):
        dialects = [dialect] * len(payloads) if dialect else None
        return lambda: decode_telemetry(
            devices, payloads, received, registry, now_ms=now_ms, dialects=dialects
        )

    best, results = best_in_turn([decoder(p, d) for p, d in cases.values()], args.repeat)
    want = results[0].batch
    report: dict = {"benchmark": "dialects", "messages": len(native)}
    for (name, _), seconds, result in zip(cases.items(), best, results):
        same_time = np.array_equal(result.batch.time_ms, want.time_ms)
        report[name] = {
            "us_per_message": round(seconds / len(native) * 1e6, 3),
            "vs_native": round(seconds / best[0], 2),
            "rejected": result.rejected,
            "same_times_and_fixes": bool(
                same_time
                and np.array_equal(result.batch.lat, want.lat, equal_nan=True)
                and np.array_equal(result.batch.lon, want.lon, equal_nan=True)
            ),
            "bytes_per_message": round(sum(map(len, cases[name][0])) / len(native), 1),
        }
    report["machine"] = machine()
    report["loadavg_after"] = loadavg()
    return report


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
