"""The commands' PostgreSQL layer on a fresh migrated database: one row per idempotency key,
guarded state changes with their history, paging, and the snapshots the interlocks read."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from unittest.mock import ANY

import psycopg
import pytest

from commands import Command, CommandState, CommandType, machine
from commands._time import from_ms, utc_now
from commands.model import DeviceResult
from gateway.commands import CommandConflict, CommandStore
from gateway.commands.store import _insert_many_sql, _insert_sql, _numbered, _update_sql
from telemetry.store import StoreUnavailable
from tests.harness import register

pytestmark = pytest.mark.integration

S = CommandState


def new(vehicle: int, type_: str = "unlock", key: str | None = None, **kw) -> Command:
    now = utc_now()
    fields = dict(
        id=uuid.uuid4(),
        vehicle_id=vehicle,
        vehicle_ref=f"veh-{vehicle}",
        device_id=f"dev-{vehicle}",
        type=CommandType(type_),
        params={},
        idempotency_key=key or uuid.uuid4().hex,
        requested_by="rental",
        request_hash="h",
        on_unsafe="wait",
        created_at=now,
        deadline=now + timedelta(seconds=60),
        updated_at=now,
    )
    fields.update(kw)
    return Command(**fields)


@pytest.fixture
async def store(pg_dsn):
    ids = await register(pg_dsn, [("dev-a", "veh-a", "car"), ("dev-b", "veh-b", "ebike")])
    s = await CommandStore.open(pg_dsn)
    s.ids = ids
    yield s
    await s.close()


async def test_an_idempotency_key_makes_one_row_per_caller(store):
    a = store.ids["dev-a"]
    first = await _insert(store, new(a, key="k1"))
    assert first.seq is not None
    assert await _insert(store, new(a, key="k1")) is None
    assert (await store.find("rental", "k1")).id == first.id
    other = await _insert(store, new(a, key="k1", requested_by="billing"))
    assert other is not None and other.id != first.id
    assert [e.to_state for e in await store.history(first.id)] == [S.QUEUED]


async def _insert(store, cmd):
    async with store.transaction() as tx:
        await tx.insert(cmd, [machine.created(cmd)])
    return (await tx.inserted())[0]


async def test_changes_are_guarded_by_the_state_they_leave_and_recorded_in_order(store):
    cmd = await _insert(store, new(store.ids["dev-a"]))
    now = utc_now()
    sent = machine.transition(cmd, S.SENT, now)
    acked = machine.transition(sent[0], S.ACKNOWLEDGED, now + timedelta(milliseconds=5))
    done = machine.apply_result(
        acked[0],
        DeviceResult(id=cmd.id, status="succeeded", t=1_764_412_801_456),
        now + timedelta(milliseconds=9),
    )
    async with store.transaction() as tx:
        await tx.write([sent, acked, done])
    stored = await store.get(cmd.id)
    assert (stored.state, stored.attempts, stored.device_status) == (S.SUCCEEDED, 1, "succeeded")
    assert stored.device_t == from_ms(1_764_412_801_456)
    assert [(e.from_state, e.to_state) for e in await store.history(cmd.id)] == [
        (None, S.QUEUED),
        (S.QUEUED, S.SENT),
        (S.SENT, S.ACKNOWLEDGED),
        (S.ACKNOWLEDGED, S.SUCCEEDED),
    ]
    # A change computed from a stale copy (someone else moved the row) changes nothing.
    stale = machine.transition(cmd, S.CANCELLED, utc_now())
    with pytest.raises(CommandConflict):
        async with store.transaction() as tx:
            await tx.write([stale])
    assert (await store.get(cmd.id)).state is S.SUCCEEDED
    assert len(await store.history(cmd.id)) == 4
    with pytest.raises(CommandConflict):  # the same guard when it is a statement on its own
        await store.apply([], [stale])
    assert len(await store.history(cmd.id)) == 4


async def test_apply_inserts_planned_commands_and_skips_taken_keys(store):
    a = store.ids["dev-a"]
    first = new(a, key="k2")
    sent, entry = machine.transition(first, S.SENT, utc_now())
    [stored] = await store.apply([(sent, [machine.created(first), entry])], [])
    assert stored.state is S.SENT and stored.seq is not None
    assert [(e.from_state, e.to_state) for e in await store.history(first.id)] == [
        (None, S.QUEUED),
        (S.QUEUED, S.SENT),
    ]
    again, other = new(a, key="k2"), new(a, key="k3")
    assert await store.apply(
        [(again, [machine.created(again)]), (other, [machine.created(other)])], []
    ) == [None, ANY]
    assert await store.get(again.id) is None and await store.get(other.id) is not None


async def test_a_burst_of_new_commands_is_stored_in_order_each_key_once(store):
    a, b = store.ids["dev-a"], store.ids["dev-b"]
    taken = await _insert(store, new(a, key="t0"))
    burst = [
        new(a, key="t1"),
        new(b, key="t2"),
        new(a, key="t0"),
        new(b, key="t5"),
        new(a, key="t1"),
    ]
    sent, entry = machine.transition(burst[1], S.SENT, utc_now())
    planned = [(c, [machine.created(c)]) for c in burst]
    planned[1] = (sent, [machine.created(burst[1]), entry])
    stored = await store.apply(planned, [])
    # The key taken before and the repeated key within the burst are skipped, history too.
    assert [s is not None for s in stored] == [True, True, False, True, False]
    assert [s.id for s in stored if s] == [burst[0].id, burst[1].id, burst[3].id]
    seqs = [s.seq for s in stored if s]
    assert taken.seq < seqs[0] < seqs[1] < seqs[2], "submission order"
    assert stored[1].state is S.SENT and (await store.get(burst[1].id)).state is S.SENT
    assert [e.to_state for e in await store.history(burst[1].id)] == [S.QUEUED, S.SENT]
    assert [e.to_state for e in await store.history(burst[3].id)] == [S.QUEUED]
    assert await store.history(burst[2].id) == [] and await store.get(burst[4].id) is None
    # New commands with a change of another one: all or nothing.
    stale = machine.transition(taken, S.SENT, utc_now())
    stale = (stale[0], stale[1].model_copy(update={"from_state": S.ACKNOWLEDGED}))
    more = [new(b, key="t3"), new(b, key="t4")]
    with pytest.raises(CommandConflict):
        await store.apply([(c, [machine.created(c)]) for c in more], [stale])
    assert all([await store.get(c.id) is None for c in more])


def test_joint_statements_are_numbered_once_with_one_placeholder_per_parameter():
    """psycopg parses a %s statement of more than 50 parameters again on every execution; the
    joint statements are numbered when built, one $n per parameter, in order."""
    assert _numbered("VALUES (%s, %s::int4), (%s, %s)") == "VALUES ($1, $2::int4), ($3, $4)"
    for sql, params in (
        (_insert_many_sql(8, 16), 8 * 20 + 16 * 7),
        (_update_sql(6, 9), 6 * 13 + 9 * 7 + 1),
        (_insert_sql(2), 19 + 2 * 6),
    ):
        numbers = [int(n) for n in re.findall(r"\$(\d+)", sql)]
        assert "%s" not in sql and numbers == list(range(1, params + 1))


async def test_open_commands_come_back_in_submission_order_and_lists_page_newest_first(store):
    a, b = store.ids["dev-a"], store.ids["dev-b"]
    made = [await _insert(store, new(v)) for v in (a, b, a, b, a)]
    async with store.transaction() as tx:
        await tx.write([machine.transition(made[1], S.EXPIRED, utc_now())])
    assert [c.id for c in await store.open_commands()] == [made[i].id for i in (0, 2, 3, 4)]
    assert [c.id for c in await store.open_commands([b])] == [made[3].id]
    page = await store.list(vehicle_id=a, limit=2)
    assert [c.id for c in page.items] == [made[4].id, made[2].id] and page.next_cursor
    rest = await store.list(vehicle_id=a, limit=2, before=page.next_cursor)
    assert [c.id for c in rest.items] == [made[0].id] and rest.next_cursor is None
    assert [c.id for c in (await store.list(states=[S.EXPIRED])).items] == [made[1].id]


async def test_snapshots_carry_the_last_actuation_of_the_vehicle(store, pg_dsn):
    a = store.ids["dev-a"]
    snap = (await store.snapshots([a]))[a]
    assert (snap.online, snap.state_time, snap.last_actuation, snap.vehicle_type) == (
        False,
        None,
        None,
        "car",
    )
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO vehicle_state (vehicle, time, speed_kmh, ignition, "
            "locked, online) VALUES (%s, now(), 0, false, true, true)",
            (a,),
        )
    unlock = await _insert(store, new(a))
    locate = await _insert(store, new(a, "locate"))
    now = utc_now()
    changes = []
    for cmd, t in ((unlock, 1_000), (locate, 2_000)):
        sent = machine.transition(cmd, S.SENT, now)
        changes += [
            sent,
            machine.apply_result(
                sent[0], DeviceResult(id=cmd.id, status="succeeded", t=1_764_412_800_000 + t), now
            ),
        ]
    async with store.transaction() as tx:
        await tx.write(changes)
    snap = (await store.snapshots([a]))[a]
    assert snap.online and snap.locked is True and snap.speed_kmh == 0.0
    # locate changes nothing the interlocks look at: the unlock is the last actuation.
    assert snap.last_actuation == from_ms(1_764_412_801_000)


async def test_a_database_that_is_not_there_is_unavailable(pg_dsn):
    with pytest.raises(StoreUnavailable):
        await CommandStore.open("postgresql://postgres@127.0.0.1:9/x", timeout_s=1)


async def test_the_registry_version_moves_with_every_committed_registry_change(store, pg_dsn):
    """Migration 0064's trigger: a registration, a TCU swap and a re-registration of the same
    fleet move the version; the copy read with it holds the change (gateway/commands/vehicles.py
    reads the whole registry again only when it moved)."""
    version, vehicles = await store.vehicles()
    assert {v.device_id for v in vehicles} == {"dev-a", "dev-b"}
    assert await store.registry_version() == version

    await register(pg_dsn, [("dev-c", "veh-c", "ebike")])
    registered = await store.registry_version()
    assert registered > version

    await register(pg_dsn, [("dev-a2", "veh-a", "car")])  # veh-a's TCU swapped
    swapped, vehicles = await store.vehicles()
    assert swapped > registered
    assert {v.vehicle_ref: v.device_id for v in vehicles} == {
        "veh-a": "dev-a2",
        "veh-b": "dev-b",
        "veh-c": "dev-c",
    }

    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        await conn.execute("UPDATE vehicles SET vehicle_type = 'car' WHERE vehicle_ref = 'veh-c'")
        assert await store.registry_version() == swapped, "not before the change commits"
        await conn.commit()
    assert await store.registry_version() > swapped
