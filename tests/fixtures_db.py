"""PostgreSQL for the tests: the local server (started when it is down), a brand-new migrated
database per test cloned from a template migrated once per session, and a TimescaleDB server
(configured, the main one, or a private cluster started from the installed binaries)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fleetgate.embedded import free_port
from telemetry.store import migrate

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def dsn_for(server_dsn: str, dbname: str) -> str:
    """The server's DSN pointed at another database."""
    return make_conninfo(server_dsn, dbname=dbname)


def run_async(coro):
    """Run a coroutine to completion from sync code, whatever loop the caller may be in."""
    result: list = []

    def target() -> None:
        try:
            result.append((True, asyncio.run(coro)))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _problem(dsn: str) -> str | None:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return None
    except psycopg.OperationalError as exc:
        return str(exc).strip()


def _unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class Server:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def create_database(self, prefix: str, template: str | None = None) -> str:
        name = _unique(prefix)
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query)
        return name

    def seal_template(self, name: str) -> None:
        """Let nobody connect to a template any more, and end whoever is connected.

        CREATE DATABASE ... TEMPLATE fails while any session is on the template, and a server
        that preloads timescaledb starts a scheduler in every database that accepts connections
        (to see whether the extension is there), at moments of its own choosing.
        """
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    @contextlib.contextmanager
    def database(self, prefix: str, template: str | None = None) -> Iterator[str]:
        """A new database for the block (DSN), dropped afterwards."""
        name = self.create_database(prefix, template)
        try:
            yield dsn_for(self.dsn, name)
        finally:
            self.drop_database(name)

    def query(self, text: str):
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(text).fetchall()


def _start_local_cluster() -> str:
    """Start the machine's PostgreSQL cluster(s) with pg_ctlcluster; returns what it said."""
    said = []
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    for version in versions:
        proc = subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        said.append(
            f"pg_ctlcluster {version} main start: exit {proc.returncode} {proc.stderr.strip()}"
        )
    return "; ".join(said) or "no cluster in /etc/postgresql"


@pytest.fixture(scope="session")
def pg_server() -> Server:
    """The test server: FLEETGATE_TEST_PG_DSN or the local one, started when it is down."""
    dsn = os.environ.get("FLEETGATE_TEST_PG_DSN", DEFAULT_DSN)
    if _problem(dsn) is None:
        return Server(dsn)
    started = _start_local_cluster()
    deadline = time.monotonic() + 30
    while (problem := _problem(dsn)) is not None and time.monotonic() < deadline:
        time.sleep(0.3)
    if problem is not None:
        pytest.fail(
            f"PostgreSQL at {dsn} does not answer ({problem}); tried to start it: "
            f"{started}. Start a server or set FLEETGATE_TEST_PG_DSN.",
            pytrace=False,
        )
    return Server(dsn)


@pytest.fixture(scope="session")
def native_template(pg_server: Server) -> Iterator[str]:
    """A database migrated once (storage=native); each test gets a copy of it."""
    name = pg_server.create_database("fgtmpl")
    try:
        run_async(migrate(dsn_for(pg_server.dsn, name), storage="native"))
        pg_server.seal_template(name)
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def pg_dsn(pg_server: Server, native_template: str) -> Iterator[str]:
    """A brand-new database migrated with storage=native, dropped after the test."""
    with pg_server.database("fgtest", template=native_template) as dsn:
        # Migrating the copy again is cheap and moves its partition window to today, should
        # the session have started before midnight (UTC).
        run_async(migrate(dsn, storage="native"))
        yield dsn


@pytest.fixture
def empty_pg_dsn(pg_server: Server) -> Iterator[str]:
    """A brand-new empty (unmigrated) database, dropped after the test."""
    with pg_server.database("fgtest") as dsn:
        yield dsn


# --- TimescaleDB ---------------------------------------------------------------------------------


def _pg_config(flag: str) -> Path | None:
    binary = shutil.which("pg_config")
    if binary is None:
        return None
    out = subprocess.run([binary, flag], capture_output=True, text=True)
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def _timescaledb_installed() -> str | None:
    """None when this machine's PostgreSQL binaries have timescaledb, else what is missing."""
    share, lib = _pg_config("--sharedir"), _pg_config("--pkglibdir")
    if share is None or lib is None:
        return "pg_config is not available"
    if not (share / "extension" / "timescaledb.control").exists():
        return f"no timescaledb.control in {share / 'extension'}"
    if not list(lib.glob("timescaledb*.so")):
        return f"no timescaledb*.so in {lib}"
    return None


class PrivateCluster:
    """A throw-away PostgreSQL cluster on a free loopback port, with timescaledb preloaded or
    not; halt() and resume() stop and start the server itself (the outage tests)."""

    def __init__(self, *, timescaledb: bool = True) -> None:
        self.bindir = _pg_config("--bindir")
        self.timescaledb = timescaledb
        self.root = Path(tempfile.mkdtemp(prefix="fleetgate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # initdb refuses to run as root: the cluster belongs to the postgres user then.
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> None:
        kw = {}
        if self.user:
            kw = {
                "user": self.user.pw_uid,
                "group": self.user.pw_gid,
                "extra_groups": [],
                "env": {**os.environ, "HOME": self.user.pw_dir},
            }
        proc = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            **kw,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()}\n" + self._log_tail()
            )

    def _log_tail(self) -> str:
        log = self.root / "server.log"
        return log.read_text()[-2000:] if log.exists() else ""

    def start(self) -> PrivateCluster:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\n"
                # A test server: durability buys nothing here, speed does.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
            if self.timescaledb:
                conf.write(
                    "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n"
                )
        return self.resume()

    def halt(self) -> None:
        """Stop the server (fast shutdown: sessions are ended), keeping its data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def resume(self) -> PrivateCluster:
        """Start the server (again)."""
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def _can_load_timescaledb(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        available, preload = conn.execute(
            "SELECT (SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'), "
            "current_setting('shared_preload_libraries')"
        ).fetchone()
    return bool(available) and "timescaledb" in preload


@pytest.fixture(scope="session")
def timescale_server(pg_server: Server) -> Iterator[Server]:
    """A server that can load TimescaleDB, or the tests that need one are skipped."""
    configured = os.environ.get("FLEETGATE_TEST_TIMESCALE_DSN")
    if configured:
        yield Server(configured)
        return
    if _can_load_timescaledb(pg_server.dsn):
        yield pg_server
        return
    missing = _timescaledb_installed()
    if missing is not None:
        pytest.skip(
            f"TimescaleDB unavailable: set FLEETGATE_TEST_TIMESCALE_DSN, preload it on "
            f"the test server, or install it ({missing})"
        )
    cluster = PrivateCluster()
    try:
        cluster.start()
        yield Server(cluster.dsn)
    finally:
        cluster.stop()


@pytest.fixture
def timescale_dsn(timescale_server: Server) -> Iterator[str]:
    """A brand-new database migrated with storage=timescaledb, dropped after the test."""
    with timescale_server.database("fgtest_tsdb") as dsn:
        run_async(migrate(dsn, storage="timescaledb"))
        yield dsn
