"""The outbox's numbering against the classic trap: ids are taken before commit, so a reader by
id skips a row that commits later with a smaller id. The outbox numbers a row only once its
transaction has ended, and never skips or reorders one vehicle's events."""

import asyncio
import random

import psycopg
import pytest

from gateway.webhooks.store import OutboxStore
from telemetry.store import TelemetryStore
from tests.harness import eventually, register

pytestmark = pytest.mark.integration

_INSERT = (
    "INSERT INTO events (time, vehicle, source, type, detail) "
    "VALUES (now() + %s * interval '1 ms', %s, 'geofence', 'zone_enter', %s) RETURNING id"
)


async def _outbox(dsn: str) -> list[tuple[int, int, int, str]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT position, event_id, vehicle, type FROM outbox ORDER BY 1")
        return await cur.fetchall()


async def test_a_smaller_id_committing_later_is_numbered_not_skipped(pg_dsn):
    ids = await register(pg_dsn, [("ob-1", "OB-1", "ebike"), ("ob-2", "OB-2", "ebike")])
    v1, v2 = ids["ob-1"], ids["ob-2"]
    store = await TelemetryStore.open(pg_dsn)
    outbox = OutboxStore(store)
    slow = await psycopg.AsyncConnection.connect(pg_dsn)
    fast = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
    try:
        async with slow.transaction():
            small = (await (await slow.execute(_INSERT, (1, v1, None))).fetchone())[0]
            big = (await (await fast.execute(_INSERT, (2, v2, None))).fetchone())[0]
            assert small < big
            # The fast one committed, but the slow one may still commit with a smaller id.
            assert await outbox.sequence() == (0, 0)
            assert await _outbox(pg_dsn) == []

        async def both_numbered() -> bool:  # other sessions' open transactions may delay it
            await outbox.sequence()
            return len(await _outbox(pg_dsn)) == 2

        await eventually(both_numbered, timeout=120, what="both events numbered")
        rows = await _outbox(pg_dsn)
        assert [r[1] for r in rows] == [small, big]
        assert [r[0] for r in rows] == [1, 2]
        assert {r[3] for r in rows} == {"geofence.zone_enter"}
        assert await outbox.sequence() == (0, 2)  # numbered once
    finally:
        await slow.close()
        await fast.close()
        await store.close()


async def test_concurrent_writers_every_committed_event_once_in_commit_order(pg_dsn):
    """Writers commit in random order while the worker numbers; aborted ones never appear."""
    vehicles = await register(pg_dsn, [(f"cw-{i}", f"CW-{i}", "ebike") for i in range(6)])
    store = await TelemetryStore.open(pg_dsn)
    outbox = OutboxStore(store)
    committed: dict[int, list[int]] = {v: [] for v in vehicles.values()}
    rng = random.Random(20)
    writing = True

    async def writer(vehicle: int) -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            for n in range(40):
                async with conn.transaction(force_rollback=(n % 7 == 3)) as tx:
                    cur = await conn.execute(_INSERT, (n, vehicle, None))
                    event_id = (await cur.fetchone())[0]
                    await asyncio.sleep(rng.random() * 0.01)
                    if tx.force_rollback:
                        continue
                committed[vehicle].append(event_id)

    async def numberer() -> None:
        while writing:
            await outbox.sequence(limit=7)  # small pages: the cursor is exercised too
            await asyncio.sleep(0.001)

    try:
        numbering = asyncio.create_task(numberer())
        await asyncio.gather(*(writer(v) for v in vehicles.values()))
        writing = False
        await numbering
        expected = sum(len(ids) for ids in committed.values())

        async def all_numbered() -> bool:
            # A transaction open anywhere on the server (another test session) holds the
            # numbering back until it ends: wait for it rather than assume.
            await outbox.sequence(limit=7)
            return len(await _outbox(pg_dsn)) >= expected

        await eventually(all_numbered, timeout=120, what="every committed event numbered")
        rows = await _outbox(pg_dsn)
    finally:
        await store.close()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))  # no gap in the numbering
    assert sorted(r[1] for r in rows) == sorted(e for ids in committed.values() for e in ids)
    for vehicle, ids in committed.items():
        assert [r[1] for r in rows if r[2] == vehicle] == ids  # that vehicle's commit order


