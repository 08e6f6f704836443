"""Versioned, idempotent schema migrations from telemetry/migrations/NNNN_name[.storage].sql.

One transaction under an advisory lock applies what is missing, so two processes migrating at
once do it once. The storage kind (TimescaleDB or native partitions) is chosen on the first run
and recorded; later runs keep it, and asking for the other one is an error, never a switch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources

import psycopg
from psycopg import AsyncCursor

from telemetry.store import _partitions, _policies
from telemetry.store._errors import (
    MigrationError,
    StorageMismatch,
    StorageNotAvailable,
    StoreUnavailable,
)

STORAGES = ("native", "timescaledb")
MIGRATE_LOCK = 0x666C_6770_0001  # per database: advisory locks are scoped to one

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(native|timescaledb))?\.sql$")
_PARAM = re.compile(r"\{\{(\w+)\}\}")

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    storage     text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS storage_settings (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    storage         text NOT NULL CHECK (storage IN ('native', 'timescaledb')),
    retention_days  integer NOT NULL CHECK (retention_days > 0),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: dict[str, str]  # storage kind -> SQL text (the same text for both when not specific)


@dataclass(frozen=True)
class MigrationReport:
    storage: str  # "native" | "timescaledb"
    version: int  # schema version after the run
    applied: list[int]  # versions applied by this run, in order
    retention_days: int
    applied_names: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # settings, policies, partitions touched

    def __str__(self) -> str:
        done = "applied " + ", ".join(self.applied_names) if self.applied else "already up to date"
        text = (
            f"schema version {self.version} ({self.storage} storage, "
            f"retention {self.retention_days} days): {done}"
        )
        return text + "".join(f"; {c}" for c in self.changes)


def load_migrations() -> list[Migration]:
    """The migrations shipped in telemetry/migrations, ordered, each available for both kinds."""
    by_version: dict[int, tuple[str, dict[str, str]]] = {}
    for entry in resources.files("telemetry").joinpath("migrations").iterdir():
        m = _FILE.match(entry.name)
        if not m:
            continue
        version, name, kind = int(m.group(1)), m.group(2), m.group(3)
        seen_name, texts = by_version.setdefault(version, (name, {}))
        if seen_name != name:
            raise MigrationError(f"migration {version:04d} has two names: {seen_name}, {name}")
        for k in [kind] if kind else STORAGES:
            if k in texts:
                raise MigrationError(f"migration {version:04d}_{name} is defined twice for {k}")
            texts[k] = entry.read_text()
    migrations = []
    for version in sorted(by_version):
        name, texts = by_version[version]
        missing = [k for k in STORAGES if k not in texts]
        if missing:
            raise MigrationError(f"migration {version:04d}_{name} has no variant for {missing}")
        migrations.append(Migration(version, name, texts))
    return migrations


def render(sql: str, params: dict[str, int]) -> str:
    """Substitute {{name}} placeholders (numbers only, so nothing can inject SQL)."""

    def value(m: re.Match) -> str:
        if m.group(1) not in params:
            raise MigrationError(f"unknown migration parameter {m.group(0)}")
        return str(int(params[m.group(1)]))

    return _PARAM.sub(value, sql)


async def migrate(dsn: str, *, storage: str = "auto", retention_days: int = 30) -> MigrationReport:
    """Create or upgrade the schema; safe to run any number of times, from several processes.

    storage: "auto" (TimescaleDB when the server can load it, else native), "timescaledb"
    (an error when unavailable) or "native" (never touches TimescaleDB). A database keeps the
    kind it was first migrated with.
    """
    if storage not in ("auto", *STORAGES):
        raise MigrationError(f"storage must be auto, timescaledb or native, not {storage!r}")
    if retention_days < 1:
        raise MigrationError(f"retention_days must be at least 1, not {retention_days}")
    migrations = load_migrations()
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to the database to migrate it: {exc}") from exc
    async with conn:
        async with conn.transaction():
            cur = conn.cursor()
            # Taken before anything else, the bookkeeping tables' creation included: two
            # processes creating them at once would collide in the catalog.
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            await cur.execute(_BOOKKEEPING)
            return await _migrate_locked(cur, migrations, storage, retention_days)


async def _migrate_locked(
    cur: AsyncCursor, migrations: list[Migration], storage: str, retention_days: int
) -> MigrationReport:
    await cur.execute("SELECT storage, retention_days FROM storage_settings")
    row = await cur.fetchone()
    recorded, recorded_retention = row if row else (None, None)
    chosen = await _choose_storage(cur, storage, recorded)
    params = {
        "retention_days": retention_days,
        "recent_days": _policies.recent_days(retention_days),
    }

    await cur.execute("SELECT version FROM schema_migrations")
    done = {v for (v,) in await cur.fetchall()}
    applied: list[Migration] = []
    for m in migrations:
        if m.version in done:
            continue
        try:
            await cur.execute(render(m.sql[chosen], params))
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable(f"connection lost while migrating: {exc}") from exc
            raise MigrationError(
                f"migration {m.version:04d}_{m.name} ({chosen}) failed, nothing was applied: {exc}"
            ) from exc
        await cur.execute(
            "INSERT INTO schema_migrations (version, name, storage) VALUES (%s, %s, %s)",
            (m.version, m.name, chosen),
        )
        applied.append(m)

    changes = []
    await cur.execute(
        "INSERT INTO storage_settings (storage, retention_days) VALUES (%s, %s) "
        "ON CONFLICT (singleton) DO UPDATE SET retention_days = EXCLUDED.retention_days, "
        "updated_at = now() WHERE storage_settings.retention_days <> EXCLUDED.retention_days",
        (chosen, retention_days),
    )
    if recorded_retention is not None and recorded_retention != retention_days:
        changes.append(f"retention changed from {recorded_retention} to {retention_days} days")
    if chosen == "timescaledb":
        wrong = await _policies.out_of_line(cur, retention_days)
        if wrong:
            await _policies.put_in_line(cur, retention_days, wrong)
            changes.append("updated " + ", ".join(wrong))
    else:
        partitions = await _partitions.maintain(cur, retention_days)
        if partitions.created:
            changes.append(f"created daily partitions {_span(partitions.created)}")
        if partitions.dropped:
            changes.append(
                f"dropped partitions before the retention window {_span(partitions.dropped)}"
            )

    await cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    (version,) = await cur.fetchone()
    return MigrationReport(
        storage=chosen,
        version=version,
        applied=[m.version for m in applied],
        retention_days=retention_days,
        applied_names=[f"{m.version:04d}_{m.name}" for m in applied],
        changes=changes,
    )


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)})"


async def _choose_storage(cur: AsyncCursor, asked: str, recorded: str | None) -> str:
    if recorded is not None:
        if asked not in ("auto", recorded):
            raise StorageMismatch(
                f"this database was migrated with {recorded} storage and {asked} was asked for; "
                f"the storage kind is never switched in place. Use storage={recorded} (or auto), "
                f"or migrate a new database with {asked} and copy the data over."
            )
        return recorded
    if asked == "native":
        return "native"
    problem = await _timescaledb_problem(cur)
    if problem is None:
        return "timescaledb"
    if asked == "timescaledb":
        raise StorageNotAvailable(f"storage=timescaledb was asked for, but {problem}")
    return "native"


async def _timescaledb_problem(cur: AsyncCursor) -> str | None:
    """None when the timescaledb extension is (now) created in this database, else why not."""
    await cur.execute(
        "SELECT (SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'), "
        "current_setting('shared_preload_libraries')"
    )
    available, preload = await cur.fetchone()
    if not available:
        return (
            "the timescaledb extension is not installed on this server. Install it "
            "(https://docs.timescale.com) or use storage=native."
        )
    if "timescaledb" not in preload:
        return (
            "the timescaledb extension is installed but not loaded: add it to "
            "shared_preload_libraries in postgresql.conf and restart the server, "
            "or use storage=native."
        )
    try:
        async with cur.connection.transaction():  # a savepoint: a failure leaves the rest intact
            await cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        return f"the timescaledb extension cannot be created here: {exc}"
    return None
