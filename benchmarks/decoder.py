"""Decoder benchmark: decode_telemetry on batches of typical JSON and CBOR messages, and its
parsing step done the old way (all JSON payloads of a batch joined into one document) against
the way it is done now (each payload on its own), in one run; with --compare-with, also the
decode_telemetry of telemetry/decoder.py at that git revision, timed in turn with today's.
Prints one JSON object.
Run: .venv/bin/python -m benchmarks.decoder [--messages 5000] [--repeat 30] [--compare-with REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import cbor2
import numpy as np
import orjson

from benchmarks._runner import REPO, bench_parser, best_in_turn, loadavg, machine, run_benchmark
from firmware_sim.model import CAR, EBIKE, FleetModel
from firmware_sim.payloads import CBOR, JSON, encode_samples
from telemetry.decoder import decode_telemetry

START_MS = 1_764_412_800_000


def decoder_at(rev: str) -> types.ModuleType:
    """telemetry/decoder.py as it was at a git revision, imported beside today's (it imports
    today's telemetry.batch, schema and senml)."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:telemetry/decoder.py"],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decoder.py"
        path.write_bytes(source)
        spec = importlib.util.spec_from_file_location(f"decoder_at_{rev}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def typical_payloads(messages: int, encoding: int, seed: int = 3) -> tuple[list[str], list[bytes]]:
    """One sample per message, as the simulated fleet sends them (e-bikes and cars, some without
    a fix): 500 vehicles, ten steps of one second."""
    vehicles = min(500, messages)
    model = FleetModel(
        [EBIKE, CAR] * (vehicles // 2) + [EBIKE] * (vehicles % 2), seed=seed, start_ms=START_MS
    )
    encodings = np.full(vehicles, encoding)
    devices = [f"tcu-{i:04d}" for i in range(vehicles)]
    payloads: list[bytes] = []
    while len(payloads) < messages:
        payloads += encode_samples(model.step(1.0), encodings)
    return (devices * (messages // vehicles + 1))[:messages], payloads[:messages]


def parse_joined(payloads: list[bytes]) -> list[object]:
    """The old parse: one orjson call over the batch as one array (one by one when it fails)."""
    try:
        values = orjson.loads(b"[" + b",".join(payloads) + b"]")
    except orjson.JSONDecodeError:
        values = None
    if values is not None and len(values) == len(payloads):
        return values
    return parse_each(payloads, orjson.loads)


def parse_each(payloads: list[bytes], loads: Callable[[bytes], object]) -> list[object]:
    """The new parse: every payload on its own, a failure stays with its payload."""
    values: list[object] = []
    for payload in payloads:
        try:
            values.append(loads(payload))
        except Exception as exc:  # noqa: BLE001 - the failure is the value, as in the decoder
            values.append(exc)
    return values


def _best_us(fn: Callable[[], object], repeat: int, per: int) -> tuple[float, object]:
    """Best of `repeat` runs, in µs per message."""
    (best,), (result,) = _best_us_in_turn([fn], repeat, per)
    return best, result


def _best_us_in_turn(
    fns: list[Callable[[], object]], repeat: int, per: int
) -> tuple[list[float], list[object]]:
    """Best of `repeat` runs of each, run in turn, in µs per message."""
    best, results = best_in_turn(fns, repeat)
    return [round(b * 1e6 / per, 3) for b in best], results


def measure(encoding: int, messages: int, repeat: int, decoders: dict[str, Callable]) -> dict:
    """Every decoder on one batch of typical messages, then the parse step alone."""
    registry = {f"tcu-{i:04d}": i + 1 for i in range(500)}
    now_ms = START_MS + 60_000
    received = np.full(messages, now_ms, dtype=np.int64)
    devices, payloads = typical_payloads(messages, encoding)
    times, results = _best_us_in_turn(
        [
            lambda decode=decode: decode(devices, payloads, received, registry, now_ms=now_ms)
            for decode in decoders.values()
        ],
        repeat,
        messages,
    )
    for result in results:
        assert not result.rejected and len(result.batch) == messages, result.rejected
    entry: dict[str, float] = {"payload_bytes_mean": round(sum(map(len, payloads)) / messages, 1)}
    for name, us in zip(decoders, times):
        entry[f"{name}_us_per_message"] = us
        entry[f"{name}_ms_per_batch"] = round(us * messages / 1000, 2)
    loads = orjson.loads if encoding == JSON else cbor2.loads
    entry["parse_each_us_per_message"], _ = _best_us(
        lambda: parse_each(payloads, loads), repeat, messages
    )
    if encoding == JSON:
        entry["parse_joined_us_per_message"], values = _best_us(
            lambda: parse_joined(payloads), repeat, messages
        )
        assert values == parse_each(payloads, loads)
        # One malformed message in the batch: the joined parse fails and starts again.
        spoiled = [b'{"t": 1', *payloads[1:]]
        entry["parse_joined_one_malformed_us_per_message"], _ = _best_us(
            lambda: parse_joined(spoiled), repeat, messages
        )
    return entry


def bench(args: argparse.Namespace) -> dict:
    load_before = loadavg()
    decoders = {"decode_telemetry": decode_telemetry}
    if args.compare_with:
        decoders[f"decode_telemetry_at_{args.compare_with}"] = decoder_at(
            args.compare_with
        ).decode_telemetry
    report: dict[str, object] = {"messages": args.messages}
    for name, encoding in (("json", JSON), ("cbor", CBOR)):
        report[name] = measure(encoding, args.messages, args.repeat, decoders)
    report["machine"] = machine(
        numpy=np.__version__,
        orjson=orjson.__version__,
        loadavg_before=load_before,
        loadavg_after=loadavg(),
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--messages", type=int, default=5_000, help="messages per batch")
    p.add_argument(
        "--repeat", type=int, default=30, help="runs of each measurement (best is reported)"
    )
    p.add_argument(
        "--compare-with", default="", metavar="REV", help="a git revision whose decoder to time too"
    )
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
