"""Public feeds: GBFS vehicle_status.json for a large fleet, built by the feeds core, and served
over HTTP from the feed cache side by side with a rebuild (database read + build) per request.

Part one needs nothing: a synthetic fleet of --vehicles (e-bikes, scooters, cars; most parked
and rentable) is turned into vehicle_status.json (mask, rotating ids, ranges, times, JSON bytes),
best of --repeat. Part two runs the real API (uvicorn) on a fresh database holding the same
number of vehicles with a latest state each, and a child process asks for vehicle_status.json
with --concurrency requests in flight for --duration seconds: first served from the cache (one
build per ttl), then with the cache off (every request reads and builds).

Usage: .venv/bin/python -m benchmarks.feeds [--vehicles 50000] [--repeat 5] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from datetime import UTC, datetime

import numpy as np
import orjson

from benchmarks._runner import (
    bench_parser,
    best_of,
    emit,
    loadavg,
    machine,
    run_benchmark,
    start_child,
)
from fleetgate.embedded import free_port

TYPES = np.array(["ebike", "scooter", "car"], dtype=object)
STATUSES = np.array(["available", "low_battery", "on_trip", "offline", "immobilised"], dtype=object)
STATUS_SHARES = [0.75, 0.08, 0.1, 0.05, 0.02]
SYSTEM_ID = "bench-city"


def synthetic_fleet(n: int, seed: int):
    from feeds import FleetState

    rng = np.random.default_rng(seed)
    empty = np.empty(n, dtype=object)
    rotation = np.array([f"{k}:{o}" for k, o in zip(rng.integers(0, 10**6, n), range(n))])
    return FleetState(
        vehicle=np.arange(1, n + 1, dtype=np.int64),
        vehicle_type=TYPES[rng.integers(0, 3, n)],
        status=STATUSES[rng.choice(len(STATUSES), n, p=STATUS_SHARES)],
        lat=rng.uniform(52.49, 52.545, n),
        lon=rng.uniform(13.33, 13.46, n),
        range_m=np.where(rng.random(n) < 0.9, rng.uniform(0, 60_000, n), np.nan),
        soc_pct=rng.uniform(5, 100, n),
        last_reported=time.time() - rng.uniform(0, 300, n),
        rotation=rotation.astype(object),
        station_id=empty,
        reserved=np.zeros(n, dtype=bool),
    )


def system():
    from feeds import FeedSystem

    return FeedSystem(
        system_id=SYSTEM_ID,
        name="Bench City",
        operator="Bench Operator",
        languages=("en",),
        timezone="Europe/Berlin",
        feed_contact_email="feeds@example.org",
        base_url="http://127.0.0.1",
        ttl_s=30,
        id_secret=b"benchmark-secret-0123456789",
    )


def build_time(args: argparse.Namespace) -> dict:
    from feeds import GbfsFeeds
    from telemetry.vehicle_types import BUILTIN_VEHICLE_TYPES

    fleet = synthetic_fleet(args.vehicles, args.seed)
    feeds = GbfsFeeds(system(), {t.id: t for t in BUILTIN_VEHICLE_TYPES})
    now = datetime.now(UTC)
    build_s, doc = best_of(lambda: feeds.vehicle_status(fleet, now), args.repeat)
    total_s, body = best_of(lambda: orjson.dumps(feeds.vehicle_status(fleet, now)), args.repeat)
    return {
        "vehicles": args.vehicles,
        "listed": len(doc["data"]["vehicles"]),
        "build_s": round(build_s, 4),
        "build_and_json_s": round(total_s, 4),
        "bytes": len(body),
    }


# --- the load, in a child process ------------------------------------------------------------


async def _load(args: argparse.Namespace) -> None:
    import httpx

    done = 0
    failed = 0
    stop_at = time.monotonic() + args.duration

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal done, failed
        while time.monotonic() < stop_at:
            answer = await client.get(args.url)
            if answer.status_code == 200 and answer.content:
                done += 1
            else:
                failed += 1

    started = time.monotonic()
    async with httpx.AsyncClient(timeout=120.0) as client:
        await asyncio.gather(*(one(client) for _ in range(args.concurrency)))
    emit({"requests": done, "failed": failed, "seconds": time.monotonic() - started})


async def _measure(url: str, args: argparse.Namespace) -> dict:
    child = await start_child(
        __spec__.name,
        "load",
        url=url,
        duration=args.duration,
        concurrency=args.concurrency,
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"load process failed: {err.decode()[-2000:]}")
    result = orjson.loads(out.splitlines()[-1])
    result["requests_per_s"] = round(result["requests"] / result["seconds"], 1)
    return result


# --- the served API ----------------------------------------------------------------------------

_SEED_VEHICLES = """
INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type)
SELECT 'veh-' || i, 'dev-' || i, (ARRAY['ebike', 'scooter', 'car'])[1 + i %% 3]
FROM generate_series(1, %(n)s) AS i
"""
_SEED_STATES = """
INSERT INTO vehicle_state (vehicle, time, received_at, fix_time, lat, lon, speed_kmh, soc_pct,
                           range_m, odometer_m, locked, ignition, immobilised, online, last_seen)
