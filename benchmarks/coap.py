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

Prints one JSON document. Usage:  .venv/bin/python benchmarks/coap.py [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._services import BenchServices, machine  # noqa: E402
from benchmarks.ingest import Fleetgate, Recorder, measure, registrations, truncate  # noqa: E402

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
    lat = np.asarray(st.latencies_s) * 1000.0
    print(
        orjson.dumps(
            {
                "started_at": started,
                "elapsed_s": elapsed,
                "uplinks": st.uplinks,
                "samples_acked": st.samples_acked,
                "responses": st.responses,
                "retransmissions": st.retransmissions,
                "separate_responses": st.separate_responses,
                "latency_ms": {
                    "p50": round(float(np.percentile(lat, 50)), 1),
                    "p99": round(float(np.percentile(lat, 99)), 1),
                    "max": round(float(lat.max()), 1),
                }
                if len(lat)
                else {},
            }
        ).decode(),
        flush=True,
    )


async def run_sim(
    port: int,
    tokens_path: Path,
    *,
    vehicles: int,
    rounds: int,
    rate: float,
    paced: bool,
    encoding: str,
    seed: int,
) -> dict:
    argv = [
        sys.executable,
        __file__,
        "--role",
        "coap-sim",
        "--port",
        str(port),
        "--tokens",
        str(tokens_path),
        "--vehicles",
        str(vehicles),
        "--rounds",
        str(rounds),
        "--rate",
        str(rate),
        "--encoding",
        encoding,
        "--seed",
        str(seed),
    ]
    if paced:
        argv.append("--paced")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
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


async def measure_coap(
    dsn: str,
    tokens_path: Path,
    *,
    vehicles: int,
    rounds: int,
    rate: float,
    paced: bool,
    encoding: str,
    seed: int,
) -> dict:
    recorder = Recorder()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with coap_gateway(dsn, recorder) as coap:
        sim = await run_sim(
            coap.port,
            tokens_path,
            vehicles=vehicles,
            rounds=rounds,
            rate=rate,
            paced=paced,
            encoding=encoding,
            seed=seed,
        )
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = (await (await conn.execute("SELECT count(*) FROM positions")).fetchone())[0]
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
        out["offered_per_s"] = round(rate)
    return out


# --- the run -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict:
    from firmware_sim.coap import CoapFleet, CoapFleetOptions
    from telemetry.store import DeviceCredentials, TelemetryStore, VehicleRegistration, migrate

    services = BenchServices("fgbench_coap")
    dsn, broker, pg_version = services.dsn, services.broker, services.pg_version
    load_start = os.getloadavg()
    try:
        report = await migrate(dsn, storage=args.storage)
        store = await TelemetryStore.open(dsn)
        locks = CoapFleet(CoapFleetOptions(vehicles=args.vehicles, seed=args.seed))
        regs = locks.registrations() + registrations(args.vehicles, args.seed)
        await store.register_vehicles(
            [VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t) for d, r, t in regs]
        )
        issued = await DeviceCredentials(store).provision_many(locks.device_ids)
        await store.close()
        tokens_path = services.tmp / "tokens.json"
        tokens_path.write_bytes(orjson.dumps({i.device_id: i.secret for i in issued}))

        samples = args.vehicles * args.rounds
        results: dict = {"coap": {}, "mqtt": {}}
        fg = Fleetgate(dsn, broker, "bench-fg/v1")
        for mode in ("max", "paced"):
            await truncate(dsn)
            results["coap"][mode] = await measure_coap(
                dsn,
                tokens_path,
                vehicles=args.vehicles,
                rounds=args.rounds,
                rate=args.rate,
                paced=mode == "paced",
                encoding=args.encoding,
                seed=args.seed,
            )
            print(f"# coap {mode}: {results['coap'][mode]}", file=sys.stderr, flush=True)
            await truncate(dsn)
            results["mqtt"][mode] = await measure(
                fg,
                broker,
                fg.topic_root,
                vehicles=args.vehicles,
                samples=args.rounds,
                fast=mode == "max",
                rate_hz=args.rate / args.vehicles,
                seed=args.seed,
                timeout=args.timeout,
            )
            print(f"# mqtt {mode}: {results['mqtt'][mode]}", file=sys.stderr, flush=True)
        return {
            "benchmark": "coap",
            "date": time.strftime("%Y-%m-%d"),
            "machine": {
                **machine(pg_version),
                "loadavg_at_start": load_start,
                "loadavg_at_end": os.getloadavg(),
            },
            "storage": report.storage,
            "devices": args.vehicles,
            "samples_per_run": samples,
            "coap_encoding": args.encoding,
            "coap_message": "CON POST, one sample",
            "mqtt_message": "QoS 1 PUBLISH, one sample",
            **results,
        }
    finally:
        services.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["bench", "coap-sim"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--vehicles", type=int, default=500, help="simulated devices per transport")
    p.add_argument("--rounds", type=int, default=20, help="uplinks per device in each run")
    p.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="paced runs: offered uplinks (samples) per second, fleet-wide",
    )
    p.add_argument(
        "--encoding", default="senml+cbor", choices=["senml+cbor", "senml+json", "cbor", "json"]
    )
    p.add_argument("--storage", default="auto", choices=["auto", "native", "timescaledb"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0)
    # child-process (simulator) arguments
    p.add_argument("--port", type=int)
    p.add_argument("--tokens")
    p.add_argument("--paced", action="store_true")
    args = p.parse_args()
    if args.role == "coap-sim":
        asyncio.run(_sim_child(args))
        return
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(orjson.dumps(asyncio.run(bench(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
