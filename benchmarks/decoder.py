"""Decoder benchmark: decode_telemetry on batches of typical JSON and CBOR messages, and its
parsing step done the old way (all JSON payloads of a batch joined into one document) against
the way it is done now (each payload on its own), in one run; with --compare-with, also the
decode_telemetry of telemetry/decoder.py at that git revision, timed in turn with today's.
Prints one JSON object.
Run: .venv/bin/python benchmarks/decoder.py [--messages 5000] [--repeat 30] [--compare-with REV]
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import cbor2
import numpy as np
import orjson
import typer

# Run as a script, this file's directory comes first on sys.path: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._services import cpu_model  # noqa: E402
from firmware_sim.model import CAR, EBIKE, FleetModel  # noqa: E402
from firmware_sim.payloads import CBOR, JSON, encode_samples  # noqa: E402
from telemetry.decoder import decode_telemetry  # noqa: E402

START_MS = 1_764_412_800_000
REPO = Path(__file__).resolve().parents[1]


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
    """Best of `repeat` runs of each, in µs per message; the functions run in turn, so that
    a change in the machine's load falls on all of them alike."""
    best = [float("inf")] * len(fns)
    results: list[object] = [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return [round(b * 1e6 / per, 3) for b in best], results


def _machine() -> dict:
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "orjson": orjson.__version__,
    }


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


def main(
    messages: int = typer.Option(5_000, help="messages per batch"),
    repeat: int = typer.Option(30, help="runs of each measurement (best is reported)"),
    compare_with: str = typer.Option("", help="a git revision whose decoder to time too"),
) -> None:
    load_before = os.getloadavg()
    decoders = {"decode_telemetry": decode_telemetry}
    if compare_with:
        decoders[f"decode_telemetry_at_{compare_with}"] = decoder_at(compare_with).decode_telemetry
    report: dict[str, object] = {"messages": messages}
    for name, encoding in (("json", JSON), ("cbor", CBOR)):
        report[name] = measure(encoding, messages, repeat, decoders)
    report["machine"] = {
        **_machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
