"""The delivery worker's queries: numbering committed events into the outbox, loading what a
subscription still has to receive, and recording attempts (docs/webhooks.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from psycopg.rows import dict_row

from outbound import OutboundEvent, outbound_type, render
from telemetry.store import TelemetryStore

# Rows whose transaction has ended (xid older than the oldest one running), after the cursor, in
# (xid, id) order: no row can appear behind them any more. One statement, so one snapshot.
_SETTLED_EVENTS = """
WITH horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
     cur AS (SELECT xid, id FROM outbox_cursor)
SELECT * FROM (
  (SELECT e.xid, e.id, e.source, e.type, (extract(epoch FROM e.time) * 1000)::bigint AS time_ms,
          e.vehicle, v.vehicle_ref, e.detail
   FROM events e JOIN vehicles v ON v.id = e.vehicle, horizon, cur
   WHERE (e.xid, e.id) > (cur.xid, cur.id) AND e.xid < horizon.xmin
   ORDER BY e.xid, e.id LIMIT %(limit)s)
  UNION ALL
  (SELECT h.xid, h.id, 'command', 'command_' || h.to_state,
          (extract(epoch FROM h.at) * 1000)::bigint, c.vehicle, v.vehicle_ref,
          jsonb_strip_nulls(jsonb_build_object(
            'command_id', c.id, 'command_type', c.type, 'requested_by', c.requested_by,
            'from_state', h.from_state, 'to_state', h.to_state, 'reason', h.reason,
            'detail', h.detail))
   FROM command_history h JOIN commands c ON c.id = h.command_id
   JOIN vehicles v ON v.id = c.vehicle, horizon, cur
   WHERE (h.xid, h.id) > (cur.xid, cur.id) AND h.xid < horizon.xmin
   ORDER BY h.xid, h.id LIMIT %(limit)s)
) AS u ORDER BY xid, id LIMIT %(limit)s"""

# The column arrays go as binary parameters (%b): psycopg writes a list of 1,000 rows' columns
# about three times faster in binary than as array text (4 against 13 us a row, measured
# 2026-12-06), the largest share of a recorded delivery's cost in the worker.
_INSERT_OUTBOX = """
INSERT INTO outbox (position, event_id, vehicle, type, time, body)
SELECT %b + o.n, o.event_id, o.vehicle, o.type, timestamptz 'epoch' + o.time_ms * interval '1 ms',
       o.body
FROM unnest(%b::int8[], %b::int4[], %b::text[], %b::int8[], %b::text[])
     WITH ORDINALITY AS o(event_id, vehicle, type, time_ms, body, n)"""

# What a subscription has still to receive after a position: outbox rows of its types without a
# final record, with the attempts of those waiting for a retry.
_TO_DELIVER = """
SELECT o.position, o.event_id, o.vehicle, o.type, o.body,
       extract(epoch FROM o.sequenced_at)::float8 AS sequenced_at,
       d.attempts, extract(epoch FROM d.first_attempt_at)::float8 AS first_attempt_at,
       extract(epoch FROM d.next_attempt_at)::float8 AS next_attempt_at
FROM outbox o
LEFT JOIN webhook_deliveries d ON d.subscription = %(sub)s AND d.position = o.position
WHERE o.position > %(after)s AND o.position <= %(through)s
  AND (%(types)s::text[] IS NULL OR o.type = ANY(%(types)s::text[]))
  AND (d.state IS NULL OR d.state = 'retrying')
ORDER BY o.position LIMIT %(limit)s"""

_RECORD = """
INSERT INTO webhook_deliveries AS d (subscription, position, event_id, vehicle, state, attempts,
    first_attempt_at, last_attempt_at, next_attempt_at, last_status, last_error)
SELECT r.sub, r.position, r.event_id, r.vehicle, r.state, r.attempts,
       to_timestamp(r.first_at), to_timestamp(r.last_at), to_timestamp(r.next_at), r.status,
       r.error
