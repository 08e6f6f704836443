"""Daily partitions of `positions` on native PostgreSQL: which exist, which are due, the DDL.

A partition covers one UTC day and is named positions_pYYYYMMDD. They are created from the
start of the retention window to a few days ahead, on demand for a day that has none, and
dropped once they lie wholly before the retention window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
from psycopg import AsyncCursor

DAY_MS = 86_400_000
AHEAD_DAYS = 3
# Serialises partition DDL and policy changes between gateway processes and migrations.
MAINTENANCE_LOCK = 0x666C_6770_0002
# Partition DDL takes an exclusive lock on `positions`; waiting in that lock's queue would stall
# every writer behind it, so give up quickly and try again later instead.
DDL_LOCK_TIMEOUT = "5s"

_NAME = re.compile(r"^positions_p(\d{8})$")


@dataclass
class PartitionChanges:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.created or self.dropped)


def partition_name(day: date) -> str:
    return f"positions_p{day:%Y%m%d}"


def days_of(time_ms: np.ndarray) -> list[date]:
    """The UTC days the given sample times fall on."""
    epoch = date(1970, 1, 1)
    return [epoch + timedelta(days=int(d)) for d in np.unique(np.asarray(time_ms) // DAY_MS)]


def due(existing: set[date], today: date, retention_days: int) -> tuple[list[date], list[date]]:
    """(days to create, days to drop) for the window [today - retention, today + AHEAD_DAYS].

    A day is dropped when its partition ends at or before the start of the window, i.e. none
    of its rows can still be inside the retention period.
    """
    first = today - timedelta(days=retention_days)
    wanted = {first + timedelta(days=i) for i in range(retention_days + AHEAD_DAYS + 1)}
    return sorted(wanted - existing), sorted(d for d in existing if d < first)


async def existing_days(cur: AsyncCursor) -> set[date]:
    await cur.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'positions'::regclass"
    )
    days = set()
    for (name,) in await cur.fetchall():
        m = _NAME.match(name)
        if m:
            days.add(datetime.strptime(m.group(1), "%Y%m%d").date())
    return days


async def apply(cur: AsyncCursor, create: list[date], drop: list[date]) -> PartitionChanges:
    """Create and drop partitions, inside the caller's transaction, under MAINTENANCE_LOCK.

    Re-reads what exists after taking the lock: another process may have done it meanwhile.
    """
    changes = PartitionChanges()
    if not create and not drop:
        return changes
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
    await cur.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
    existing = await existing_days(cur)
    for day in create:
        if day in existing:
            continue
        name = partition_name(day)
        lo = datetime.combine(day, time(), UTC)
        hi = lo + timedelta(days=1)
        await cur.execute(
            f"CREATE TABLE {name} PARTITION OF positions "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
        changes.created.append(name)
    for day in drop:
        if day not in existing:
            continue
        name = partition_name(day)
        await cur.execute(f"DROP TABLE {name}")
        changes.dropped.append(name)
    return changes


async def maintain(
    cur: AsyncCursor, retention_days: int, today: date | None = None
) -> PartitionChanges:
    """Bring the partitions in line with the window; only a catalog read when nothing is due."""
    today = today or datetime.now(UTC).date()
    create, drop = due(await existing_days(cur), today, retention_days)
    return await apply(cur, create, drop)
