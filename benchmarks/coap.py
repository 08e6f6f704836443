"""CoAP ingest: simulated sleeping NB-IoT locks -> the gateway's CoAP ingress -> PostgreSQL, side
by side with the MQTT ingest path (benchmarks/ingest.py's runs, imported) in the same run.

On this machine: a fresh database on the local PostgreSQL, a private Mosquitto with the project's
configuration, the gateway (pipeline and CoAP ingress, or benchmarks/ingest.py's MQTT gateway) in
this process, and the simulated devices in a child process (firmware_sim/coap.py: one UDP socket
per device, one confirmable POST at a time, one sample per uplink, SenML-CBOR by default).

- coap max:   every device wakes once per round, all at once, for --rounds rounds; uplinks/s =
              samples / (last 2.04 - first request). A device waits for its 2.04 (or gives up
              after the CoAP retransmissions) before it sleeps, so this is a closed loop.
- coap paced: the devices' wakes are spread over each round at --rate uplinks/s; latency is the
              device's request -> 2.04, p50/p99 (retransmissions included).
- mqtt max / paced: benchmarks/ingest.py's fleetgate runs with the same number of samples (one
              sample per QoS 1 message) and, paced, the same offered rate.

Prints one JSON document. Usage:  .venv/bin/python -m benchmarks.coap [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks._runner import (
    bench_parser,
    cpu_seconds,
    emit,
    loadavg,
    percentiles,
    progress,
    run_benchmark,
    start_child,
)
from benchmarks._services import BenchServices
from benchmarks.ingest import (
    Fleetgate,
    Recorder,
    Workload,
    measure,
    registrations,
    stored_rows,
    truncate,
)

# --- the simulated locks, in a child process ------------------------------------------------------


async def _sim_child(args: argparse.Namespace) -> None:
    from firmware_sim.coap import CoapFleet, CoapFleetOptions

    tokens = orjson.loads(Path(args.tokens).read_bytes())
    fleet = CoapFleet(
        CoapFleetOptions(
            vehicles=args.vehicles,
            port=args.port,
            seed=args.seed,
            encoding=args.encoding,
            rounds=args.rounds,
            wake_interval_s=args.vehicles / args.rate,
            track_keys=False,
        ),
        tokens,
    )
    spread = args.vehicles / args.rate if args.paced else 0.0
    started = time.time()
    for _ in range(args.rounds):
        fleet.step()
        await fleet.wake_all(spread_s=spread)
    elapsed = time.time() - started
    fleet.close()
    st = fleet.stats
    emit(
        {
            "started_at": started,
            "elapsed_s": elapsed,
            "uplinks": st.uplinks,
            "samples_acked": st.samples_acked,
            "responses": st.responses,
            "retransmissions": st.retransmissions,
            "separate_responses": st.separate_responses,
            "latency_ms": percentiles(np.asarray(st.latencies_s) * 1000.0),
        }
    )


async def run_sim(port: int, tokens_path: Path, args: argparse.Namespace, paced: bool) -> dict:
    """The locks in a child process, with the run's options, until each has sent its rounds."""
    proc = await start_child(
        __spec__.name,
        "coap-sim",
        port=port,
        tokens=tokens_path,
        vehicles=args.vehicles,
        rounds=args.rounds,
        rate=args.rate,
        encoding=args.encoding,
        seed=args.seed,
        paced=paced,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"CoAP simulator failed:\n{err.decode()[-2000:]}")
    return orjson.loads(out.strip().splitlines()[-1])


# --- the gateway's CoAP side, in this process -----------------------------------------------------


@contextlib.asynccontextmanager
async def coap_gateway(dsn: str, recorder: Recorder):
    """The ingest pipeline with the CoAP ingress as its "coap" transport, wired as Gateway.run
    wires its MQTT ingress (gateway.service gets the same once the CoAP settings exist)."""
    from prometheus_client import CollectorRegistry

    from gateway.coap import CoapIngress
    from gateway.metrics import GatewayMetrics
    from gateway.pipeline import DeviceRegistry, IngestPipeline, PipelineLimits
    from telemetry.plausibility import PlausibilityFilter
    from telemetry.store import DeviceCredentials, TelemetryStore

    metrics = GatewayMetrics(CollectorRegistry())
    store = await TelemetryStore.open(dsn)
    plausibility = PlausibilityFilter(default_max_speed_kmh=300.0)
    devices = DeviceRegistry(store, plausibility, {"ebike": 80.0, "car": 300.0})
    await devices.refresh()
    box: list[CoapIngress] = []
    pipeline = IngestPipeline(
        store,
        devices,
        plausibility,
        {"coap": lambda tokens: box[0].acknowledge(tokens)},
        limits=PipelineLimits(),
        metrics=metrics,
        on_committed=lambda b, ms: recorder.batch(b.time_ms, ms),
    )
    coap = CoapIngress(
        pipeline, DeviceCredentials(store).verify, metrics=metrics, host="127.0.0.1", port=0
    )
    box.append(coap)
    writer = asyncio.create_task(pipeline.run())
    await coap.start()
    try:
        yield coap
    finally:
        coap.pause()
        pipeline.close()
        await writer
        await coap.stop()
        await store.close()