SELECT id, now() - random() * interval '5 minutes', now(), now(),
       52.49 + random() * 0.055, 13.33 + random() * 0.13, 0, 20 + random() * 80,
       random() * 60000, random() * 1e6, random() < 0.9, false, false, random() < 0.95, now()
FROM vehicles
"""


@contextlib.asynccontextmanager
async def serving(store, service):
    import uvicorn

    from api import ApiContext, KeyCache, LiveHub, create_app

    port = free_port()
    ctx = ApiContext(store=store, live=LiveHub(store), key_cache=KeyCache(60), feeds=service)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ctx),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield ctx, f"http://127.0.0.1:{port}/gbfs/v3/{SYSTEM_ID}/vehicle_status.json"
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)


async def served(args: argparse.Namespace) -> dict:
    from api.feed_service import FeedCache, FeedService, RateLimiter
    from benchmarks._services import BenchServices
    from telemetry.store import TelemetryStore, migrate

    with BenchServices("fgbench_feeds") as services:
        await migrate(services.dsn, storage="native")
        store = await TelemetryStore.open(services.dsn)
        try:
            async with store.pool.connection() as conn:
                await conn.execute(_SEED_VEHICLES, {"n": args.vehicles})
                await conn.execute(_SEED_STATES)
            service = FeedService(system(), limiter=RateLimiter(0, 1))
            async with serving(store, service) as (ctx, url):
                cached = await _measure(url, args)
                ctx.feeds.cache = FeedCache(enabled=False)
                rebuilt = await _measure(url, args)
                builds = ctx.feeds.cache.builds
        finally:
            await store.close()
        return {
            "machine": services.machine(),
            "from_cache": cached,
            "rebuild_per_request": {**rebuilt, "builds": builds},
            "cache_speedup": round(
                cached["requests_per_s"] / max(rebuilt["requests_per_s"], 1e-9), 1
            ),
        }


async def bench(args: argparse.Namespace) -> dict:
    report = {
        "benchmark": "feeds_vehicle_status",
        "date": time.strftime("%Y-%m-%d"),
        "loadavg_at_start": loadavg(),
        "build": build_time(args),
    }
    if not args.no_http:
        report["http"] = await served(args)
    else:
        report["machine"] = machine()
    return report


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=50_000, help="fleet size")
    p.add_argument("--repeat", type=int, default=5, help="builds timed (best of)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per mode")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-http", action="store_true", help="only the build time")
    p.add_argument("--url", help=argparse.SUPPRESS)  # the load child's target
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv, children={"load": _load})


if __name__ == "__main__":
    main()
