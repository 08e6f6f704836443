"""Webhook deliveries: how many per second reach a local receiver, and what delivering costs
ingestion, side by side with webhooks off in the same run.

Everything runs on this machine: a fresh database, a private Mosquitto, the receiver (a small
asyncio HTTP/1.1 server, tests/webhook_receiver.py) in a child process of its own, and the load
(benchmarks/ingest.py's load generator) in another.

- deliveries: `--events` outbound events already committed, `--subscriptions` subscriptions to
  the receiver; the delivery worker is started as it runs in production, `fleetgate webhooks
  worker --supervised` in a process of its own, and timed until every event has reached every
  subscription and is recorded (deliveries/s, the worker process's CPU per delivery). Beside it,
  in turn, the baseline: the same number of POSTs over the same HTTP client (aiohttp) and
  concurrency with no database, no ordering and no signing, in a process of its own (what the
  client and receiver alone manage here).
- ingest: the gateway in this process takes `--samples` samples as fast as the broker delivers
  them while `--event-rate` outbound events/s are committed beside the samples, twice: webhooks
  off, then on with the worker in its child process (as `fleetgate run` starts it) delivering
  every event to the subscriptions. Reported: samples/s and the gateway process's CPU per sample
  (and the worker process's CPU beside it), each run, and their ratio.

Prints one JSON document. Usage:  .venv/bin/python -m benchmarks.webhooks [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time

import orjson
import psycopg

from benchmarks._runner import (
    REPO,
    bench_parser,
    cpu_seconds,
    emit,
    progress,
    run_benchmark,
    start_child,
    until,
)
from benchmarks._services import BenchServices, running_gateway

# --- the receiver, in a child process ----------------------------------------------------------


async def _receiver_child(args: argparse.Namespace) -> None:
    from tests.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver(record=False)
    emit({"event": "listening", "url": await receiver.start()})
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while await stdin.readline():  # one line from the parent: say how many so far
        emit({"event": "count", "count": receiver.count, "cpu_s": cpu_seconds()})
    await receiver.close()


class Receiver:
    async def start(self) -> str:
        self.proc = await start_child(__spec__.name, "receiver", stdin=asyncio.subprocess.PIPE)
        line = orjson.loads(await self.proc.stdout.readline())
        return line["url"]

    async def count(self) -> tuple[int, float]:
        self.proc.stdin.write(b"?\n")
        await self.proc.stdin.drain()
        line = orjson.loads(await self.proc.stdout.readline())
        return line["count"], line["cpu_s"]

    async def stop(self) -> None:
        self.proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)
        if self.proc.returncode is None:
            self.proc.kill()


# --- the parts ---------------------------------------------------------------------------------


async def _write_events(store, vehicles: list[int], count: int, t0: int) -> None:
    """count outbound events (geofence zone events), round-robin over the vehicles, committed
    by the ingest path's write in transactions of up to 500."""
    from telemetry.batch import DeviceEvent, TelemetryBatch

    for start in range(0, count, 500):
        events = [
            DeviceEvent(
                vehicles[n % len(vehicles)], t0 + n, "zone_enter", {"zone": "z"}, "geofence"
            )
            for n in range(start, min(count, start + 500))
        ]
        await store.write(TelemetryBatch.empty(), events)


def _worker_env(args: argparse.Namespace, dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLEETGATE_DATABASE_URL": dsn,
        "FLEETGATE_WEBHOOK_CONCURRENCY": str(args.concurrency),
        "FLEETGATE_LOG_LEVEL": "WARNING",
    }


async def deliveries(args, dsn: str, store, vehicles: list[int], receiver) -> dict:
    """The worker as deployed: `fleetgate webhooks worker --supervised` in its own process.
    Once it holds the lease and has polled (its start-up is not counted), the events are
    committed; timed until every delivery is received and recorded."""
    expected = args.events * args.subscriptions
    received0, receiver_cpu0 = await receiver.count()
    recorded0 = await _recorded(dsn)
    profile = os.environ.get("FLEETGATE_BENCH_PROFILE_WORKER")  # a directory: cProfile it
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *(["-m", "cProfile", "-o", f"{profile}/worker.prof"] if profile else []),
        "-m",
        "fleetgate.cli",
        "webhooks",
        "worker",
        "--supervised",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=_worker_env(args, dsn),
        cwd=REPO,
    )
    reports = None
    try:
        async with asyncio.timeout(60):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the worker process ended with {await proc.wait()}")
                report = orjson.loads(line)
                if report["held"] and report["turns"] > 0:
                    break
        reports = asyncio.create_task(_drain(proc.stdout))
        db_cpu0 = await _backend_cpu(dsn)
        cpu0, started = cpu_seconds(proc.pid), time.monotonic()
        await _write_events(store, vehicles, args.events, 1_700_000_000_000 + _written(args))

        async def received() -> bool:
            return (await receiver.count())[0] - received0 >= expected

        await until(received, args.timeout, f"{expected} deliveries")
        delivered_s = time.monotonic() - started
        # Done when recorded too (what a restart would not send again).
        await until(
            lambda: _at_least(_recorded, dsn, recorded0 + expected),
            args.timeout,
            "deliveries recorded",
        )
        elapsed = time.monotonic() - started
        cpu_s = cpu_seconds(proc.pid) - cpu0
        db_cpu = await _backend_cpu(dsn)
        db_cpu_s = sum(cpu - db_cpu0.get(pid, 0.0) for pid, cpu in db_cpu.items())
    finally:
        proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 15)
        if proc.returncode is None:
            proc.kill()
        if reports is not None:
            reports.cancel()
    received_n, receiver_cpu = await receiver.count()
    return {
        "events": args.events,
        "subscriptions": args.subscriptions,
        "deliveries": expected,
        "received": received_n - received0,
        "recorded_delivered": await _recorded(dsn) - recorded0,
        "seconds_to_last_answer": round(delivered_s, 2),
        "seconds": round(elapsed, 2),
        "deliveries_per_s": round(expected / elapsed),
        "worker_cpu_us_per_delivery": round(cpu_s / expected * 1e6, 1),
        # The PostgreSQL backends of the benchmark's database meanwhile (the worker's sessions:
        # numbering, loading, recording; nothing else works on it then).
        "database_cpu_us_per_delivery": round(db_cpu_s / expected * 1e6, 1),
        "receiver_cpu_us_per_delivery": round((receiver_cpu - receiver_cpu0) / expected * 1e6, 1),
    }