FROM unnest(%b::text[], %b::int8[], %b::int8[], %b::int4[], %b::text[], %b::int4[],
            %b::float8[], %b::float8[], %b::float8[], %b::int4[], %b::text[])
     AS r(sub, position, event_id, vehicle, state, attempts, first_at, last_at, next_at, status,
          error)
ON CONFLICT (subscription, position) DO UPDATE SET
  state = EXCLUDED.state, attempts = EXCLUDED.attempts,
  last_attempt_at = EXCLUDED.last_attempt_at, next_attempt_at = EXCLUDED.next_attempt_at,
  last_status = EXCLUDED.last_status, last_error = EXCLUDED.last_error"""


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    url: str
    secret: str
    event_types: list[str] | None
    enabled: bool
    revision: int
    resolved_through: int


class Attempt(NamedTuple):
    """One settled attempt to record (a tuple: one is made per delivery, and a frozen
    dataclass's __init__ costs several times more)."""

    subscription: str
    revision: int
    event: OutboundEvent
    state: str  # delivered, retrying, dead
    attempts: int
    first_attempt_at: float
    last_attempt_at: float
    next_attempt_at: float | None
    status: int | None
    error: str | None


class OutboxStore:
    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def sequence(self, limit: int = 5000) -> tuple[int, int]:
        """Number the events whose transactions have ended into the outbox (announced types
        only). Returns (rows read, highest outbox position)."""
        async with self._store.transaction() as cur:
            await cur.execute("SELECT xid, id FROM outbox_cursor FOR UPDATE")
            await cur.execute(_SETTLED_EVENTS, {"limit": limit})
            rows = await cur.fetchall()
            await cur.execute("SELECT coalesce(max(position), 0) FROM outbox")
            (top,) = await cur.fetchone()
            if not rows:
                return 0, top
            columns: tuple[list, ...] = ([], [], [], [], [])
            for _xid, event_id, source, stored_type, time_ms, vehicle, ref, detail in rows:
                name = outbound_type(source, stored_type, detail)
                if name is None:
                    continue
                data = detail if isinstance(detail, dict) else {"value": detail}
                body = render(event_id, name, time_ms, ref, data)
                for column, value in zip(
                    columns, (event_id, vehicle, name, time_ms, body.decode()), strict=True
                ):
                    column.append(value)
            if columns[0]:
                await cur.execute(_INSERT_OUTBOX, (top, *columns))
            last_xid, last_id = rows[-1][0], rows[-1][1]
            await cur.execute("UPDATE outbox_cursor SET xid = %s, id = %s", (last_xid, last_id))
            return len(rows), top + len(columns[0])

    async def subscriptions(self) -> list[SubscriptionRow]:
        async with self._store.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, url, secret, event_types, enabled, revision, resolved_through "
                "FROM webhook_subscriptions"
            )
            return [SubscriptionRow(**r) for r in await cur.fetchall()]

    async def to_deliver(
        self, sub: SubscriptionRow, after: int, through: int, limit: int
    ) -> list[dict[str, Any]]:
        async with self._store.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                _TO_DELIVER,
                {
                    "sub": sub.id,
                    "after": after,
                    "through": through,
                    "types": sub.event_types,
                    "limit": limit,
                },
            )
            return await cur.fetchall()

    async def record(
        self, attempts: list[Attempt], resolved: dict[str, tuple[int, int]], disabled: dict
    ) -> None:
        """Store settled attempts and how far each subscription is settled, in one transaction,
        for the subscriptions still at the revision they were loaded at (a replay or re-drive
        since then starts them over). resolved: {id: (revision, resolved_through)};
        disabled: {id: (revision, reason)} (a 410)."""
        ids = sorted({a.subscription for a in attempts} | set(resolved) | set(disabled))
        if not ids:
            return
        async with self._store.transaction() as cur:
            await cur.execute(
                "SELECT id, revision FROM webhook_subscriptions WHERE id = ANY(%s) "
                "ORDER BY id FOR SHARE",
                (ids,),
            )
            current = dict(await cur.fetchall())
            # The last attempt per event (a retry then its success, flushed together) is the
            # row's state: one insert may not touch a row twice.
            latest = {(a.subscription, a.event.position): a for a in attempts}
            kept = [a for a in latest.values() if current.get(a.subscription) == a.revision]
            if kept:
                await cur.execute(_RECORD, _record_columns(kept))
            moved = [(i, t) for i, (revision, t) in resolved.items() if current.get(i) == revision]
            if moved:
                # One statement for every subscription (a flush runs up to 20 times a second).
                await cur.execute(
                    "UPDATE webhook_subscriptions s SET resolved_through = m.through "
                    "FROM unnest(%b::text[], %b::int8[]) AS m(id, through) "
                    "WHERE s.id = m.id AND s.resolved_through <> m.through",
                    ([i for i, _ in moved], [t for _, t in moved]),
                )
            for sub_id, (revision, reason) in disabled.items():
                if current.get(sub_id) == revision:
                    await cur.execute(
                        "UPDATE webhook_subscriptions SET enabled = false, disabled_reason = %s, "
                        "updated_at = now(), revision = revision + 1 WHERE id = %s",
                        (reason, sub_id),
                    )

    async def prune(self, retention_s: float, chunk: int = 20_000) -> tuple[int, int]:
        """Delete what is older than retention_s and no longer needed: delivery records of
        delivered events, and outbox rows every enabled subscription has settled, but never an
        event that waits for a retry or is a dead letter (its re-drive needs the body). In
        transactions of at most `chunk` positions. Returns (outbox rows, records) deleted."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT (SELECT position FROM outbox WHERE sequenced_at >= now() - %s * "
                "interval '1 s' ORDER BY position LIMIT 1), "
                "(SELECT coalesce(max(position), 0) FROM outbox), "
                "(SELECT min(resolved_through) FROM webhook_subscriptions WHERE enabled), "
                "(SELECT coalesce(min(position), 1) FROM outbox)",
                (retention_s,),
            )
            young, top, settled, low = await cur.fetchone()
        through = (top if young is None else young - 1) if settled is None else settled
        if young is not None:
            through = min(through, young - 1)
        pruned = records = 0
        start = low
        while start <= through:
            end = min(through, start + chunk - 1)
            async with self._store.transaction() as cur:
                await cur.execute(
                    "DELETE FROM webhook_deliveries WHERE subscription = ANY(ARRAY("
                    "SELECT id FROM webhook_subscriptions)) AND position BETWEEN %s AND %s "
                    "AND state = 'delivered'",
                    (start, end),
                )
                records += cur.rowcount
                await cur.execute(
                    "DELETE FROM outbox o WHERE o.position BETWEEN %s AND %s AND NOT EXISTS "
                    "(SELECT 1 FROM webhook_deliveries d WHERE d.position = o.position "
                    "AND d.state <> 'delivered')",
                    (start, end),
                )
                pruned += cur.rowcount
            start = end + 1
        return pruned, records

    async def dead_letters(self) -> int:
        async with self._store.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM webhook_deliveries WHERE state = 'dead'")
            return (await cur.fetchone())[0]


def _record_columns(attempts: list[Attempt]) -> tuple[list, ...]:
    return (
        [a.subscription for a in attempts],
        [a.event.position for a in attempts],
        [a.event.event_id for a in attempts],
        [a.event.vehicle for a in attempts],
        [a.state for a in attempts],
        [a.attempts for a in attempts],
        [a.first_attempt_at for a in attempts],
        [a.last_attempt_at for a in attempts],
        [a.next_attempt_at for a in attempts],
        [a.status for a in attempts],
        [a.error for a in attempts],
    )


def outbound_event(row: dict[str, Any]) -> OutboundEvent:
    return OutboundEvent(
        row["position"],
        row["event_id"],
        row["vehicle"],
        row["type"],
        row["body"].encode(),
        row["sequenced_at"],
    )
