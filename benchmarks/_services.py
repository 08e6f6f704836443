"""What the end-to-end benchmarks start and remove: a database of their own on the local
PostgreSQL (or FLEETGATE_BENCH_PG_DSN), a private Mosquitto with the project's configuration,
and the gateway, in this process or as `fleetgate run` child processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from benchmarks._runner import REPO, machine, until
from fleetgate.embedded import Mosquitto

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


class BenchServices:
    """A fresh database and a private broker, created on construction and removed by close() or
    at the end of a `with` block (the broker must outlive the gateways and simulators the
    benchmark stops first). broker=False: the database alone (benchmarks of the store)."""

    def __init__(self, prefix: str, *, broker: bool = True) -> None:
        self.loadavg_at_start = os.getloadavg()[0]
        self._admin = os.environ.get("FLEETGATE_BENCH_PG_DSN", DEFAULT_PG)
        self.dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
            self.pg_version = conn.execute("SHOW server_version").fetchone()[0]
        self.dsn = make_conninfo(self._admin, dbname=self.dbname)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        self.broker: Mosquitto | None = None
        try:
            if broker:
                self.broker = Mosquitto(datadir=self.tmp / "mosquitto").start()
        except BaseException:
            self._drop()
            raise

    def __enter__(self) -> BenchServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        self._drop()

    def _drop(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self._admin, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    def machine(self) -> dict[str, object]:
        """The machine description of an end-to-end report: with the server versions and the
        load average when the services were started."""
        services: dict[str, object] = {"postgresql": self.pg_version}
        if self.broker is not None:
            mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout
            services["mosquitto"] = mosquitto.split("\n")[0].strip()
        return machine(**services, loadavg_at_start=self.loadavg_at_start)


# --- the gateway -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_gateway(
    dsn: str,
    broker: Mosquitto,
    topic_root: str,
    client_id: str,
    *,
    on_committed: Callable | None = None,
    **config: object,
) -> AsyncIterator:
    """fleetgate's gateway in this process (its own metrics registry), from when it is
    subscribed to the broker until the block ends; `config` sets more GatewayConfig fields."""
    from prometheus_client import CollectorRegistry

    from gateway.service import Gateway, GatewayConfig

    gateway = Gateway(
        GatewayConfig(
            database_url=dsn,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_topic_root=topic_root,
            mqtt_client_id=client_id,
            **config,
        ),
        registry=CollectorRegistry(),
        on_committed=on_committed,
    )
    task = asyncio.create_task(gateway.run())
    try:
        await until(
            lambda: (
                task.done() or (gateway.ingress is not None and gateway.ingress.subscribed.is_set())
            ),
            30,
            "the gateway subscribed",
        )
        if task.done():
            task.result()  # it failed to start: say why
        yield gateway
    finally:
        gateway.stop()
        await task


def gateway_process(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`fleetgate run` (no migration) as a child process, configured by FLEETGATE_* variables
    over this process's environment, its output appended to `log`."""
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "fleetgate.cli", "run", "--no-migrate"],
            cwd=REPO,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )


def answers_ok(url: str) -> bool:
    """Whether an HTTP GET of url (a gateway's /readyz) answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
