"""Decoder benchmark: decode_telemetry on batches of typical JSON and CBOR messages, and its
parsing step done the old way (all JSON payloads of a batch joined into one document) against
the way it is done now (each payload on its own), in one run. Prints one JSON object.
Run: .venv/bin/python benchmarks/decoder.py [--messages 5000] [--repeat 30]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cbor2
import numpy as np
import orjson
import typer

# Run as a script, this file's directory comes first on sys.path: put the repository root first.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_sim.model import CAR, EBIKE, FleetModel  # noqa: E402
from firmware_sim.payloads import CBOR, JSON, encode_samples  # noqa: E402
from telemetry.decoder import decode_telemetry  # noqa: E402

START_MS = 1_764_412_800_000


def typical_payloads(messages: int, encoding: int, seed: int = 3) -> tuple[list[str], list[bytes]]:
    """One sample per message, as the simulated fleet sends them (e-bikes and cars, some without
    a fix): 500 vehicles, ten steps of one second."""
    vehicles = min(500, messages)
    model = FleetModel([EBIKE, CAR] * (vehicles // 2) + [EBIKE] * (vehicles % 2), seed=seed,
                       start_ms=START_MS)
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
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return round(best * 1e6 / per, 3), result


def _machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "orjson": orjson.__version__}


def main(messages: int = typer.Option(5_000, help="messages per batch"),
         repeat: int = typer.Option(30, help="runs of each measurement (best is reported)")
         ) -> None:
    load_before = os.getloadavg()
    registry = {f"tcu-{i:04d}": i + 1 for i in range(500)}
    received = np.full(messages, START_MS + 60_000, dtype=np.int64)
    now_ms = START_MS + 60_000
    report: dict[str, object] = {"messages": messages}
    for name, encoding in (("json", JSON), ("cbor", CBOR)):
        devices, payloads = typical_payloads(messages, encoding)
        decode_us, result = _best_us(lambda: decode_telemetry(
            devices, payloads, received, registry, now_ms=now_ms), repeat, messages)
        assert not result.rejected and len(result.batch) == messages, result.rejected
        loads = orjson.loads if encoding == JSON else cbor2.loads
        each_us, _ = _best_us(lambda: parse_each(payloads, loads), repeat, messages)
        entry = {"decode_telemetry_us_per_message": decode_us,
                 "decode_telemetry_ms_per_batch": round(decode_us * messages / 1000, 2),
                 "payload_bytes_mean": round(sum(map(len, payloads)) / messages, 1),
                 "parse_each_us_per_message": each_us}
        if encoding == JSON:
            joined_us, values = _best_us(lambda: parse_joined(payloads), repeat, messages)
            assert values == parse_each(payloads, loads)
            entry["parse_joined_us_per_message"] = joined_us
            # One malformed message in the batch: the joined parse fails and starts again.
            spoiled = [b'{"t": 1'] + payloads[1:]
            spoiled_us, _ = _best_us(lambda: parse_joined(spoiled), repeat, messages)
            entry["parse_joined_one_malformed_us_per_message"] = spoiled_us
        report[name] = entry
    report["machine"] = {**_machine(), "loadavg_before": [round(x, 2) for x in load_before],
                         "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
