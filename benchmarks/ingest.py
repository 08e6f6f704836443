"""End-to-end ingest: simulated TCUs -> Mosquitto -> gateway -> PostgreSQL, beside a naive baseline.

Everything runs on this machine in one run: a private Mosquitto with the project's configuration,
a fresh database on the local PostgreSQL, the load in a child process (the simulated fleet's
samples, one per MQTT message, QoS 1, written by benchmarks/_loadgen.py from pre-encoded frames:
the simulator's own MQTT client is too slow to load the gateway on two cores), and in this
process either fleetgate's gateway or the naive baseline
(benchmarks/naive_ingest.py: aiomqtt, one autocommitted INSERT per message). Each system gets:

- max:   a fixed number of samples published as fast as the broker takes them; throughput is
         samples / (last commit - first publish).
- paced: a steady offered rate for a while; publish-to-commit latency p50/p99 per sample (the
         simulator's clock is the wall clock, so latency = commit time - publish time).

With --processes N, the max workload also runs against 1, 2, ... N gateway processes (`fleetgate
run` children sharing the MQTT subscription, the broker and the database), in the same run, and
reports the throughput of each count with what the processes did (per-process share, batches,
hand-over checks and the vehicles they took over from each other).

Prints one JSON document. Usage:  .venv/bin/python benchmarks/ingest.py [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._services import BenchServices, machine  # noqa: E402
from benchmarks.naive_ingest import run_naive_gateway  # noqa: E402
from fleetgate.embedded import Mosquitto  # noqa: E402

# --- the load, in a child process -------------------------------------------------------------


async def _sim_child(args: argparse.Namespace) -> None:
    from benchmarks._loadgen import publish_load
    from firmware_sim import FleetOptions

    opts = FleetOptions(
        vehicles=args.vehicles,
        rate_hz=args.rate_hz,
        seed=args.seed,
        topic_root=args.topic_root,
        host=args.host,
        port=args.port,
        samples_per_vehicle=args.samples,
        fast=args.fast,
        session_expiry_s=60,
    )

    def publishing() -> None:
        print(orjson.dumps({"event": "publishing", "at": time.time()}).decode(), flush=True)

    done = await publish_load(opts, on_publishing=publishing)
    print(orjson.dumps({"event": "done", **done}).decode(), flush=True)


class SimProcess:
    def __init__(
        self,
        broker: Mosquitto,
        topic_root: str,
        vehicles: int,
        rate_hz: float,
        samples: int,
        fast: bool,
        seed: int,
    ) -> None:
        self.argv = [
            sys.executable,
            __file__,
            "--role",
            "sim",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--topic-root",
            topic_root,
            "--vehicles",
            str(vehicles),
            "--rate-hz",
            str(rate_hz),
            "--samples",
            str(samples),
            "--seed",
            str(seed),
        ] + (["--fast"] if fast else [])
        self.started_at: float | None = None
        self.done: dict | None = None

    async def run(self) -> None:
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
        )
        async for line in proc.stdout:
            event = orjson.loads(line)
            if event["event"] == "publishing":
                self.started_at = event["at"]
            elif event["event"] == "done":
                self.done = event
        err = await proc.stderr.read()
        if await proc.wait() != 0:
            raise RuntimeError(f"simulator failed:\n{err.decode()[-2000:]}")


def registrations(vehicles: int, seed: int) -> list[tuple[str, str, str]]:
    from firmware_sim import Fleet, FleetOptions

    return Fleet(FleetOptions(vehicles=vehicles, seed=seed)).registrations()


# --- measuring a system under a workload ------------------------------------------------------


class Recorder:
    """Counts committed samples and their publish-to-commit delays (offset applied at the end)."""

    def __init__(self) -> None:
        self.count = 0
        self.first_commit: float | None = None
        self.last_commit = 0.0
        self._delays: list[np.ndarray] = []

    def batch(self, sample_ms: np.ndarray, commit_ms: float) -> None:
        self.count += len(sample_ms)
        self.first_commit = self.first_commit or commit_ms / 1000.0
        self.last_commit = commit_ms / 1000.0
        self._delays.append(commit_ms - sample_ms.astype(np.float64))

    def one(self, sample_ms: int, commit_ms: float) -> None:
        self.batch(np.array([sample_ms]), commit_ms)

    def latency_ms(self, wall_offset_ms: float) -> dict:
        if not self._delays:
            return {}
        d = np.concatenate(self._delays) - wall_offset_ms
        return {
            "p50": round(float(np.percentile(d, 50)), 1),
            "p99": round(float(np.percentile(d, 99)), 1),
            "max": round(float(d.max()), 1),
        }


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Fleetgate:
    name = "fleetgate"

    def __init__(self, dsn: str, broker: Mosquitto, topic_root: str) -> None:
        self.dsn, self.broker, self.topic_root = dsn, broker, topic_root

    @contextlib.asynccontextmanager
    async def running(self, recorder: Recorder):
        from prometheus_client import CollectorRegistry

        from gateway.service import Gateway, GatewayConfig

        cfg = GatewayConfig(
            database_url=self.dsn,
            mqtt_host=self.broker.host,
            mqtt_port=self.broker.port,
            mqtt_topic_root=self.topic_root,
            # One id for every run: a shared subscription keeps sending to
            # the persistent session of a gateway that left (its queue grows)
            # until that session expires, so a new id would lose half the load.
            mqtt_client_id="bench-gateway",
        )
        gw = Gateway(
            cfg,
            registry=CollectorRegistry(),
            on_committed=lambda b, ms: recorder.batch(b.time_ms, ms),
        )
        task = asyncio.create_task(gw.run())
        await _until(
            lambda: task.done() or (gw.ingress is not None and gw.ingress.subscribed.is_set()),
            30,
            "gateway subscribed",
        )
        if task.done():
            task.result()
        try:
            yield
        finally:
            gw.stop()
            await task


class GatewayProcesses:
    """N `fleetgate run` child processes on one broker and database, measured through their
    operator's ports (a commit callback cannot cross processes): throughput from the moment
    their stored counters add up to the workload, polled every 50 ms."""

    name = "processes"

    def __init__(self, dsn: str, broker: Mosquitto, topic_root: str, count: int) -> None:
        self.dsn, self.broker, self.topic_root, self.count = dsn, broker, topic_root, count
        self.procs: list[tuple[subprocess.Popen, int]] = []

    @contextlib.asynccontextmanager
    async def running(self, recorder: Recorder):
        from fleetgate.embedded import free_port

        env = {
            **os.environ,
            "FLEETGATE_DATABASE_URL": self.dsn,
            "FLEETGATE_MQTT_URL": self.broker.url,
            "FLEETGATE_MQTT_TOPIC_ROOT": self.topic_root,
            "FLEETGATE_API_PORT": "0",
            "FLEETGATE_COAP_ENABLED": "false",
            "FLEETGATE_LOG_LEVEL": "WARNING",
        }
        for i in range(self.count):
            port = free_port()
            # Fixed ids, counts run upwards: a session left by a larger count would keep taking
            # its share of the shared subscription and stall the next run.
            log = open(Path(tempfile.gettempdir()) / f"fgbench-proc-{i + 1}.log", "ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetgate.cli", "run", "--no-migrate"],
                cwd=REPO,
                env={
                    **env,
                    "FLEETGATE_MQTT_CLIENT_ID": f"bench-proc-{i + 1}",
                    "FLEETGATE_METRICS_PORT": str(port),
                },
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
            log.close()  # the child has its own descriptor
            self.procs.append((proc, port))
        try:
            for _, port in self.procs:
                await _until(lambda p=port: _ready(p), 60, "gateway process ready")
            self.cpu0 = sum(_cpu_s(p.pid) for p, _ in self.procs)
            poller = asyncio.create_task(self._poll(recorder))
            try:
                yield
            finally:
                poller.cancel()
            self.cpu1 = sum(_cpu_s(p.pid) for p, _ in self.procs)
            self.stats = [await asyncio.to_thread(_scrape, port) for _, port in self.procs]
        finally:
            for proc, _ in self.procs:
                proc.terminate()
            for proc, _ in self.procs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self.procs = []

    async def _poll(self, recorder: Recorder) -> None:
        while True:
            stored = sum(
                [
                    m.get("fleetgate_samples_stored_total", 0.0)
                    for m in await asyncio.gather(
                        *(asyncio.to_thread(_scrape, port) for _, port in self.procs)
                    )
                ]
            )
            if stored > recorder.count:
                recorder.count = int(stored)
                recorder.last_commit = time.time()
            await asyncio.sleep(0.05)

    def report(self) -> dict:
        per = []
        for m in self.stats:
            batches = m.get("fleetgate_batch_commit_seconds_count", 0.0)
            checks = m.get("fleetgate_handover_check_seconds_count", 0.0)
            per.append(
                {
                    "samples_stored": int(m.get("fleetgate_samples_stored_total", 0)),
                    "batches": int(batches),
                    "mean_batch_samples": round(
                        m.get("fleetgate_batch_samples_sum", 0.0) / max(batches, 1)
                    ),
                    "mean_commit_ms": round(
                        1000 * m.get("fleetgate_batch_commit_seconds_sum", 0.0) / max(batches, 1), 2
                    ),
                    "mean_handover_check_ms": round(
                        1000 * m.get("fleetgate_handover_check_seconds_sum", 0.0) / max(checks, 1),
                        3,
                    ),
                    "vehicles_taken_over": int(m.get("fleetgate_handover_vehicles_total", 0)),
                    "dispatcher": bool(m.get("fleetgate_commands_dispatcher_active", 0)),
                }
            )
        return {"per_process": per}


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _scrape(port: int) -> dict[str, float]:
    """One process's metrics, each sample name summed over its labels."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                continue
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Naive:
    name = "naive"

    def __init__(self, dsn: str, broker: Mosquitto, topic_root: str, vehicle_of: dict) -> None:
        self.dsn, self.broker, self.topic_root, self.vehicle_of = (
            dsn,
            broker,
            topic_root,
            vehicle_of,
        )

    @contextlib.asynccontextmanager
    async def running(self, recorder: Recorder):
        stop = asyncio.Event()
        subscribed = asyncio.Event()
        task = asyncio.create_task(
            run_naive_gateway(
                self.dsn,
                self.broker.host,
                self.broker.port,
                self.topic_root,
                self.vehicle_of,
                stop,
                on_commit=recorder.one,
                on_subscribed=subscribed.set,
            )
        )
        await asyncio.wait(
            {task, asyncio.ensure_future(subscribed.wait())},
            return_when=asyncio.FIRST_COMPLETED,
            timeout=30,
        )
        if task.done():
            task.result()
        try:
            yield
        finally:
            stop.set()
            await task


