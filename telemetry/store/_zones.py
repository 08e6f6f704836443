"""The zones table and the zone set's version: what the geofence core is built from.

The store writes zones as plain rows (the geofence core validates them first, in the API and the
CLI); a trigger bumps zone_set.version on every change, which gateways poll to swap zone sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncCursor
from psycopg.rows import dict_row

ZONE_COLUMNS = ("id", "name", "kind", "geometry", "rules", "priority", "start", "end")
_SELECT = (
    'SELECT id, name, kind, geometry, rules, priority, start, "end", updated_at '
    "FROM zones ORDER BY priority, id"
)
_UPSERT = """
INSERT INTO zones (id, name, kind, geometry, rules, priority, start, "end")
VALUES (%(id)s, %(name)s, %(kind)s, %(geometry)s::jsonb, %(rules)s::jsonb, %(priority)s,
        %(start)s, %(end)s)
ON CONFLICT (id) DO UPDATE SET
  name = EXCLUDED.name, kind = EXCLUDED.kind, geometry = EXCLUDED.geometry,
  rules = EXCLUDED.rules, priority = EXCLUDED.priority, start = EXCLUDED.start,
  "end" = EXCLUDED."end", updated_at = now()"""


@dataclass(frozen=True)
class ZoneRows:
    """The zones table as the geofence core reads it (ZoneSet.from_rows)."""

    version: int
    rows: list[dict[str, Any]]
    global_rules: list[dict[str, Any]]


async def version(cur: AsyncCursor) -> int:
    await cur.execute("SELECT version FROM zone_set")
    return (await cur.fetchone())[0]


async def load(cur: AsyncCursor) -> ZoneRows:
    # One snapshot for the rows and the version they belong to.
    await cur.execute("SELECT version, global_rules FROM zone_set")
    v, global_rules = await cur.fetchone()
    dict_cur = cur.connection.cursor(row_factory=dict_row)
    await dict_cur.execute(_SELECT)
    return ZoneRows(v, await dict_cur.fetchall(), global_rules)


def _params(row: dict[str, Any]) -> dict[str, Any]:
    missing = [c for c in ("id", "geometry") if row.get(c) is None]
    if missing:
        raise ValueError(f"zone row lacks {', '.join(missing)}")
    p = {c: row.get(c) for c in ZONE_COLUMNS}
    p["name"] = p["name"] or ""
    p["kind"] = str(p["kind"] or "other")
    p["priority"] = p["priority"] or 0
    p["geometry"] = orjson.dumps(p["geometry"]).decode()
    p["rules"] = orjson.dumps(p["rules"] or []).decode()
    return p


async def put(cur: AsyncCursor, rows: list[dict[str, Any]]) -> None:
    if rows:
        await cur.executemany(_UPSERT, [_params(r) for r in rows])


async def replace(
    cur: AsyncCursor, rows: list[dict[str, Any]], global_rules: list[dict[str, Any]]
) -> None:
    """Make the zone set exactly these zones and global rules (one version step)."""
    ids = [r["id"] for r in rows]
    await cur.execute("DELETE FROM zones WHERE NOT (id = ANY(%s))", (ids,))
    await put(cur, rows)
    await cur.execute(
        "UPDATE zone_set SET global_rules = %s::jsonb", (orjson.dumps(global_rules).decode(),)
    )


async def delete(cur: AsyncCursor, zone_id: str) -> bool:
    await cur.execute("DELETE FROM zones WHERE id = %s", (zone_id,))
    return cur.rowcount > 0
