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

The ceiling: the same load generator and broker with nothing but `mosquitto_sub` consuming
(Mosquitto's own C client: MQTT 5, QoS 1, a persistent session, output to /dev/null, no
database), what the broker and load generator deliver on this machine when the consumer costs
next to nothing. Its max runs take turns with fleetgate's (--rounds), so that a change in the
machine's load falls on both; the ratio of each pair is reported, with the gateway's CPU per
sample in the same run.

With --processes N, the max workload also runs against 1, 2, ... N gateway processes (`fleetgate
run` children sharing the MQTT subscription, the broker and the database), in the same run, and
reports the throughput of each count with what the processes did (per-process share, batches,
hand-over checks and the vehicles they took over from each other).

Prints one JSON document. Usage:  .venv/bin/python -m benchmarks.ingest [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import psycopg

from benchmarks._runner import (
    bench_parser,
    cpu_seconds,
    loadavg,
    percentiles,
    progress,
    run_benchmark,
    start_child,
    until,
)
from benchmarks._services import BenchServices, answers_ok, gateway_process, running_gateway
from benchmarks._stage_profile import StageProfile
from benchmarks.naive_ingest import run_naive_gateway
from fleetgate.embedded import Mosquitto

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


@dataclass(frozen=True)
class Workload:
    """What the simulator publishes: `samples` per vehicle, as fast as the broker takes them
    (fast) or at rate_hz per vehicle on the wall clock."""

    vehicles: int
    samples: int
    rate_hz: float
    fast: bool
    seed: int


class SimProcess:
    """The simulator child process (_sim_child) publishing a workload to a topic root."""

    def __init__(self, broker: Mosquitto, topic_root: str, workload: Workload) -> None:
        self.options = dict(
            host=broker.host, port=broker.port, topic_root=topic_root, **asdict(workload)
        )
        self.started_at: float | None = None
        self.done: dict | None = None

    async def run(self) -> None:
        proc = await start_child(__spec__.name, "sim", **self.options)
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
    """Counts committed samples and their publish-to-commit delays (offset applied at the end);
    where the gateway runs in this process, also each sample's receipt-to-commit delay and each
    batch's size, to tell where a slow commit comes from."""

    def __init__(self) -> None:
        self.count = 0
        self.first_commit: float | None = None
        self.last_commit = 0.0
        self._delays: list[np.ndarray] = []
        self._since_receipt: list[np.ndarray] = []
        self._batches: list[tuple[int, float]] = []  # (samples, commit - newest receipt, ms)

    def batch(
        self, sample_ms: np.ndarray, commit_ms: float, received_ms: np.ndarray | None = None
    ) -> None:
        self.count += len(sample_ms)
        self.first_commit = self.first_commit or commit_ms / 1000.0
        self.last_commit = commit_ms / 1000.0
        self._delays.append(commit_ms - sample_ms.astype(np.float64))
        if received_ms is not None and len(received_ms):
            since = commit_ms - received_ms.astype(np.float64)
            self._since_receipt.append(since)
            self._batches.append((len(received_ms), float(since.min())))

    def one(self, sample_ms: int, commit_ms: float) -> None:
        self.batch(np.array([sample_ms]), commit_ms)

    def latency_ms(self, wall_offset_ms: float) -> dict:
        if not self._delays:
            return {}
        return percentiles(np.concatenate(self._delays) - wall_offset_ms)

    def latency_parts_ms(self, wall_offset_ms: float) -> dict:
        """Publish -> commit split at the gateway's receipt: publish -> receipt (load generator,
        broker, the gateway's socket reads) and receipt -> commit (the wait for a batch to be cut,
        its processing and its transaction); and per batch its samples and the time from its
        newest receipt to its commit (processing and transaction, at most)."""
        if not self._since_receipt:
            return {}
        since = np.concatenate(self._since_receipt)
        total = np.concatenate(self._delays) - wall_offset_ms
        sizes = np.array([n for n, _ in self._batches])
        newest = np.array([ms for _, ms in self._batches])
        return {
            "publish_to_receipt": percentiles(total - since),
            "receipt_to_commit": percentiles(since),
            "batches": len(self._batches),
            "batch_samples": percentiles(sizes, digits=0),
            "newest_receipt_to_commit": percentiles(newest),
        }


class LoopLag:
    """How late the event loop wakes a task that sleeps 5 ms: a synchronous step that holds the
    loop (a big batch through the cores, a garbage collection) shows as lag."""

    def __init__(self) -> None:
        self.lag_ms: list[float] = []

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lag_ms.append((time.perf_counter() - t0 - 0.005) * 1000.0)

    def report(self) -> dict:
        return percentiles(self.lag_ms)


class Fleetgate:
    name = "fleetgate"

    def __init__(self, dsn: str, broker: Mosquitto, topic_root: str, **config: object) -> None:
        """config: GatewayConfig fields beside the defaults."""
        self.dsn, self.broker, self.topic_root = dsn, broker, topic_root
        self.config = config

    @contextlib.asynccontextmanager
    async def running(self, recorder: Recorder):
        # One id for every run: a shared subscription keeps sending to the persistent session
        # of a gateway that left (its queue grows) until that session expires, so a new id
        # would lose half the load.
        async with running_gateway(
            self.dsn,
            self.broker,
            self.topic_root,
            "bench-gateway",
            on_committed=lambda b, ms: recorder.batch(b.time_ms, ms, b.received_ms),
            **self.config,
        ):
            yield


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
        self.procs = [self._start(i) for i in range(self.count)]
        try:
            for _, port in self.procs:
                await until(
                    lambda p=port: answers_ok(f"http://127.0.0.1:{p}/readyz"),
                    60,
                    "gateway process ready",
                )
            self.cpu0 = sum(cpu_seconds(p.pid) for p, _ in self.procs)
            poller = asyncio.create_task(self._poll(recorder))
            try:
                yield
            finally:
                poller.cancel()
            self.cpu1 = sum(cpu_seconds(p.pid) for p, _ in self.procs)
            self.stats = [await asyncio.to_thread(_scrape, port) for _, port in self.procs]
        finally:
            self._stop_all()

    def _start(self, i: int) -> tuple[subprocess.Popen, int]:
        from fleetgate.embedded import free_port

        port = free_port()
        # Fixed ids, counts run upwards: a session left by a larger count would keep taking
        # its share of the shared subscription and stall the next run.
        env = {
            "FLEETGATE_DATABASE_URL": self.dsn,
            "FLEETGATE_MQTT_URL": self.broker.url,
            "FLEETGATE_MQTT_TOPIC_ROOT": self.topic_root,
            "FLEETGATE_API_PORT": "0",
            "FLEETGATE_COAP_ENABLED": "false",
            "FLEETGATE_LOG_LEVEL": "WARNING",
            "FLEETGATE_MQTT_CLIENT_ID": f"bench-proc-{i + 1}",
            "FLEETGATE_METRICS_PORT": str(port),
        }
        log = Path(tempfile.gettempdir()) / f"fgbench-proc-{i + 1}.log"
        return gateway_process(env, log), port

    def _stop_all(self) -> None:
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
        return {"per_process": [_process_report(m) for m in self.stats]}


def _process_report(m: dict[str, float]) -> dict:
    """What one `fleetgate run` process did, from its metrics."""
    batches = max(m.get("fleetgate_batch_commit_seconds_count", 0.0), 1)
    checks = max(m.get("fleetgate_handover_check_seconds_count", 0.0), 1)
    return {
        "samples_stored": int(m.get("fleetgate_samples_stored_total", 0)),
        "batches": int(m.get("fleetgate_batch_commit_seconds_count", 0.0)),
        "mean_batch_samples": round(m.get("fleetgate_batch_samples_sum", 0.0) / batches),
        "mean_commit_ms": round(
            1000 * m.get("fleetgate_batch_commit_seconds_sum", 0.0) / batches, 2
        ),
        "mean_handover_check_ms": round(
            1000 * m.get("fleetgate_handover_check_seconds_sum", 0.0) / checks, 3
        ),
        "vehicles_taken_over": int(m.get("fleetgate_handover_vehicles_total", 0)),
        "dispatcher": bool(m.get("fleetgate_commands_dispatcher_active", 0)),
    }


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


class Ceiling:
    """`mosquitto_sub` consuming the workload: MQTT 5, QoS 1, a persistent session, its output
    discarded. The session and its subscription are made first (`-E`: exit once subscribed), so
    that everything the load generator publishes afterwards is the session's, whenever the
    consuming `mosquitto_sub` has connected; that one resumes the session and exits after
    `count` messages (`-C`). Throughput is taken at its exit, its CPU from its own rusage."""

    name = "ceiling"

    def __init__(self, broker: Mosquitto, topic_root: str, count: int) -> None:
        self.broker, self.topic_root, self.count = broker, topic_root, count
        self.dsn = None  # nothing is stored
        self.cpu_s = 0.0

    def _argv(self, *extra: str) -> list[str]:
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            raise RuntimeError("mosquitto_sub not found: install mosquitto-clients")
        return [
            binary,
            *("-h", self.broker.host, "-p", str(self.broker.port)),
            *("-V", "mqttv5", "-c", "-x", "600", "-i", "bench-ceiling", "-q", "1"),
            *("-t", f"{self.topic_root}/+/telemetry"),
            *extra,
        ]

    @contextlib.asynccontextmanager
    async def running(self, recorder: Recorder):
        made = await asyncio.to_thread(
            subprocess.run, self._argv("-E"), capture_output=True, timeout=30
        )
        if made.returncode != 0:
            raise RuntimeError(f"mosquitto_sub -E failed: {made.stderr.decode()[-500:]}")
        proc = subprocess.Popen(
            self._argv("-C", str(self.count)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def wait() -> None:  # in a thread: the exit time and the child's own rusage
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            recorder.last_commit = time.time()
            self.cpu_s = usage.ru_utime + usage.ru_stime
            if proc.returncode == 0:
                recorder.count = self.count

        waiter = asyncio.create_task(asyncio.to_thread(wait))
        try:
            yield
            await waiter
            if proc.returncode != 0:
                raise RuntimeError(
                    f"mosquitto_sub exited with {proc.returncode}: "
                    f"{proc.stderr.read().decode()[-500:]}"
                )
        finally:
            if proc.returncode is None:
                proc.kill()
                await waiter
            proc.stderr.close()


class Naive:
    name = "naive"

    def __init__(self, dsn: str, broker: Mosquitto, topic_root: str, vehicle_of: dict) -> None:
        self.dsn, self.broker, self.topic_root = dsn, broker, topic_root
        self.vehicle_of = vehicle_of

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
    system, broker: Mosquitto, workload: Workload, timeout: float, profile: bool = False
) -> dict:
    """One system (Fleetgate, Ceiling, GatewayProcesses or Naive) under one workload, on its
    topic root. profile: the in-process gateway's CPU by stage (benchmarks/_stage_profile.py)."""
    recorder = Recorder()
    stages = StageProfile() if profile and isinstance(system, Fleetgate) else None
    cpu0 = cpu_seconds()
    async with contextlib.AsyncExitStack() as stack:
        if stages is not None:
            stack.enter_context(stages)
        await stack.enter_async_context(system.running(recorder))
        lag = LoopLag() if isinstance(system, Fleetgate) and not workload.fast else None
        if lag is not None:  # paced runs only: the max runs' CPU per sample stays comparable
            stack.callback(asyncio.create_task(lag.run()).cancel)
        sim = SimProcess(broker, system.topic_root, workload)
        await sim.run()
        expected = sim.done["samples_acked"]
        await until(
            lambda: recorder.count >= expected,
            timeout,
            f"{system.name} to commit {expected} samples",
        )
    cpu_s = cpu_seconds() - cpu0
    if isinstance(system, GatewayProcesses):  # the consumers are the children, not this process
        cpu_s = system.cpu1 - system.cpu0
    elapsed = recorder.last_commit - sim.started_at
    if isinstance(system, Ceiling):  # a C client, nothing stored
        cpu_s = system.cpu_s
        stored = {"every_acked_sample_received": recorder.count == expected}
    else:
        rows = await stored_rows(system.dsn)
        stored = {
            "rows_stored": rows,
            "every_acked_sample_stored_once": rows == expected == recorder.count,
        }
    out = {
        "samples": recorder.count,
        **stored,
        "seconds": round(elapsed, 2),
        "samples_per_s": round(recorder.count / elapsed),
        "consumer_cpu_us_per_sample": round(cpu_s / max(recorder.count, 1) * 1e6, 2),
        "loadavg": loadavg(),
    }
    if not workload.fast:
        out["offered_per_s"] = round(workload.vehicles * workload.rate_hz)
        out["latency_ms"] = recorder.latency_ms(sim.done["wall_offset_ms"])
        if isinstance(system, Fleetgate):
            out["latency_parts_ms"] = recorder.latency_parts_ms(sim.done["wall_offset_ms"])
            out["event_loop_lag_ms"] = lag.report()
    if isinstance(system, GatewayProcesses):
        out.update(system.report())
    if stages is not None:
        out["cpu_by_stage_us_per_sample"] = stages.report(recorder.count, cpu_s)
    return out


async def warm_up(systems: list) -> None:
    """Start and stop the in-process gateway once before the measured runs: its first start
    imports and sets up the modules it uses (~0.4 s of CPU), which the first run's CPU per
    sample would otherwise carry (1.4 µs a sample over 300,000). Each run still pays its own
    start and stop (~0.03 s)."""
    gateway = next((s for s in systems if isinstance(s, Fleetgate)), None)
    if gateway is not None:
        async with gateway.running(Recorder()):
            pass


async def stored_rows(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return (await (await conn.execute("SELECT count(*) FROM positions")).fetchone())[0]


async def truncate(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE positions, vehicle_state, events")


# --- the run -------------------------------------------------------------------------------------


def planned_runs(args: argparse.Namespace, dsn: str, broker: Mosquitto, vehicle_of: dict) -> list:
    """(system name, mode, system, workload) of every run, in order."""

    def workload(samples: int, fast: bool, rate_hz: float = args.rate_hz) -> Workload:
        return Workload(args.vehicles, samples, rate_hz, fast, args.seed)

    max_run = workload(args.max_samples // args.vehicles, fast=True)
    runs = []
    if not args.scale_out_only:
        fg = Fleetgate(dsn, broker, "bench-fg/v1", mqtt_read_gather_s=args.read_gather_ms / 1000.0)
        ceiling = Ceiling(broker, "bench-ceiling/v1", max_run.vehicles * max_run.samples)
        for k in range(1, max(args.rounds, 1) + 1):  # in turn: ceiling, fleetgate, ceiling, ...
            mode = "max" if k == 1 else f"max_{k}"
            if not args.skip_ceiling:
                runs.append(("ceiling", mode, ceiling, max_run))
            runs.append(("fleetgate", mode, fg, max_run))
        runs.append(
            ("fleetgate", "paced", fg, workload(int(args.duration * args.rate_hz), fast=False))
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
        naive = Naive(dsn, broker, "bench-naive/v1", vehicle_of)
        paced_samples = max(1, int(args.duration * args.naive_rate / args.vehicles))
        runs += [
            ("naive", "max", naive, workload(max(1, args.naive_samples // args.vehicles), True)),
            (
                "naive",
                "paced",
                naive,
                workload(paced_samples, False, args.naive_rate / args.vehicles),
            ),
        ]
    return runs


def summary(results: dict) -> dict:
    """The ratios and targets the README's figures are read from."""
    out: dict = {}
    if "naive" in results:
        out["ratio_max_throughput"] = round(
            results["fleetgate"]["max"]["samples_per_s"] / results["naive"]["max"]["samples_per_s"],
            1,
        )
    if "processes" in results:
        one = results["processes"]["1"]["samples_per_s"]
        out["scale_out"] = {
            n: round(r["samples_per_s"] / one, 2) for n, r in results["processes"].items()
        }
    if "ceiling" in results:
        out["vs_ceiling"] = vs_ceiling(results)
    if "fleetgate" in results:
        paced = results["fleetgate"]["paced"]
        out["targets"] = {
            "sustained_30k_per_s": paced["samples_per_s"] >= 30_000 * 0.98
            and paced["offered_per_s"] >= 30_000,
            "p99_under_500ms": paced["latency_ms"].get("p99", 1e9) < 500,
            "p99_under_250ms": paced["latency_ms"].get("p99", 1e9) < 250,
            "10x_naive": out.get("ratio_max_throughput", 0) >= 10,
        }
        if "vs_ceiling" in out:
            ceiling = out["vs_ceiling"]
            out["targets"]["max_at_least_0.90_of_ceiling"] = ceiling["median_ratio"] >= 0.9
            out["targets"]["gateway_cpu_at_most_6us_per_sample"] = (
                ceiling["median_gateway_cpu_us_per_sample"] <= 6.0
            )
    return out


def vs_ceiling(results: dict) -> dict:
    """fleetgate's max runs against the ceiling's run just before each (the same round)."""
    rounds = []
    for mode, ceiling in results["ceiling"].items():
        fg = results["fleetgate"][mode]
        rounds.append(
            {
                "ceiling_per_s": ceiling["samples_per_s"],
                "fleetgate_per_s": fg["samples_per_s"],
                "ratio": round(fg["samples_per_s"] / ceiling["samples_per_s"], 3),
                "gateway_cpu_us_per_sample": fg["consumer_cpu_us_per_sample"],
                "mosquitto_sub_cpu_us_per_sample": ceiling["consumer_cpu_us_per_sample"],
                "loadavg": fg["loadavg"],
            }
        )
    return {
        "rounds": rounds,
        "median_ratio": round(float(np.median([r["ratio"] for r in rounds])), 3),
        "best_ratio": max(r["ratio"] for r in rounds),
        "median_gateway_cpu_us_per_sample": round(
            float(np.median([r["gateway_cpu_us_per_sample"] for r in rounds])), 2
        ),
    }


async def bench(args: argparse.Namespace) -> dict:
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    with BenchServices("fgbench") as services:
        report = await migrate(services.dsn, storage=args.storage)
        store = await TelemetryStore.open(services.dsn)
        regs = registrations(args.vehicles, args.seed)
        vehicle_of = await store.register_vehicles(
            [VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t) for d, r, t in regs]
        )
        await store.close()

        runs = planned_runs(args, services.dsn, services.broker, vehicle_of)
        await warm_up([system for _, _, system, _ in runs])
        results: dict = {}
        for name, mode, system, workload in runs:
            await truncate(services.dsn)
            results.setdefault(name, {})[mode] = await measure(
                system, services.broker, workload, args.timeout, args.profile_stages
            )
            progress(f"{name} {mode}: {results[name][mode]}")
        return {
            "benchmark": "ingest",
            "date": time.strftime("%Y-%m-%d"),
            "machine": services.machine(),
            "storage": report.storage,
            "vehicles": args.vehicles,
            "one_sample_per_message": True,
            "qos": 1,
            **results,
            **summary(results),
        }


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=300, help="simulated vehicles")
    p.add_argument(
        "--rate-hz",
        type=float,
        default=100.0,
        help="paced run: samples per vehicle per second (offered = vehicles x rate)",
    )
    p.add_argument("--duration", type=float, default=20.0, help="paced run length, s")
    p.add_argument("--max-samples", type=int, default=600_000, help="samples in the max run")
    p.add_argument("--naive-samples", type=int, default=30_000, help="samples in the naive max run")
    p.add_argument(
        "--naive-rate",
        type=float,
        default=1_000.0,
        help="offered samples/s for the naive paced run (it cannot keep up with more)",
    )
    p.add_argument("--skip-naive", action="store_true", help="no naive baseline runs")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="max runs of fleetgate, each after one of the ceiling (mosquitto_sub)",
    )
    p.add_argument("--skip-ceiling", action="store_true", help="no mosquitto_sub ceiling runs")
    p.add_argument(
        "--profile-stages",
        action="store_true",
        help="the in-process gateway's CPU per sample by stage (benchmarks/_stage_profile.py)",
    )
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
    p.add_argument(
        "--read-gather-ms",
        type=float,
        default=0.0,
        help="the in-process gateway's GatewayConfig.mqtt_read_gather_s, in ms",
    )
    p.add_argument("--storage", default="auto", choices=["auto", "native", "timescaledb"])
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    p.add_argument("--timeout", type=float, default=300.0, help="s to wait for every commit")
    # the simulator child's (SimProcess)
    for name, kind in (("host", str), ("port", int), ("topic-root", str), ("samples", int)):
        p.add_argument(f"--{name}", type=kind, help=argparse.SUPPRESS)
    p.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv, children={"sim": _sim_child})


if __name__ == "__main__":
    main()
