"""Live stream fan-out: positions of N simulated vehicles, through the real gateway and the API's
live hub, to M Server-Sent-Events subscribers; delivered updates/s and end-to-end delay.

Everything on this machine: a private Mosquitto, a fresh database, the simulator (one MQTT
connection per vehicle, paced on the wall clock) and the subscribers each in a child process,
the gateway and the API (uvicorn) in this one. End-to-end delay is from the sample's time (the
simulator's wall clock when it published it) to its arrival at a subscriber.

Usage: .venv/bin/python -m benchmarks.api [--vehicles 5000] [--subscribers 50] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from datetime import datetime

import numpy as np
import orjson

from benchmarks._runner import bench_parser, emit, run_benchmark, start_child
from benchmarks._services import BenchServices, running_gateway
from benchmarks.ingest import SimProcess, Workload, registrations
from fleetgate.embedded import free_port

# --- the subscribers, in a child process ---------------------------------------------------------


async def _subscribers(args: argparse.Namespace) -> None:
    import httpx

    counts = [0] * args.subscribers
    delays: list[float] = []
    stop_at = time.time() + args.duration
    window = [None, None]  # first and last arrival of a position, s

    async def one(i: int) -> None:
        headers = {"Authorization": f"Bearer {args.key}"}
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream(
                "GET", f"{args.url}/v1/stream?events=false", headers=headers
            ) as response:
                buffer, k = b"", 0
                async for chunk in response.aiter_bytes():
                    now_ms = time.time() * 1000.0
                    buffer += chunk
                    while b"\n\n" in buffer:
                        block, buffer = buffer.split(b"\n\n", 1)
                        if not block.startswith(b"event: positions"):
                            continue
                        data = block.split(b"data: ", 1)[1]
                        counts[i] += data.count(b'"vehicle_ref"')
                        window[0] = window[0] or now_ms / 1000.0
                        window[1] = now_ms / 1000.0
                        k += 1
                        if k % 5 == 0:  # parse a sample of messages for the delay
                            for v in orjson.loads(data):
                                if v["time"] is not None:  # None: presence only, no sample yet
                                    t = datetime.fromisoformat(v["time"]).timestamp() * 1000.0
                                    delays.append(now_ms - t)
                    if time.time() > stop_at:
                        return

    emit({"event": "subscribed"})
    await asyncio.gather(*(one(i) for i in range(args.subscribers)))
    d = np.asarray(delays)
    emit(
        {
            "event": "done",
            "delivered": sum(counts),
            "window_s": (window[1] - window[0]) if window[0] else None,
            "per_subscriber_min": min(counts),
            "raw_delay_ms": {
                str(q): float(np.percentile(d, q)) if len(d) else None for q in (50, 90, 99)
            },
            "delay_samples": len(d),
        }
    )


# --- the run -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict:
    from api import LiveHub
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    with BenchServices("fgbench_api") as services:
        await migrate(services.dsn, storage="native")
        store = await TelemetryStore.open(services.dsn)
        await store.register_vehicles(
            [VehicleRegistration(r, d, t) for d, r, t in registrations(args.vehicles, args.seed)]
        )
        _, key = await store.create_api_key("bench", ["fleet:read"])
        root = "bench-api/v1"
        hub = LiveHub(store)
        try:
            async with (
                running_gateway(services.dsn, services.broker, root, "bench-api-gateway") as gw,
                serving_api(store, hub) as url,
            ):
                gw.change_listeners.append(hub.notify)
                sim = SimProcess(
                    services.broker,
                    root,
                    Workload(
                        vehicles=args.vehicles,
                        samples=int(args.duration * args.rate_hz),
                        rate_hz=args.rate_hz,
                        fast=False,
                        seed=args.seed,
                    ),
                )
                done = await fan_out(url, key, sim, args)
        finally:
            await store.close()
        offset = sim.done["wall_offset_ms"]
        measured = done["window_s"] or args.duration  # first to last position received
        return {
            "benchmark": "api_stream_fanout",
            "date": time.strftime("%Y-%m-%d"),
            "machine": services.machine(),
            "vehicles": args.vehicles,
            "rate_hz_per_vehicle": args.rate_hz,
            "subscribers": args.subscribers,
            "positions_published_per_s": round(args.vehicles * args.rate_hz),
            "delivered_updates": done["delivered"],
            "delivered_updates_per_s": round(done["delivered"] / measured),
            "delivered_per_subscriber_min": done["per_subscriber_min"],
            "end_to_end_delay_ms": {
                f"p{q}": None if v is None else round(v - offset, 1)
                for q, v in done["raw_delay_ms"].items()
            },
            "delay_samples": done["delay_samples"],
            "note": "delay: sample time (the simulator's publish time) to arrival at a "
            "subscriber; positions are coalesced per vehicle for a slow reader",
        }


@contextlib.asynccontextmanager
async def serving_api(store, hub):
    """The API (uvicorn) and its live hub in this process; yields the API's base URL."""
    import uvicorn

    from api import ApiContext, KeyCache, create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ApiContext(store=store, live=hub, key_cache=KeyCache(60))),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    server.install_signal_handlers = lambda: None
    stop = asyncio.Event()
    tasks = [asyncio.create_task(server.serve()), asyncio.create_task(hub.run(stop))]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


async def fan_out(url: str, key: str, sim: SimProcess, args: argparse.Namespace) -> dict:
    """The subscribers' child process reading the stream while the simulator publishes; what
    the subscribers report."""
    subscribers = await start_child(
        __spec__.name,
        "subscribers",
        stderr=None,
        url=url,
        key=key,
        subscribers=args.subscribers,
        duration=args.duration + 5,
    )
    assert orjson.loads(await subscribers.stdout.readline())["event"] == "subscribed"
    sim_run = asyncio.create_task(sim.run())
    done = orjson.loads(await subscribers.stdout.readline())
    await subscribers.wait()
    await sim_run
    return done


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=5000, help="simulated vehicles")
    p.add_argument("--rate-hz", type=float, default=1.0, help="positions per vehicle per second")
    p.add_argument("--subscribers", type=int, default=50, help="SSE readers")
    p.add_argument("--duration", type=float, default=30.0, help="s of publishing")
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    # the subscribers child's (fan_out)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv, children={"subscribers": _subscribers})


if __name__ == "__main__":
    main()
