"""The go-live evidence table against the real database: recorded with the database's time or a
given one, read back newest first by kind and batch, an unknown kind refused with nothing
written, and the table's CHECK refusing an unknown kind written past the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from telemetry.store import EVIDENCE_KINDS, MigrationEvidence, TelemetryStore
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration


async def test_evidence_is_recorded_and_read_back_newest_first_by_kind_and_batch(pg_dsn):
    store = await TelemetryStore.open(pg_dsn)
    try:
        now = datetime.now(UTC)
        old = await store.record_migration_evidence(
            "parallel_run",
            batch="berlin-1",
            passed=False,
            detail={"percent": 10.0, "days": 3.0, "colours": {"position": "red"}},
            recorded_at=now - timedelta(days=20),
        )
        new = await store.record_migration_evidence(
            "parallel_run",
            batch="berlin-1",
            passed=True,
            detail={"percent": 12.5, "days": 14.5, "colours": {"position": "green"}},
        )
        other = await store.record_migration_evidence(
            "parallel_run", batch="hamburg", passed=True, detail={}
        )
        drill = await store.record_migration_evidence(
            "failover_drill",
            batch=None,
            passed=True,
            detail={"takeover_s": 4.2},
            recorded_at=now - timedelta(days=1),
        )
        assert len({old, new, other, drill}) == 4

        berlin = await store.migration_evidence("parallel_run", "berlin-1")
        assert [e.id for e in berlin] == [new, old]
        assert isinstance(berlin[0], MigrationEvidence)
        assert berlin[0].passed and not berlin[1].passed
        assert berlin[0].detail == {
            "percent": 12.5,
            "days": 14.5,
            "colours": {"position": "green"},
        }
        assert berlin[0].recorded_at.tzinfo is not None
        assert abs(berlin[0].recorded_at - now) < timedelta(minutes=1), "the database's now()"
        assert berlin[1].recorded_at == now - timedelta(days=20)

        everything = await store.migration_evidence()
        assert [e.id for e in everything][:2] in ([new, other], [other, new])
        assert [e.id for e in everything][2:] == [drill, old]
        assert [e.kind for e in await store.migration_evidence(batch="hamburg")] == ["parallel_run"]
        drills = await store.migration_evidence("failover_drill")
        assert [(e.id, e.batch, e.detail) for e in drills] == [(drill, None, {"takeover_s": 4.2})]
        assert len(await store.migration_evidence(limit=1)) == 1
        assert await store.migration_evidence("signoff") == []
    finally:
        await store.close()


async def test_an_unknown_kind_is_refused_and_nothing_is_written(pg_dsn):
    store = await TelemetryStore.open(pg_dsn)
    try:
        with pytest.raises(ValueError, match="unknown kind of migration evidence 'parallel'"):
            await store.record_migration_evidence("parallel", batch="b", passed=True, detail={})
        with pytest.raises(ValueError, match="unknown kind"):
            await store.migration_evidence("sign-off")
        assert await fetch(pg_dsn, "SELECT * FROM migration_evidence") == []
    finally:
        await store.close()
    assert set(EVIDENCE_KINDS) == {
        "parallel_run",
        "signoff",
        "rehearsal",
        "rollback",
        "failover_drill",
        "load",
    }
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            await conn.execute(
                "INSERT INTO migration_evidence (kind, passed) VALUES ('parallel', true)"
            )
