"""The API's reads: vehicles with their status, tracks, events. SQL over the store's pool."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from telemetry.store import TRIP_FIGURE_COLUMNS, TelemetryStore

VEHICLE_COLUMNS = (
    "vehicle_ref",
    "device_id",
    "vehicle_type",
    "status",
    "online",
    "time",
    "lat",
    "lon",
    "fix_time",
    "speed_kmh",
    "heading_deg",
    "soc_pct",
    "range_m",
    "soh_pct",
    "aux_v",
    "aux_hours_to_threshold",
    "odometer_m",
    "locked",
    "ignition",
    "immobilised",
    "charging",
    "last_seen",
    "zones",
)
_VEHICLE_SELECT = (
    "SELECT vehicle, updated_at, " + ", ".join(VEHICLE_COLUMNS) + " FROM vehicle_overview"
)

BUCKETS = {
    "10s": timedelta(seconds=10),
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
}


async def vehicles(
    store: TelemetryStore,
    *,
    vehicle_type: str | None = None,
    status: str | None = None,
    online: bool | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    zone: str | None = None,
    after: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    box = None if bbox is None else (bbox[0], bbox[2], bbox[1], bbox[3])
    clause, params = _where(
        ("vehicle_type = %s", vehicle_type),
        ("status = %s", status),
        ("online = %s", online),
        ("lon BETWEEN %s AND %s AND lat BETWEEN %s AND %s", box),
        ("%s = ANY(zones)", zone),
        ("vehicle_ref > %s", after),
    )
    query = _VEHICLE_SELECT + clause + " ORDER BY vehicle_ref LIMIT %s"
    return await _fetch(store, query, [*params, limit])


async def vehicle(store: TelemetryStore, vehicle_ref: str) -> dict[str, Any] | None:
    rows = await _fetch(store, _VEHICLE_SELECT + " WHERE vehicle_ref = %s", [vehicle_ref])
    return rows[0] if rows else None


async def vehicles_by_id(store: TelemetryStore, ids: list[int]) -> list[dict[str, Any]]:
    return await _fetch(store, _VEHICLE_SELECT + " WHERE vehicle = ANY(%s)", [ids])


async def changed_vehicles(store: TelemetryStore, since: datetime) -> list[dict[str, Any]]:
    """Vehicles whose state changed since `since` (the live feed's poll)."""
    return await _fetch(store, _VEHICLE_SELECT + " WHERE updated_at > %s", [since])


async def track(
    store: TelemetryStore,
    vehicle: int,
    start: datetime,
    end: datetime,
    bucket: str,
    max_points: int,
    *,
    include_implausible: bool = False,
) -> list[dict[str, Any]]:
    """Raw samples or one point per bucket; `implausible` counts a point's samples flagged
    implausible_jump (positions.flags & 1), which raw points leave out unless asked for."""
    if bucket == "raw":
        query = (
            "SELECT time AS t, lat, lon, speed_kmh, soc_pct, 1 AS samples, "
            "flags & 1 AS implausible FROM positions "
            "WHERE vehicle = %s AND time >= %s AND time < %s"
            + ("" if include_implausible else " AND (flags & 1) = 0")
            + " ORDER BY time LIMIT %s"
        )
        return await _fetch(store, query, [vehicle, start, end, max_points])
    # date_bin works on both storage paths (TimescaleDB's time_bucket gives the same buckets).
    query = (
        "SELECT date_bin(%s, time, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS t, "
        "(array_agg(lat ORDER BY time DESC) FILTER (WHERE lat IS NOT NULL AND flags = 0))[1] "
        "AS lat, "
        "(array_agg(lon ORDER BY time DESC) FILTER (WHERE lat IS NOT NULL AND flags = 0))[1] "
        "AS lon, avg(speed_kmh) AS speed_kmh, "
        "(array_agg(soc_pct ORDER BY time DESC) FILTER (WHERE soc_pct IS NOT NULL))[1] "
        "AS soc_pct, count(*) AS samples, count(*) FILTER (WHERE (flags & 1) = 1) AS implausible "
        "FROM positions WHERE vehicle = %s AND time >= %s AND time < %s "
        "GROUP BY 1 ORDER BY 1 LIMIT %s"
    )
    return await _fetch(store, query, [BUCKETS[bucket], vehicle, start, end, max_points])


# A command's state changes are events of source "command", type "command_<new state>", read
# from command_history: its ids come from the events' sequence (migration 0013), so one id orders
# and pages both.
_COMMAND_EVENTS = (
    "SELECT h.id, h.at AS time, v.vehicle_ref, 'command' AS source, "
    "'command_' || h.to_state AS type, jsonb_strip_nulls(jsonb_build_object("
    "'command_id', c.id, 'command_type', c.type, 'requested_by', c.requested_by, "
    "'from_state', h.from_state, 'to_state', h.to_state, 'reason', h.reason, "
    "'detail', h.detail)) AS detail, h.at AS received_at "
    "FROM command_history h JOIN commands c ON c.id = h.command_id "
    "JOIN vehicles v ON v.id = c.vehicle"
)


# Commit order for paging (/v1/events?after=): ids are taken when a row is inserted, not when
# it commits, so a reader going by id skips a smaller id whose transaction commits after a larger
# one was read. Each row records its transaction's id (xid8, migration 0030): a page holds only
# rows whose transaction ended before the oldest one still running began (xid below the snapshot's
# xmin), in (xid, id) order after the cursor's (xid, id). A row committing later has an xid at or
# above that horizon, so it sorts after every row already handed out. Rows stored before 0030
# have no xid and come first (as xid 0), in id order.
_HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"
_CURSOR = """
SELECT coalesce((SELECT coalesce(xid, '0') FROM events WHERE id = %(after)s),
                (SELECT coalesce(xid, '0') FROM command_history WHERE id = %(after)s),
                '0') AS xid"""


async def events(
    store: TelemetryStore,
    *,
    vehicle: int | None = None,
    type: str | None = None,
    source: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    after: int | None = None,
    limit: int = 100,
    commit_ordered: bool = False,
) -> list[dict[str, Any]]:
    """Stored events and command state changes, in id order (one query, each part ordered and
    limited on its own index before they are merged). commit_ordered: in commit order, after
    the event `after` in that order, only events no transaction still running can precede: what
    a client paging with the last id it saw never skips (the comment above)."""
    if commit_ordered:
        order, key = "coalesce({t}.xid, '0'), {t}.id", "coalesce({t}.xid, '0') AS xid, "
        cursor = "(coalesce({t}.xid, '0'), {t}.id) > ((SELECT xid FROM cur), %s)"
        settled = f"({{t}}.xid IS NULL OR {{t}}.xid < {_HORIZON})"
    else:
        order, key, cursor, settled = "{t}.id", "", "{t}.id > %s", None
    parts, params = [], []
    if source != "command":
        clause, args = _where(
            ("e.vehicle = %s", vehicle),
            ("e.type = %s", type),
            ("e.source = %s", source),
            ("e.time >= %s", start),
            ("e.time < %s", end),
            (cursor.format(t="e"), after),
            (settled and settled.format(t="e"), () if settled else None),
        )
        parts.append(
            "(SELECT "
            + key.format(t="e")
            + "e.id, e.time, v.vehicle_ref, e.source, e.type, e.detail, "
            "e.received_at FROM events e JOIN vehicles v ON v.id = e.vehicle"
            + clause
            + f" ORDER BY {order.format(t='e')} LIMIT %s)"
        )
        params += [*args, limit]
    if source in (None, "command") and (type is None or type.startswith("command_")):
        clause, args = _where(
            ("c.vehicle = %s", vehicle),
            ("h.to_state = %s", type and type[len("command_") :]),
            ("h.at >= %s", start),
            ("h.at < %s", end),
            (cursor.format(t="h"), after),
            (settled and settled.format(t="h"), () if settled else None),
        )
        select = _COMMAND_EVENTS.replace("SELECT ", "SELECT " + key.format(t="h"), 1)
        parts.append("(" + select + clause + f" ORDER BY {order.format(t='h')} LIMIT %s)")
        params += [*args, limit]
    if not parts:  # source "command" with a type no command event has
        return []
    union = " UNION ALL ".join(parts)
    if not commit_ordered:
        query = "SELECT * FROM (" + union + ") AS u ORDER BY id LIMIT %s"
        return await _fetch(store, query, [*params, limit])
    query = (
        "WITH cur AS (" + _CURSOR.replace("%(after)s", "%s") + ") "
        "SELECT * FROM (" + union + ") AS u ORDER BY xid, id LIMIT %s"
    )
    rows = await _fetch(store, query, [after or 0, after or 0, *params, limit])
    for row in rows:
        del row["xid"]
    return rows


async def latest_event_id(store: TelemetryStore) -> int:
    rows = await _fetch(
        store,
        "SELECT greatest((SELECT max(id) FROM events), "
        "(SELECT max(id) FROM command_history), 0) AS id",
        [],
    )
    return rows[0]["id"]


async def vehicle_id(store: TelemetryStore, vehicle_ref: str) -> int | None:
    rows = await _fetch(store, "SELECT id FROM vehicles WHERE vehicle_ref = %s", [vehicle_ref])
    return rows[0]["id"] if rows else None


def _where(*conditions: tuple[str, Any]) -> tuple[str, list]:
    """ " WHERE c1 AND c2 ..." and its parameters, from the (condition, value) pairs whose value
    is not None (a tuple value fills as many placeholders); "" when none is."""
    where, params = [], []
    for condition, value in conditions:
        if value is not None:
            where.append(condition)
            params.extend(value if isinstance(value, tuple) else (value,))
    return (" WHERE " + " AND ".join(where) if where else ""), params


async def _fetch(
    store: TelemetryStore, query: str | sql.Composable, params: list | dict
) -> list[dict[str, Any]]:
    async with store.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
        return await cur.fetchall()


# --- usage per booking (unlock -> lock) ---------------------------------------------------------

_SESSIONS = """
WITH acts AS (
    SELECT id, type, coalesce(device_t, finished_at) AS at FROM commands
    WHERE vehicle = %(vehicle)s AND state = 'succeeded' AND type IN ('unlock', 'lock')
      AND coalesce(device_t, finished_at) < %(end)s
      AND coalesce(device_t, finished_at) >= %(start)s - interval '7 days'
), paired AS (
    SELECT id, type, at, lead(id) OVER w AS next_id, lead(type) OVER w AS next_type,
           lead(at) OVER w AS next_at
    FROM acts WINDOW w AS (ORDER BY at, id)
)
SELECT id AS unlock_command, at AS started_at,
       CASE WHEN next_type = 'lock' THEN next_id END AS lock_command,
       CASE WHEN next_type = 'lock' THEN next_at END AS ended_at,
       next_type = 'unlock' AS unlocked_again
FROM paired
WHERE type = 'unlock' AND at >= %(start)s AND at < %(end)s
   OR type = 'unlock' AND at < %(start)s AND (next_type = 'lock' AND next_at >= %(start)s)
ORDER BY at"""


async def usage_sessions(
    store: TelemetryStore, vehicle: int, start: datetime, end: datetime, unlock_command: Any = None
) -> list[dict[str, Any]]:
    """Rides between an unlock and the following lock that overlap [start, end)."""
    rows = await _fetch(store, _SESSIONS, {"vehicle": vehicle, "start": start, "end": end})
    if unlock_command is not None:
        rows = [r for r in rows if r["unlock_command"] == unlock_command]
    return rows


async def samples_between(
    store: TelemetryStore, vehicle: int, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    return await _fetch(
        store,
        (
            "SELECT time, lat, lon, odometer_m, soc_pct, pack_v, pack_a, flags FROM positions "
            "WHERE vehicle = %s AND time >= %s AND time <= %s ORDER BY time LIMIT 200000"
        ),
        [vehicle, start, end],
    )


# A trip as the API and its CSV show it: who and when, then the measurer's figures (one list,
# kept by the store), then when they were measured.
TRIP_COLUMNS = (
    "id",
    "vehicle_ref",
    "vehicle_type",
    "status",
    "revision",
    "started_at",
    "ended_at",
    *TRIP_FIGURE_COLUMNS,
    "measured_at",
)
_TRIP_SELECT = (
    "SELECT t.vehicle, "
    + ", ".join(
        f"v.{c}" if c in ("vehicle_ref", "vehicle_type") else f"t.{c}" for c in TRIP_COLUMNS
    )
    + " FROM trips t JOIN vehicles v ON v.id = t.vehicle"
)


async def trips(
    store: TelemetryStore,
    *,
    vehicle: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    status: str | None = None,
    after: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Trips started in [start, end), in id order (which is the order they started in)."""
    clause, params = _where(
        ("t.vehicle = %s", vehicle),
        ("t.started_at >= %s", start),
        ("t.started_at < %s", end),
        ("t.status = %s", status),
        ("t.id > %s", after),
    )
    return await _fetch(store, _TRIP_SELECT + clause + " ORDER BY t.id LIMIT %s", [*params, limit])


async def trip(store: TelemetryStore, trip_id: int) -> dict[str, Any] | None:
    rows = await _fetch(store, _TRIP_SELECT + " WHERE t.id = %s", [trip_id])
    return rows[0] if rows else None