async def _backend_cpu(dsn: str) -> dict[int, float]:
    """CPU seconds so far of each server process serving this database (a local server)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        pids = [pid for (pid,) in await cur.fetchall()]
    cpu = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # ended meanwhile, or not on this machine
            cpu[pid] = cpu_seconds(pid)
    return cpu


_rounds = 0


def _written(args) -> int:
    """A time offset per deliveries round: every round writes events of its own."""
    global _rounds
    _rounds += 1
    return _rounds * 10 * args.events


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def _recorded(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'"
        )
        return (await cur.fetchone())[0]


async def _at_least(count, dsn: str, expected: int) -> bool:
    return await count(dsn) >= expected


async def _bare_child(args: argparse.Namespace) -> None:
    """The baseline in a process of its own, as the worker is."""
    emit(await _bare_posts(args, args.url, args.posts))


async def bare_posts(args, url: str, count: int) -> dict:
    proc = await start_child(
        __spec__.name, "bare", url=url, posts=count, concurrency=args.concurrency, stderr=None
    )
    line = await proc.stdout.readline()
    await proc.wait()
    if not line:
        raise RuntimeError(f"the baseline process ended with {proc.returncode}")
    return orjson.loads(line)


async def _bare_posts(args, url: str, count: int) -> dict:
    """The baseline: count POSTs of an envelope-sized body over the worker's HTTP client
    (aiohttp) with the same concurrency, no database, no ordering, no signing."""
    import aiohttp

    body = b'{"id":1,"type":"geofence.zone_enter","time":"2026-12-06T09:00:00.000Z",' + (
        b'"vehicle_ref":"veh-0001","data":{"zone":"z"}}'
    )
    left = count
    cpu0, started = cpu_seconds(), time.monotonic()
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one_lane() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with client.post(url, data=body) as response:
                    response.raise_for_status()
                    await response.read()

        await asyncio.gather(*(one_lane() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - started
    return {
        "posts": count,
        "seconds": round(elapsed, 2),
        "posts_per_s": round(count / elapsed),
        "cpu_us_per_post": round((cpu_seconds() - cpu0) / count * 1e6, 1),
    }


async def ingest(args, services, store, vehicles, webhooks_on: bool, receiver) -> dict:
    """The max ingest workload with outbound events committed beside it; webhooks on or off."""
    from benchmarks.ingest import Recorder, SimProcess, Workload, stored_rows, truncate

    await truncate(services.dsn)
    topic_root = f"bench-wh-{'on' if webhooks_on else 'off'}/v1"
    recorder = Recorder()
    stop = asyncio.Event()
    written = 0

    async def events_beside() -> None:
        nonlocal written
        per_tick = max(1, int(args.event_rate / 10))
        t0 = 1_750_000_000_000 + (10**9 if webhooks_on else 0)
        while not stop.is_set():
            await _write_events(store, vehicles, per_tick, t0 + written)
            written += per_tick
            await asyncio.sleep(0.1)

    received0, _ = await receiver.count()
    workload = Workload(len(vehicles), args.samples // len(vehicles), 100.0, True, args.seed)
    # The worker's child process reads its settings from the environment, as under fleetgate run;
    # given through env(1), so this process's own environment (a test's too) stays as it was.
    settings = {
        k: v for k, v in _worker_env(args, services.dsn).items() if k.startswith("FLEETGATE_")
    }
    command = ["-m", "fleetgate.cli", "webhooks", "worker", "--supervised"]
    async with running_gateway(
        services.dsn,
        services.broker,
        topic_root,
        "bench-webhooks",
        on_committed=lambda b, ms: recorder.batch(b.time_ms, ms),
        webhooks_enabled=webhooks_on,
        webhooks_command=[
            "env",
            *(f"{k}={v}" for k, v in settings.items()),
            sys.executable,
            *command,
        ],
    ) as gateway:
        if webhooks_on:
            await until(lambda: gateway.webhooks.proc is not None, 30, "the worker process")
            worker_pid = gateway.webhooks.proc.pid
            worker_cpu0 = cpu_seconds(worker_pid)
        cpu0 = cpu_seconds()
        writer = asyncio.create_task(events_beside())
        sim = SimProcess(services.broker, topic_root, workload)
        await sim.run()
        expected = sim.done["samples_acked"]
        await until(lambda: recorder.count >= expected, args.timeout, "every sample committed")
        cpu_s = cpu_seconds() - cpu0
        worker_cpu_s = cpu_seconds(worker_pid) - worker_cpu0 if webhooks_on else 0.0
        stop.set()
        await writer
        if webhooks_on:
            want = written * args.subscriptions

            async def caught_up() -> bool:
                return (await receiver.count())[0] - received0 >= want

            await until(caught_up, args.timeout, "every event delivered")
    elapsed = recorder.last_commit - sim.started_at
    delivered = (await receiver.count())[0] - received0
    return {
        "samples": recorder.count,
        "every_sample_stored_once": await stored_rows(services.dsn) == expected == recorder.count,
        "samples_per_s": round(recorder.count / elapsed),
        "cpu_us_per_sample": round(cpu_s / max(recorder.count, 1) * 1e6, 2),
        "worker_process_cpu_us_per_sample": round(worker_cpu_s / max(recorder.count, 1) * 1e6, 2),
        "outbound_events": written,
        "deliveries": delivered,
    }


async def _subscribe(store, url: str, count: int) -> None:
    from outbound import new_secret
    from telemetry.store import Webhooks

    hooks = Webhooks(store)
    for n in range(count):
        await hooks.create(url, None, f"bench {n}", new_secret())


async def bench(args: argparse.Namespace) -> dict:
    from benchmarks.ingest import registrations
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    with BenchServices("fgbench_webhooks") as services:
        await migrate(services.dsn, storage="native")
        store = await TelemetryStore.open(services.dsn)
        receiver = Receiver()
        url = await receiver.start()
        try:
            regs = registrations(args.vehicles, args.seed)
            vehicle_of = await store.register_vehicles(
                [
                    VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t)
                    for d, r, t in regs
                ]
            )
            vehicles = sorted(vehicle_of.values())
            posts = args.events * args.subscriptions
            await _subscribe(store, url, args.subscriptions)
            baseline, delivered = [], []
            for _ in range(args.rounds):  # in turn, so that the machine's load falls on both
                baseline.append(await bare_posts(args, url, posts))
                progress(f"bare posts: {baseline[-1]}")
                delivered.append(await deliveries(args, services.dsn, store, vehicles, receiver))
                progress(f"deliveries: {delivered[-1]}")
            off = await ingest(args, services, store, vehicles, False, receiver)
            progress(f"ingest, webhooks off: {off}")
            on = await ingest(args, services, store, vehicles, True, receiver)
            progress(f"ingest, webhooks on: {on}")
        finally:
            await receiver.stop()
            await store.close()
        cost = on["cpu_us_per_sample"] / off["cpu_us_per_sample"]
        best = max((d["deliveries_per_s"] for d in delivered), default=None)
        return {
            "benchmark": "webhooks",
            "date": time.strftime("%Y-%m-%d"),
            "machine": services.machine(),
            "deliveries": delivered,
            "baseline_bare_posts": baseline,
            "best_deliveries_per_s": best,
            "best_bare_posts_per_s": max((b["posts_per_s"] for b in baseline), default=None),
            "ingest": {"webhooks_off": off, "webhooks_on": on},
            "ingest_cpu_per_sample_on_over_off": round(cost, 3),
            "ingest_throughput_on_over_off": round(on["samples_per_s"] / off["samples_per_s"], 3),
            "targets": {
                "5000_deliveries_per_s": None if best is None else best >= 5000,
                "ingest_within_10_percent": cost <= 1.10,
            },
        }


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=300, help="vehicles (simulated fleet)")
    p.add_argument("--subscriptions", type=int, default=10, help="subscriptions, one receiver")
    p.add_argument("--events", type=int, default=3_000, help="events in the deliveries part")
    p.add_argument("--concurrency", type=int, default=64, help="webhook requests in flight")
    p.add_argument("--samples", type=int, default=300_000, help="samples in each ingest run")
    p.add_argument(
        "--event-rate", type=float, default=100.0, help="outbound events/s beside the ingest"
    )
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    p.add_argument(
        "--rounds", type=int, default=3, help="deliveries and baseline rounds (0: ingest only)"
    )
    # The baseline's child process (--role bare).
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--posts", type=int, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=float, default=300.0, help="s to wait for each part")
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(
        bench, build_parser(), argv, children={"receiver": _receiver_child, "bare": _bare_child}
    )


if __name__ == "__main__":
    main()
