"""Webhook subscriptions and their delivery records (docs/webhooks.md): what the API and the CLI
change and read. The delivery worker's own queries are in gateway/webhooks/store.py; the event
types and URLs are checked by the callers (outbound's catalogue, the API's URL check)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

if TYPE_CHECKING:
    from telemetry.store._store import TelemetryStore

_COLUMNS = (
    "id, url, description, event_types, enabled, disabled_reason, created_at, updated_at, "
    "resolved_through"
)


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    description: str
    event_types: list[str] | None  # None: every type
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    resolved_through: int


class UnknownSubscription(LookupError):
    pass


class UnknownOutboxEvent(LookupError):
    """Replay from an event id the outbox does not hold (never announced, or not yet numbered)."""


class Webhooks:
    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def create(
        self, url: str, event_types: list[str] | None, description: str, secret: str
    ) -> Subscription:
        """A new subscription, delivering what enters the outbox from now on."""
        sub_id = "wh_" + secrets.token_hex(8)
        async with self._store.transaction() as cur:
            cur.row_factory = dict_row
            await cur.execute(
                "INSERT INTO webhook_subscriptions (id, url, description, event_types, secret, "
                "resolved_through) VALUES (%s, %s, %s, %s, %s, "
                "(SELECT coalesce(max(position), 0) FROM outbox)) RETURNING " + _COLUMNS,
                (sub_id, url, description, event_types, secret),
            )
            return Subscription(**await cur.fetchone())

    async def list(self) -> list[Subscription]:
        async with self._store.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {_COLUMNS} FROM webhook_subscriptions ORDER BY created_at")
            return [Subscription(**r) for r in await cur.fetchall()]

    async def get(self, sub_id: str) -> Subscription:
        async with self._store.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM webhook_subscriptions WHERE id = %s", (sub_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise UnknownSubscription(sub_id)
        return Subscription(**row)

    async def update(self, sub_id: str, changes: dict[str, Any]) -> Subscription:
        """changes: some of url, description, event_types (None: all), enabled. Enabling clears
        the reason it was disabled for; the worker reloads the subscription."""
        allowed = {"url", "description", "event_types", "enabled"}
        if set(changes) - allowed:
            raise ValueError(f"only {', '.join(sorted(allowed))} can change")
        sets = [f"{name} = %({name})s" for name in changes]
        if changes.get("enabled"):
            sets.append("disabled_reason = NULL")
        sets += ["updated_at = now()", "revision = revision + 1"]
        async with self._store.transaction() as cur:
            cur.row_factory = dict_row
            await cur.execute(
                f"UPDATE webhook_subscriptions SET {', '.join(sets)} WHERE id = %(id)s "
                f"RETURNING {_COLUMNS}",
                {**changes, "id": sub_id},
            )
            row = await cur.fetchone()
        if row is None:
            raise UnknownSubscription(sub_id)
        return Subscription(**row)

    async def delete(self, sub_id: str) -> None:
        async with self._store.transaction() as cur:
            await cur.execute("DELETE FROM webhook_subscriptions WHERE id = %s", (sub_id,))
            if not cur.rowcount:
                raise UnknownSubscription(sub_id)

    async def replay(self, sub_id: str, from_event_id: int) -> int:
        """Deliver again every event from from_event_id on (in outbox order); returns how many
        outbox events that is. Their delivery records start over."""
        async with self._store.transaction() as cur:
            # The first position of an event at or after it: in commit order, an event with a
            # larger id may have been numbered before it, and is replayed too.
            await cur.execute(
                "SELECT min(position) FROM outbox WHERE event_id >= %s", (from_event_id,)
            )
            (position,) = await cur.fetchone()
            if position is None:
                raise UnknownOutboxEvent(from_event_id)
            await cur.execute(
                "UPDATE webhook_subscriptions SET resolved_through = %s, "
                "revision = revision + 1, updated_at = now() WHERE id = %s",
                (position - 1, sub_id),
            )
            if not cur.rowcount:
                raise UnknownSubscription(sub_id)
            await cur.execute(
                "DELETE FROM webhook_deliveries WHERE subscription = %s AND position >= %s",
                (sub_id, position),
            )
            await cur.execute("SELECT count(*) FROM outbox WHERE position >= %s", (position,))
            return (await cur.fetchone())[0]

    async def redrive(self, sub_id: str, event_ids: list[int] | None = None) -> int:
        """Put dead letters (all, or those of event_ids) back to delivery; returns how many."""
        async with self._store.transaction() as cur:
            await cur.execute(
                "SELECT 1 FROM webhook_subscriptions WHERE id = %s FOR UPDATE", (sub_id,)
            )
            if await cur.fetchone() is None:
                raise UnknownSubscription(sub_id)
            await cur.execute(
                "UPDATE webhook_deliveries SET state = 'retrying', next_attempt_at = now() "
                "WHERE subscription = %s AND state = 'dead' "
                "AND (%s::bigint[] IS NULL OR event_id = ANY(%s::bigint[])) RETURNING position",
                (sub_id, event_ids, event_ids),
            )
            positions = [p for (p,) in await cur.fetchall()]
            if positions:
                await cur.execute(
                    "UPDATE webhook_subscriptions SET resolved_through = "
                    "least(resolved_through, %s), revision = revision + 1, updated_at = now() "
                    "WHERE id = %s",
                    (min(positions) - 1, sub_id),
                )
            return len(positions)

    async def deliveries(
        self, sub_id: str, *, state: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The subscription's delivery records, newest position first."""
        await self.get(sub_id)
        async with self._store.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT d.position, d.event_id, o.type, v.vehicle_ref, d.state, d.attempts, "
                "d.first_attempt_at, d.last_attempt_at, d.next_attempt_at, d.last_status, "
                "d.last_error FROM webhook_deliveries d "
                "JOIN outbox o ON o.position = d.position "
                "JOIN vehicles v ON v.id = d.vehicle "
                "WHERE d.subscription = %s AND (%s::text IS NULL OR d.state = %s) "
                "AND (%s::bigint IS NULL OR d.position < %s) ORDER BY d.position DESC LIMIT %s",
                (sub_id, state, state, before, before, limit),
            )
            return await cur.fetchall()
