"""What every end-to-end benchmark starts and removes: a database of its own on the local
PostgreSQL (or FLEETGATE_BENCH_PG_DSN) and a private Mosquitto with the project's configuration,
plus the description of the machine that goes into every report."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from fleetgate.embedded import Mosquitto

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


class BenchServices:
    """Created on construction, removed by close() (call it last: the broker must outlive the
    gateways and simulators the benchmark stops first)."""

    def __init__(self, prefix: str) -> None:
        self._admin = os.environ.get("FLEETGATE_BENCH_PG_DSN", DEFAULT_PG)
        self.dbname = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
            self.pg_version = conn.execute("SHOW server_version").fetchone()[0]
        self.dsn = make_conninfo(self._admin, dbname=self.dbname)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        try:
            self.broker = Mosquitto(datadir=self.tmp / "mosquitto").start()
        except BaseException:
            self._drop()
            raise

    def close(self) -> None:
        self.broker.stop()
        self._drop()

    def _drop(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self._admin, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(pg_version: str) -> dict:
    cpu = cpu_model()
    mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "postgresql": pg_version,
        "mosquitto": mosq.strip(),
        "loadavg_at_start": os.getloadavg()[0],
    }