async def measure_coap(dsn: str, tokens_path: Path, args: argparse.Namespace, paced: bool) -> dict:
    recorder = Recorder()
    cpu0 = cpu_seconds()
    async with coap_gateway(dsn, recorder) as coap:
        sim = await run_sim(coap.port, tokens_path, args, paced)
    cpu_s = cpu_seconds() - cpu0
    rows = await stored_rows(dsn)
    elapsed = sim["elapsed_s"]
    out = {
        "samples": sim["samples_acked"],
        "rows_stored": rows,
        "every_2_04_sample_stored_once": rows == sim["samples_acked"] == recorder.count,
        "uplinks": sim["uplinks"],
        "responses": sim["responses"],
        "retransmissions": sim["retransmissions"],
        "separate_responses": sim["separate_responses"],
        "seconds": round(elapsed, 2),
        "samples_per_s": round(sim["samples_acked"] / elapsed),
        "latency_ms": sim["latency_ms"],
        "gateway_cpu_us_per_sample": round(cpu_s / max(recorder.count, 1) * 1e6, 1),
    }
    if paced:
        out["offered_per_s"] = round(args.rate)
    return out


# --- the run -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict:
    load_start = loadavg()
    with BenchServices("fgbench_coap") as services:
        tokens_path = services.tmp / "tokens.json"
        report = await prepare(services.dsn, tokens_path, args)
        results: dict = {"coap": {}, "mqtt": {}}
        fg = Fleetgate(services.dsn, services.broker, "bench-fg/v1")
        for mode in ("max", "paced"):
            await truncate(services.dsn)
            results["coap"][mode] = await measure_coap(
                services.dsn, tokens_path, args, paced=mode == "paced"
            )
            progress(f"coap {mode}: {results['coap'][mode]}")
            await truncate(services.dsn)
            # The same samples over MQTT: one a message, as many per device, the same rate.
            workload = Workload(
                vehicles=args.vehicles,
                samples=args.rounds,
                rate_hz=args.rate / args.vehicles,
                fast=mode == "max",
                seed=args.seed,
            )
            results["mqtt"][mode] = await measure(fg, services.broker, workload, args.timeout)
            progress(f"mqtt {mode}: {results['mqtt'][mode]}")
        return {
            "benchmark": "coap",
            "date": time.strftime("%Y-%m-%d"),
            "machine": {
                **services.machine(),
                "loadavg_at_start": load_start,
                "loadavg_at_end": loadavg(),
            },
            "storage": report.storage,
            "devices": args.vehicles,
            "samples_per_run": args.vehicles * args.rounds,
            "coap_encoding": args.encoding,
            "coap_message": "CON POST, one sample",
            "mqtt_message": "QoS 1 PUBLISH, one sample",
            **results,
        }


async def prepare(dsn: str, tokens_path: Path, args: argparse.Namespace):
    """The schema, both fleets registered, and the locks' secrets in tokens_path (for the
    simulator child); the migration's report."""
    from firmware_sim.coap import CoapFleet, CoapFleetOptions
    from telemetry.store import DeviceCredentials, TelemetryStore, VehicleRegistration, migrate

    report = await migrate(dsn, storage=args.storage)
    store = await TelemetryStore.open(dsn)
    locks = CoapFleet(CoapFleetOptions(vehicles=args.vehicles, seed=args.seed))
    regs = locks.registrations() + registrations(args.vehicles, args.seed)
    await store.register_vehicles(
        [VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t) for d, r, t in regs]
    )
    issued = await DeviceCredentials(store).provision_many(locks.device_ids)
    await store.close()
    tokens_path.write_bytes(orjson.dumps({i.device_id: i.secret for i in issued}))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=500, help="simulated devices per transport")
    p.add_argument("--rounds", type=int, default=20, help="uplinks per device in each run")
    p.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="paced runs: offered uplinks (samples) per second, fleet-wide",
    )
    p.add_argument(
        "--encoding",
        default="senml+cbor",
        choices=["senml+cbor", "senml+json", "cbor", "json"],
        help="the locks' payloads",
    )
    p.add_argument("--storage", default="auto", choices=["auto", "native", "timescaledb"])
    p.add_argument("--seed", type=int, default=1, help="the simulated fleets' seed")
    p.add_argument("--timeout", type=float, default=300.0, help="s to wait for every MQTT commit")
    # the simulator child's (run_sim)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    p.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(
        bench, build_parser(), argv, children={"coap-sim": _sim_child}, log_level=logging.ERROR
    )


if __name__ == "__main__":
    main()
