"""Helpers for gateway integration tests: a gateway in this process or in a child process,
polling the database, reading metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import httpx
import orjson
import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.pipeline import PipelineLimits
from gateway.service import Gateway, GatewayConfig
from telemetry.store import TelemetryStore, VehicleRegistration
from tests import REPO


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def register(dsn: str, devices: list[tuple[str, str, str]]) -> dict[str, int]:
    """Register (device_id, vehicle_ref, vehicle_type) rows; returns device_id -> vehicles.id."""
    store = await TelemetryStore.open(dsn)
    try:
        return await store.register_vehicles(
            [VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t) for d, r, t in devices]
        )
    finally:
        await store.close()


async def stored_keys(dsn: str) -> list[tuple[str, int]]:
    """(device_id, t in ms) of every stored position, duplicates included if there were any."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT v.device_id, (extract(epoch FROM p.time) * 1000)::bigint "
            "FROM positions p JOIN vehicles v ON v.id = p.vehicle"
        )
        return [(d, int(t)) for d, t in await cur.fetchall()]


async def count_positions(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return (await (await conn.execute("SELECT count(*) FROM positions")).fetchone())[0]


async def stored_at_least(dsn: str, n: int) -> bool:
    """Whether n positions are stored, for waiting until they are."""
    return await count_positions(dsn) >= n


def metric(registry: CollectorRegistry, name: str, **labels) -> float:
    """A sample's value; summed over the labels not given (0 when there is none)."""
    return sum(
        s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def gateway_config(dsn: str, broker, topic_root: str, **overrides) -> GatewayConfig:
    cfg = GatewayConfig(
        database_url=dsn,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_client_id=f"gw-{os.getpid()}-{time.monotonic_ns() % 10**9}",
        mqtt_topic_root=topic_root,
        limits=PipelineLimits(max_messages=2000, max_age_ms=50),
    )
    return replace(cfg, **overrides)


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig):
    """A Gateway in this event loop, subscribed before the block starts; stopped gracefully
    after."""
    registry = CollectorRegistry()
    gateway = Gateway(config, registry=registry)
    task = asyncio.create_task(gateway.run())
    try:
        await eventually(
            lambda: (
                task.done() or (gateway.ingress is not None and gateway.ingress.subscribed.is_set())
            ),
            timeout=20,
            what="gateway subscribed",
        )
        if task.done():
            task.result()
        yield gateway, registry
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 30)


class GatewayProcess:
    """`fleetgate run` as a child process (for SIGKILL and SIGTERM tests). With metrics_port, its
    operator's port (/metrics, /healthz, /readyz) answers there."""

    def __init__(
        self,
        dsn: str,
        broker,
        topic_root: str,
        client_id: str,
        log_path: Path,
        metrics_port: int = 0,
        **env,
    ) -> None:
        self.env = {
            **os.environ,
            "FLEETGATE_DATABASE_URL": dsn,
            "FLEETGATE_MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
            "FLEETGATE_MQTT_TOPIC_ROOT": topic_root,
            "FLEETGATE_MQTT_CLIENT_ID": client_id,
            "FLEETGATE_METRICS_PORT": str(metrics_port),
            "FLEETGATE_API_PORT": "0",
            "FLEETGATE_COAP_ENABLED": "false",
            "FLEETGATE_BATCH_MAX_AGE_MS": "50",
            "FLEETGATE_LOG_FORMAT": "json",
            **{k: str(v) for k, v in env.items()},
        }
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetgate.cli", "run", "--no-migrate"],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        return self

    async def wait_subscribed(self, timeout: float = 30.0) -> None:
        def subscribed() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"gateway exited with {self.proc.returncode}:\n"
                    + self.log_path.read_text()[-3000:]
                )
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                return b'"broker_subscribed"' in f.read()

        await eventually(subscribed, timeout, what="gateway process subscribed")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    @property
    def ops_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.ops_url, timeout=10.0) as client:
            return await client.get(path)

    async def scrape(self) -> dict[str, dict]:
        """/metrics as family name -> {"type", "samples": {(sample name, labels...): value}}."""
        text = (await self.get("/metrics")).text
        return {
            f.name: {
                "type": f.type,
                "samples": {(s.name, *sorted(s.labels.items())): s.value for s in f.samples},
            }
            for f in text_string_to_metric_families(text)
        }

    def events(self) -> list[dict]:
        """The structured log lines of every run of this process so far."""
        return [
            orjson.loads(line)
            for line in self.log_path.read_text().splitlines()
            if line.startswith("{")
        ]

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def sample_sum(scraped: dict[str, dict], name: str, **labels) -> float:
    """The sum of a scraped metric's samples named `name` with these labels (0 if none)."""
    family = name
    for suffix in ("_total", "_count", "_sum", "_bucket", "_info"):
        if name.endswith(suffix) and name[: -len(suffix)] in scraped:
            family = name[: -len(suffix)]
    total = 0.0
    for (sample, *pairs), value in scraped.get(family, {}).get("samples", {}).items():
        if sample == name and labels.items() <= dict(pairs).items():
            total += value
    return total
