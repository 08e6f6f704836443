"""Schema migrations: versioned, idempotent, safe to run concurrently, and explicit about the
storage kind (TimescaleDB or native partitions) a database was created with."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from telemetry.store import (
    MigrationError,
    StorageMismatch,
    StorageNotAvailable,
    TelemetryStore,
    migrate,
)
from telemetry.store._migrate import load_migrations, render
from tests.fixtures_db import _can_load_timescaledb
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration

TABLES = {
    "vehicles",
    "positions",
    "vehicle_state",
    "events",
    "schema_migrations",
    "storage_settings",
}


async def schema_objects(dsn: str) -> list[tuple]:
    """Every relation and index in the public schema, for before/after comparisons."""
    rows = await fetch(
        dsn,
        "SELECT relname, relkind FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' ORDER BY 1",
    )
    return [(r["relname"], r["relkind"]) for r in rows]


def test_every_migration_exists_for_both_storage_kinds_in_version_order():
    migrations = load_migrations()
    versions = [m.version for m in migrations]
    # Parallel work is given ranges of numbers (e.g. 0030-0034), so there may be gaps: the
    # runner applies every version a database lacks, whatever came before it.
    assert versions[0] == 1 and versions == sorted(set(versions))
    for m in migrations:
        assert set(m.sql) == {"native", "timescaledb"}, m.name
    positions = next(m for m in migrations if m.name == "positions")
    assert positions.sql["native"] != positions.sql["timescaledb"]


def test_parameters_are_substituted_as_numbers_and_unknown_ones_are_refused():
    assert (
        render("INTERVAL '{{retention_days}} days'", {"retention_days": 30}) == "INTERVAL '30 days'"
    )
    with pytest.raises(MigrationError, match="unknown migration parameter"):
        render("{{nope}}", {"retention_days": 30})


async def test_a_fresh_database_gets_every_version_recorded_with_its_storage(empty_pg_dsn):
    report = await migrate(empty_pg_dsn, storage="native")
    versions = [m.version for m in load_migrations()]
    assert report.storage == "native" and report.applied == versions
    assert report.version == versions[-1]
    assert str(report).startswith(f"schema version {versions[-1]} (native storage")
    rows = await fetch(
        empty_pg_dsn, "SELECT version, name, storage FROM schema_migrations ORDER BY version"
    )
    assert [(r["version"], r["storage"]) for r in rows] == [(v, "native") for v in versions]
    assert rows[0]["name"] == "vehicles"
    assert TABLES <= {name for name, _ in await schema_objects(empty_pg_dsn)}
    assert (await fetch(empty_pg_dsn, "SELECT relkind FROM pg_class WHERE relname = 'positions'"))[
        0
    ]["relkind"] == "p"  # natively partitioned


async def test_migrating_again_changes_nothing(pg_dsn):
    before = await schema_objects(pg_dsn)
    report = await migrate(pg_dsn, storage="native")
    assert report.applied == [] and report.changes == []
    assert "already up to date" in str(report)
    assert await schema_objects(pg_dsn) == before
    assert (await migrate(pg_dsn, storage="auto")).storage == "native", "auto keeps the kind"


async def test_two_processes_migrating_at_once_apply_each_version_once(empty_pg_dsn):
    first, second = await asyncio.gather(
        migrate(empty_pg_dsn, storage="native"), migrate(empty_pg_dsn, storage="native")
    )
    assert sorted([first.applied, second.applied], key=len) == [
        [],
        [m.version for m in load_migrations()],
    ]
    rows = await fetch(empty_pg_dsn, "SELECT count(*) AS n FROM schema_migrations")
    assert rows[0]["n"] == len(load_migrations())


async def test_asking_for_the_other_storage_kind_is_an_error_not_a_switch(pg_dsn):
    with pytest.raises(StorageMismatch, match="migrated with native storage"):
        await migrate(pg_dsn, storage="timescaledb")
    rows = await fetch(pg_dsn, "SELECT DISTINCT storage FROM schema_migrations")
    assert rows == [{"storage": "native"}]


async def test_timescaledb_where_the_server_cannot_load_it_is_a_clear_error(
    empty_pg_dsn, pg_server
):
    if _can_load_timescaledb(pg_server.dsn):
        pytest.skip("the test server loads timescaledb")
    with pytest.raises(StorageNotAvailable, match="storage=native") as info:
        await migrate(empty_pg_dsn, storage="timescaledb")
    assert "timescaledb" in str(info.value)
    rows = await fetch(empty_pg_dsn, "SELECT to_regclass('schema_migrations') AS t")
    assert rows == [{"t": None}], "nothing was created"


async def test_auto_falls_back_to_native_without_touching_timescaledb(empty_pg_dsn, pg_server):
    if _can_load_timescaledb(pg_server.dsn):
        pytest.skip("the test server loads timescaledb")
    report = await migrate(empty_pg_dsn, storage="auto")
    assert report.storage == "native"
    assert (
        await fetch(empty_pg_dsn, "SELECT extname FROM pg_extension WHERE extname = 'timescaledb'")
        == []
    )


async def test_a_shorter_retention_drops_the_partitions_outside_it(pg_dsn):
    report = await migrate(pg_dsn, retention_days=10)
    assert "retention changed from 30 to 10 days" in str(report)
    assert (await fetch(pg_dsn, "SELECT retention_days FROM storage_settings")) == [
        {"retention_days": 10}
    ]
    count = await fetch(
        pg_dsn, "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'positions'::regclass"
    )
    assert count[0]["n"] == 10 + 3 + 1
    async with await TelemetryStore.open(pg_dsn) as store:
        assert "nothing to do" in str(await store.maintain())


async def test_bad_arguments_are_refused_before_touching_the_database(empty_pg_dsn):
    with pytest.raises(MigrationError, match="storage must be"):
        await migrate(empty_pg_dsn, storage="mongodb")
    with pytest.raises(MigrationError, match="retention_days"):
        await migrate(empty_pg_dsn, retention_days=0)
    async with await psycopg.AsyncConnection.connect(empty_pg_dsn) as conn:
        cur = await conn.execute("SELECT to_regclass('schema_migrations')")
        assert (await cur.fetchone()) == (None,)


async def test_command_history_already_stored_is_numbered_after_the_events(
    empty_pg_dsn, monkeypatch
):
    """A database at the version before command events (migration 0013), with events and command
    history whose ids overlap, is upgraded: the history keeps its order, its ids follow every
    event's, and new rows of either table take ids from the one sequence."""
    import telemetry.store._migrate as migrations

    before = [m for m in load_migrations() if m.name != "command_events"]
    monkeypatch.setattr(migrations, "load_migrations", lambda: before)
    await migrate(empty_pg_dsn, storage="native")
    async with await psycopg.AsyncConnection.connect(empty_pg_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO vehicles (vehicle_ref, device_id, vehicle_type) "
            "VALUES ('veh-1', 'dev-1', 'ebike')"
        )
        await conn.execute(
            "INSERT INTO events (time, vehicle, source, type) "
            "SELECT now() - k * interval '1 s', 1, 'device', 'tamper' FROM generate_series(1, 3) k"
        )
        await conn.execute(
            "INSERT INTO commands (id, vehicle, device_id, type, idempotency_key, requested_by, "
            "request_hash, on_unsafe, state, created_at, deadline, updated_at) VALUES "
            "('00000000-0000-0000-0000-000000000001', 1, 'dev-1', 'unlock', 'k', 'rental', 'h', "
            "'wait', 'sent', now(), now() + interval '1 min', now())"
        )
        await conn.execute(
            "INSERT INTO command_history (command_id, at, from_state, to_state) VALUES "
            "('00000000-0000-0000-0000-000000000001', now(), NULL, 'queued'), "
            "('00000000-0000-0000-0000-000000000001', now(), 'queued', 'sent')"
        )
    monkeypatch.undo()
    assert (await migrate(empty_pg_dsn, storage="native")).applied == [
        m.version for m in load_migrations() if m.name == "command_events"
    ]

    history = await fetch(empty_pg_dsn, "SELECT id, to_state FROM command_history ORDER BY id")
    assert [h["to_state"] for h in history] == ["queued", "sent"]
    events = await fetch(empty_pg_dsn, "SELECT max(id) AS id FROM events")
    assert history[0]["id"] > events[0]["id"]
    async with await psycopg.AsyncConnection.connect(empty_pg_dsn, autocommit=True) as conn:
        event = await (
            await conn.execute(
                "INSERT INTO events (time, vehicle, source, type) "
                "VALUES (now(), 1, 'device', 'crash') "
                "RETURNING id"
            )
        ).fetchone()
        note = await (
            await conn.execute(
                "INSERT INTO command_history (command_id, at, from_state, to_state) VALUES "
                "('00000000-0000-0000-0000-000000000001', now(), 'sent', 'sent') RETURNING id"
            )
        ).fetchone()
    assert history[-1]["id"] < event[0] < note[0]
