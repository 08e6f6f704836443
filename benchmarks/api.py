"""Live stream fan-out: positions of N simulated vehicles, through the real gateway and the API's
live hub, to M Server-Sent-Events subscribers; delivered updates/s and end-to-end delay.

Everything on this machine: a private Mosquitto, a fresh database, the simulator (one MQTT
connection per vehicle, paced on the wall clock) and the subscribers each in a child process,
the gateway and the API (uvicorn) in this one. End-to-end delay is from the sample's time (the
simulator's wall clock when it published it) to its arrival at a subscriber.

Usage: .venv/bin/python benchmarks/api.py [--vehicles 5000] [--subscribers 50] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._services import BenchServices, machine  # noqa: E402
from benchmarks.ingest import SimProcess, registrations  # noqa: E402
from fleetgate.embedded import free_port  # noqa: E402

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

    print(orjson.dumps({"event": "subscribed"}).decode(), flush=True)
    await asyncio.gather(*(one(i) for i in range(args.subscribers)))
    d = np.asarray(delays)
    print(
        orjson.dumps(
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
        ).decode(),
        flush=True,
    )


# --- the run -------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from api import ApiContext, KeyCache, LiveHub, create_app
    from gateway.service import Gateway, GatewayConfig
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    services = BenchServices("fgbench_api")
    dsn, broker, pg_version = services.dsn, services.broker, services.pg_version
    try:
        await migrate(dsn, storage="native")
        store = await TelemetryStore.open(dsn)
        await store.register_vehicles(
            [VehicleRegistration(r, d, t) for d, r, t in registrations(args.vehicles, args.seed)]
        )
        _, key = await store.create_api_key("bench", ["fleet:read"])

        root = "bench-api/v1"
        gateway = Gateway(
            GatewayConfig(
                database_url=dsn,
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                mqtt_topic_root=root,
                mqtt_client_id="bench-api-gateway",
            ),
            registry=CollectorRegistry(),
        )
        hub = LiveHub(store)
        gateway.change_listeners.append(hub.notify)
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
        tasks = [
            asyncio.create_task(gateway.run()),
            asyncio.create_task(server.serve()),
            asyncio.create_task(hub.run(stop)),
        ]
        while gateway.ingress is None or not gateway.ingress.subscribed.is_set():
            await asyncio.sleep(0.05)

        subscribers = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--role",
            "subscribers",
            "--url",
            f"http://127.0.0.1:{port}",
            "--key",
            key,
            "--subscribers",
            str(args.subscribers),
            "--duration",
            str(args.duration + 5),
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        assert orjson.loads(await subscribers.stdout.readline())["event"] == "subscribed"
        sim = SimProcess(
            broker,
            root,
            args.vehicles,
            args.rate_hz,
            int(args.duration * args.rate_hz),
            False,
            args.seed,
        )
        sim_run = asyncio.create_task(sim.run())
        done = orjson.loads(await subscribers.stdout.readline())
        await subscribers.wait()
        await sim_run
        stop.set()
        gateway.stop()
        server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()

        offset = sim.done["wall_offset_ms"]
        measured = done["window_s"] or args.duration  # first to last position received
        return {
            "benchmark": "api_stream_fanout",
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine(pg_version),
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
    finally:
        services.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--role", choices=["bench", "subscribers"], default="bench", help=argparse.SUPPRESS
    )
    p.add_argument("--vehicles", type=int, default=5000)
    p.add_argument("--rate-hz", type=float, default=1.0)
    p.add_argument("--subscribers", type=int, default=50)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--url")
    p.add_argument("--key")
    args = p.parse_args()
    if args.role == "subscribers":
        asyncio.run(_subscribers(args))
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(orjson.dumps(asyncio.run(bench(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