async def test_prune_deletes_old_delivered_records_and_settled_outbox_rows_only(pg_dsn):
    """Retention (FLEETGATE_WEBHOOK_RETENTION_S): old delivered records and the outbox rows
    every enabled subscription has settled go; a dead letter, a young row and one a
    subscription has not settled stay."""
    from telemetry.store import Webhooks
    from tests.webhook_events import write_zone_events

    ids = await register(pg_dsn, [("pr-1", "PR-1", "ebike")])
    store = await TelemetryStore.open(pg_dsn)
    outbox = OutboxStore(store)
    try:
        await write_zone_events(store, [ids["pr-1"]], per_vehicle=5)

        async def numbered() -> bool:
            await outbox.sequence()
            return len(await _outbox(pg_dsn)) == 5

        await eventually(numbered, timeout=120, what="five events numbered")
        sub = await Webhooks(store).create("http://127.0.0.1:9/x", None, "prune", "s")
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(
                "UPDATE webhook_subscriptions SET resolved_through = 4 WHERE id = %s", (sub.id,)
            )
            await conn.execute(
                "UPDATE outbox SET sequenced_at = now() - interval '2 days' WHERE position <= 3"
            )
            for position, state in (
                (1, "delivered"),
                (2, "dead"),
                (3, "delivered"),
                (4, "delivered"),
            ):
                await conn.execute(
                    "INSERT INTO webhook_deliveries (subscription, position, event_id, vehicle, "
                    "state, attempts, first_attempt_at, last_attempt_at) SELECT %s, position, "
                    "event_id, vehicle, %s, 1, now(), now() FROM outbox WHERE position = %s",
                    (sub.id, state, position),
                )

            async def kept() -> tuple[list[int], list[tuple[int, str]]]:
                rows = await (
                    await conn.execute("SELECT position FROM outbox ORDER BY 1")
                ).fetchall()
                records = await (
                    await conn.execute("SELECT position, state FROM webhook_deliveries ORDER BY 1")
                ).fetchall()
                return [r[0] for r in rows], records

            assert await outbox.prune(86400.0) == (2, 2)  # 1 and 3: old, delivered, settled
            assert await kept() == ([2, 4, 5], [(2, "dead"), (4, "delivered")])
            assert await outbox.prune(86400.0) == (0, 0)
            # Everything old: the settled delivered one goes, the unsettled one stays.
            assert await outbox.prune(0.000001) == (1, 1)
            assert await kept() == ([2, 5], [(2, "dead")])
    finally:
        await store.close()


async def test_record_moves_the_settled_point_of_subscriptions_still_at_their_revision(pg_dsn):
    from outbound import new_secret
    from telemetry.store import Webhooks

    store = await TelemetryStore.open(pg_dsn)
    try:
        hooks = Webhooks(store)
        subs = [
            await hooks.create("http://127.0.0.1:9/h", None, "", new_secret()) for _ in range(3)
        ]
        outbox = OutboxStore(store)
        rows = {r.id: r for r in await outbox.subscriptions()}
        first, second, changed = (rows[s.id] for s in subs)
        await outbox.record(
            [],
            {
                first.id: (first.revision, first.resolved_through + 7),
                second.id: (second.revision, second.resolved_through + 3),
                changed.id: (changed.revision - 1, changed.resolved_through + 5),  # stale
            },
            {},
        )
        after = {r.id: r.resolved_through for r in await outbox.subscriptions()}
        assert after == {
            first.id: first.resolved_through + 7,
            second.id: second.resolved_through + 3,
            changed.id: changed.resolved_through,
        }
    finally:
        await store.close()