async def measure(
    system,
    broker: Mosquitto,
    topic_root: str,
    *,
    vehicles: int,
    rate_hz: float,
    samples: int,
    fast: bool,
    seed: int,
    timeout: float,
) -> dict:
    recorder = Recorder()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    async with system.running(recorder):
        sim = SimProcess(broker, topic_root, vehicles, rate_hz, samples, fast, seed)
        await sim.run()
        expected = sim.done["samples_acked"]
        await _until(
            lambda: recorder.count >= expected,
            timeout,
            f"{system.name} to commit {expected} samples",
        )
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if isinstance(system, GatewayProcesses):  # the consumers are the children, not this process
        cpu_s = system.cpu1 - system.cpu0
    elapsed = recorder.last_commit - sim.started_at
    async with await psycopg.AsyncConnection.connect(system.dsn) as conn:
        rows = (await (await conn.execute("SELECT count(*) FROM positions")).fetchone())[0]
    out = {
        "samples": recorder.count,
        "rows_stored": rows,
        "every_acked_sample_stored_once": rows == expected == recorder.count,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(recorder.count / elapsed),
        "consumer_cpu_us_per_sample": round(cpu_s / max(recorder.count, 1) * 1e6, 1),
    }
    if not fast:
        out["offered_per_s"] = round(vehicles * rate_hz)
        out["latency_ms"] = recorder.latency_ms(sim.done["wall_offset_ms"])
    if isinstance(system, GatewayProcesses):
        out.update(system.report())
    return out


