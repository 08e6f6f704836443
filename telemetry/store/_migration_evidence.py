"""The evidence of a migration's go-live gate (migration_evidence): what `migrate validate`,
`migrate signoff`, `migrate rehearse`, `migrate rollback`, `migrate failover-drill` and the load
evidence found, each a row with whether it passed and when. `migrate gate` reads them back; rows
are only added, never changed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncCursor

EVIDENCE_KINDS = ("parallel_run", "signoff", "rehearsal", "rollback", "failover_drill", "load")


@dataclass(frozen=True)
class MigrationEvidence:
    id: int
    kind: str
    batch: str | None
    passed: bool
    recorded_at: datetime
    detail: dict[str, Any]


def check_kind(kind: str) -> None:
    if kind not in EVIDENCE_KINDS:
        raise ValueError(
            f"unknown kind of migration evidence {kind!r}; known: {', '.join(EVIDENCE_KINDS)}"
        )


async def record(
    cur: AsyncCursor,
    kind: str,
    *,
    batch: str | None,
    passed: bool,
    detail: dict[str, Any],
    recorded_at: datetime | None,
) -> int:
    check_kind(kind)
    await cur.execute(
        "INSERT INTO migration_evidence (kind, batch, passed, recorded_at, detail) "
        "VALUES (%s, %s, %s, coalesce(%s, now()), %s) RETURNING id",
        (kind, batch, passed, recorded_at, orjson.dumps(detail).decode()),
    )
    (evidence,) = await cur.fetchone()
    return evidence


async def evidence(
    cur: AsyncCursor, kind: str | None, batch: str | None, limit: int
) -> list[MigrationEvidence]:
    if kind is not None:
        check_kind(kind)
    await cur.execute(
        "SELECT id, kind, batch, passed, recorded_at, detail FROM migration_evidence "
        "WHERE (%(kind)s::text IS NULL OR kind = %(kind)s) "
        "AND (%(batch)s::text IS NULL OR batch = %(batch)s) "
        "ORDER BY recorded_at DESC, id DESC LIMIT %(limit)s",
        {"kind": kind, "batch": batch, "limit": limit},
    )
    return [MigrationEvidence(*row) for row in await cur.fetchall()]