async def truncate(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE positions, vehicle_state, events")


async def bench(args: argparse.Namespace) -> dict:
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    services = BenchServices("fgbench")
    dsn, broker, pg_version = services.dsn, services.broker, services.pg_version
    try:
        report = await migrate(dsn, storage=args.storage)
        store = await TelemetryStore.open(dsn)
        regs = registrations(args.vehicles, args.seed)
        vehicle_of = await store.register_vehicles(
            [VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t) for d, r, t in regs]
        )
        await store.close()

        results: dict = {}
        fg = Fleetgate(dsn, broker, "bench-fg/v1")
        naive = Naive(dsn, broker, "bench-naive/v1", vehicle_of)
        max_run = dict(samples=args.max_samples // args.vehicles, fast=True, rate_hz=args.rate_hz)
        runs = (
            []
            if args.scale_out_only
            else [
                ("fleetgate", "max", fg, max_run),
                (
                    "fleetgate",
                    "paced",
                    fg,
                    dict(
                        samples=int(args.duration * args.rate_hz), fast=False, rate_hz=args.rate_hz
                    ),
                ),
            ]
        )
        for count in range(1, args.processes + 1):  # upwards: see GatewayProcesses
            runs.append(
                (
                    "processes",
                    str(count),
                    GatewayProcesses(dsn, broker, "bench-procs/v1", count),
                    max_run,
                )
            )
        if not args.skip_naive and not args.scale_out_only:
            runs += [
                (
                    "naive",
                    "max",
                    naive,
                    dict(
                        samples=max(1, args.naive_samples // args.vehicles),
                        fast=True,
                        rate_hz=args.rate_hz,
                    ),
                ),
                (
                    "naive",
                    "paced",
                    naive,
                    dict(
                        samples=max(1, int(args.duration * args.naive_rate / args.vehicles)),
                        fast=False,
                        rate_hz=args.naive_rate / args.vehicles,
                    ),
                ),
            ]
        for name, mode, system, kw in runs:
            await truncate(dsn)
            results.setdefault(name, {})[mode] = await measure(
                system,
                broker,
                system.topic_root,
                vehicles=args.vehicles,
                seed=args.seed,
                timeout=args.timeout,
                **kw,
            )
            print(f"# {name} {mode}: {results[name][mode]}", file=sys.stderr, flush=True)

        out = {
            "benchmark": "ingest",
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(pg_version),
            "storage": report.storage,
            "vehicles": args.vehicles,
            "one_sample_per_message": True,
            "qos": 1,
            **results,
        }
        if "naive" in results:
            out["ratio_max_throughput"] = round(
                results["fleetgate"]["max"]["samples_per_s"]
                / results["naive"]["max"]["samples_per_s"],
                1,
            )
        if "processes" in results:
            one = results["processes"]["1"]["samples_per_s"]
            out["scale_out"] = {
                n: round(r["samples_per_s"] / one, 2) for n, r in results["processes"].items()
            }
        if "fleetgate" in results:
            paced = results["fleetgate"]["paced"]
            out["targets"] = {
                "sustained_30k_per_s": paced["samples_per_s"] >= 30_000 * 0.98
                and paced["offered_per_s"] >= 30_000,
                "p99_under_500ms": paced["latency_ms"].get("p99", 1e9) < 500,
                "10x_naive": out.get("ratio_max_throughput", 0) >= 10,
            }
        return out
    finally:
        services.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["bench", "sim"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--vehicles", type=int, default=300)
    p.add_argument(
        "--rate-hz",
        type=float,
        default=100.0,
        help="paced run: samples per vehicle per second (offered = vehicles x rate)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="paced run length, s")
    p.add_argument("--max-samples", type=int, default=600_000, help="samples in the max run")
    p.add_argument("--naive-samples", type=int, default=30_000)
    p.add_argument(
        "--naive-rate",
        type=float,
        default=1_000.0,
        help="offered samples/s for the naive paced run (it cannot keep up with more)",
    )
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        metavar="N",
        help="also run the max workload against 1..N `fleetgate run` processes "
        "sharing the subscription",
    )
    p.add_argument(
        "--scale-out-only",
        action="store_true",
        help="only the --processes runs (no in-process gateway, no naive baseline)",
    )
    p.add_argument("--storage", default="auto", choices=["auto", "native", "timescaledb"])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=300.0)
    # child-process (simulator) arguments
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--topic-root")
    p.add_argument("--samples", type=int)
    p.add_argument("--fast", action="store_true")
    args = p.parse_args()
    if args.role == "sim":
        asyncio.run(_sim_child(args))
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(orjson.dumps(asyncio.run(bench(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
