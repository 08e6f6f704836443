"""The commands' PostgreSQL access: commands and command_history (migration 0008), the registry
lookups and vehicle snapshots the interlocks read. psycopg 3 async over the ground's pool and
error translation (telemetry.store.pooled_connection): connection trouble is StoreUnavailable.

Every change is written with its history row in one transaction, guarded by the state it expects
the row to be in (optimistic concurrency): a row that moved under us is a CommandConflict and
nothing of the transaction is kept.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import orjson
import psycopg
from psycopg import AsyncConnection, AsyncCursor, AsyncRawCursor
from psycopg_pool import AsyncConnectionPool

from commands.model import (
    Command,
    CommandPage,
    CommandState,
    CommandType,
    HistoryEntry,
    VehicleSnapshot,
)
from telemetry.store import open_pool, pooled_connection


class CommandConflict(Exception):
    """A command row was not in the state a change expected (changed by someone else)."""


@dataclass(frozen=True, slots=True)
class VehicleInfo:
    vehicle_id: int
    vehicle_ref: str
    device_id: str
    vehicle_type: str


_COLUMNS = (
    "id",
    "seq",
    "vehicle",
    "device_id",
    "type",
    "params",
    "idempotency_key",
    "requested_by",
    "request_hash",
    "on_unsafe",
    "state",
    "reason",
    "created_at",
    "deadline",
    "sent_at",
    "last_sent_at",
    "acknowledged_at",
    "finished_at",
    "attempts",
    "device_status",
    "device_reason",
    "device_t",
    "updated_at",
)
_SELECT = (
    "SELECT " + ", ".join(f"c.{c}" for c in _COLUMNS) + ", v.vehicle_ref "
    "FROM commands c JOIN vehicles v ON v.id = c.vehicle"
)

# Statements take one scalar parameter per value (VALUES lists, built per number of rows and
# cached): psycopg dumps scalars much faster than arrays, and most writes are one or two rows.
# They are written with %s and numbered ($1, $2, ...) once, when built, and run on a raw cursor:
# psycopg parses a %s statement again on every execution once it has more than 50 parameters
# (a joint write of 8 new commands: 0.8 ms of CPU per execution; numbered: 0.04 ms).


def _numbered(sql: str) -> str:
    """A statement's %s placeholders as $1, $2, ... in order (our statements hold no other %)."""
    parts = sql.split("%s")
    return "".join(f"{part}${n}" for n, part in enumerate(parts[:-1], 1)) + parts[-1]


def _rows(n: int, types: Sequence[str]) -> str:
    row = "(" + ", ".join(f"%s::{t}" for t in types) + ")"
    return ", ".join([row] * n)


_HISTORY_TYPES = ("timestamptz", "text", "text", "text", "jsonb", "int4")


@lru_cache(maxsize=64)
def _insert_sql(history_rows: int) -> str:
    """A new command, already in the state the scheduler gave it, with its history rows, in one
    statement; nothing at all when its idempotency key is taken."""
    return _numbered(f"""
WITH ins AS (
    INSERT INTO commands (id, vehicle, device_id, type, params, idempotency_key, requested_by,
                          request_hash, on_unsafe, state, reason, created_at, deadline, sent_at,
                          last_sent_at, acknowledged_at, finished_at, attempts, updated_at)
    VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    ON CONFLICT (requested_by, idempotency_key) DO NOTHING
    RETURNING id, seq
), history AS (
    INSERT INTO command_history (command_id, at, from_state, to_state, reason, detail)
    SELECT ins.id, h.at, h.from_state, h.to_state, h.reason, h.detail
    FROM ins, (VALUES {_rows(history_rows, _HISTORY_TYPES)})
         AS h(at, from_state, to_state, reason, detail, n)
    ORDER BY h.n
)
SELECT seq FROM ins""")


_INSERT_TYPES = (
    "uuid",  # id
    "int4",  # vehicle
    *("text",) * 2,  # device_id, type
    "jsonb",  # params
    *("text",) * 6,  # idempotency_key ... reason
    *("timestamptz",) * 6,  # created_at ... finished_at
    "int4",
    "timestamptz",
    "int4",  # n: the order given
)


@lru_cache(maxsize=64)
def _insert_many_sql(commands: int, history_rows: int) -> str:
    """Several new commands with all their history rows in one statement (one round trip for a
    burst of submissions, where one statement each cost one round trip each): a command whose
    idempotency key is taken is left out with its history, as _insert_sql does; returns the id
    and seq of each command inserted, in the order given."""
    return _numbered(f"""
WITH given (id, vehicle, device_id, type, params, idempotency_key, requested_by, request_hash,
            on_unsafe, state, reason, created_at, deadline, sent_at, last_sent_at,
            acknowledged_at, finished_at, attempts, updated_at, n) AS (
    VALUES {_rows(commands, _INSERT_TYPES)}
), ins AS (
    INSERT INTO commands (id, vehicle, device_id, type, params, idempotency_key, requested_by,
                          request_hash, on_unsafe, state, reason, created_at, deadline, sent_at,
                          last_sent_at, acknowledged_at, finished_at, attempts, updated_at)
    SELECT id, vehicle, device_id, type, params, idempotency_key, requested_by, request_hash,
           on_unsafe, state, reason, created_at, deadline, sent_at, last_sent_at,
           acknowledged_at, finished_at, attempts, updated_at
    FROM given ORDER BY n
    ON CONFLICT (requested_by, idempotency_key) DO NOTHING
    RETURNING id, seq
), history AS (
    INSERT INTO command_history (command_id, at, from_state, to_state, reason, detail)
    SELECT h.command_id, h.at, h.from_state, h.to_state, h.reason, h.detail
    FROM (VALUES {_rows(history_rows, ("uuid", *_HISTORY_TYPES))})
         AS h(command_id, at, from_state, to_state, reason, detail, n)
    JOIN ins ON ins.id = h.command_id
    ORDER BY h.n
)
SELECT id, seq FROM ins""")


_UPDATE_TYPES = (
    "uuid",
    "text",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "int4",
    "text",
    "text",
    "timestamptz",
    "timestamptz",
)


@lru_cache(maxsize=256)
def _update_sql(rows: int, history_rows: int) -> str:
    """Each command's final row, guarded by the state it is expected in, and every history row,
    in one statement (data-modifying CTEs always run to completion). commands_guard raises if a
    row had moved, which rolls the transaction back (CommandConflict)."""
    return _numbered(f"""
WITH changed AS (
    UPDATE commands c SET state = u.state, reason = u.reason, sent_at = u.sent_at,
        last_sent_at = u.last_sent_at, acknowledged_at = u.acknowledged_at,
        finished_at = u.finished_at, attempts = u.attempts, device_status = u.device_status,
        device_reason = u.device_reason, device_t = u.device_t, updated_at = u.updated_at
    FROM (VALUES {_rows(rows, _UPDATE_TYPES)})
         AS u(id, expect, state, reason, sent_at, last_sent_at, acknowledged_at, finished_at,
              attempts, device_status, device_reason, device_t, updated_at)
    WHERE c.id = u.id AND c.state = u.expect
    RETURNING c.id
), history AS (
    INSERT INTO command_history (command_id, at, from_state, to_state, reason, detail)
    SELECT h.command_id, h.at, h.from_state, h.to_state, h.reason, h.detail
    FROM (VALUES {_rows(history_rows, ("uuid", *_HISTORY_TYPES))})
         AS h(command_id, at, from_state, to_state, reason, detail, n)
    ORDER BY h.n
)
SELECT commands_guard(%s, count(*)) FROM changed""")


_ACTUATING = "('lock', 'unlock', 'immobilise', 'mobilise')"
# The vehicle's latest state and its last actuation: the newest state-changing command the
# device carried out (its device time), or one that timed out unanswered (it might have acted up
# to its deadline). Commands of a vehicle run one at a time, so the newest by seq is the last.
_SNAPSHOTS = f"""
SELECT v.id, v.vehicle_type, coalesce(s.online, false), s.time, s.speed_kmh, s.ignition,
       s.locked, s.immobilised,
       (SELECT t.form_factor FROM vehicle_types t WHERE t.id = v.vehicle_type),
       (SELECT CASE WHEN c.device_status = 'succeeded' THEN c.device_t ELSE c.deadline END
          FROM commands c
         WHERE c.vehicle = v.id AND c.type IN {_ACTUATING}
           AND (c.device_status = 'succeeded'
                OR (c.state = 'timed_out' AND c.device_status IS NULL))
         ORDER BY c.seq DESC LIMIT 1),
       (SELECT a.holder FROM vehicle_authority a
         WHERE a.vehicle = v.id AND a.holder <> 'fleetgate')
FROM vehicles v LEFT JOIN vehicle_state s ON s.vehicle = v.id
WHERE v.id = ANY(%s)"""

_CONFLICT = "FGC01"  # the SQLSTATE commands_guard raises (migration 0008)
_OPEN_STATES = tuple(s.value for s in CommandState if not s.terminal)


def _command(row) -> Command:
    d = dict(zip(_COLUMNS, row[:-1]))
    d["vehicle_id"] = d.pop("vehicle")
    d["vehicle_ref"] = row[-1]
    return Command.model_validate(d)


def _history(row) -> HistoryEntry:
    command_id, at, from_state, to_state, reason, detail = row
    return HistoryEntry(
        command_id=command_id,
        at=at,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        detail=detail,
    )


class CommandTx:
    """The statements of one transaction (see CommandStore.transaction)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._inserts: list[tuple[AsyncCursor, Command]] = []

    async def insert(self, cmd: Command, history: Sequence[HistoryEntry]) -> None:
        """Insert a new command in its current state with its history rows (the first one its
        creation). Nothing is written if its (requested_by, idempotency_key) is taken: see
        inserted() after the commit."""
        cur = AsyncRawCursor(self._conn)
        await cur.execute(
            _insert_sql(len(history)),
            (
                *_insert_values(cmd),
                *(v for n, e in enumerate(history) for v in _history_row(e, n)),
            ),
        )
        self._inserts.append((cur, cmd))

    async def insert_many(
        self, inserts: Sequence[tuple[Command, Sequence[HistoryEntry]]]
    ) -> list[Command | None]:
        """insert() of several commands in one statement; per command the stored one (with its
        seq) or None where its key was taken. The commands' own order gives their seqs."""
        params: list = []
        for n, (c, _) in enumerate(inserts):
            params += _insert_values(c)
            params.append(n)
        k = 0
        for c, history in inserts:
            for e in history:
                params += (c.id, *_history_row(e, k))
                k += 1
        cur = await AsyncRawCursor(self._conn).execute(_insert_many_sql(len(inserts), k), params)
        seqs = dict(await cur.fetchall())
        return [
            None if c.id not in seqs else c.model_copy(update={"seq": seqs[c.id]})
            for c, _ in inserts
        ]

    async def inserted(self) -> list[Command | None]:
        """Per insert() of this transaction: the command with its seq, or None if its key was
        taken. Call after the transaction block."""
        out = []
        for cur, cmd in self._inserts:
            row = await cur.fetchone()
            out.append(None if row is None else cmd.model_copy(update={"seq": row[0]}))
        return out

    async def write(
        self, changes: Sequence[tuple[Command, HistoryEntry]], *, then_snapshots: Iterable[int] = ()
    ) -> dict[int, VehicleSnapshot]:
        """Persist state changes in order: each command's final row (guarded by the state its
        first change left from) and every history row; then read the vehicles' snapshots (they
        see these changes). A row that moved fails the transaction with CommandConflict."""
        if changes:
            final: dict[uuid.UUID, tuple[Command, CommandState]] = {}
            for cmd, entry in changes:
                expect = final[cmd.id][1] if cmd.id in final else entry.from_state
                final[cmd.id] = (cmd, expect)
            params: list = []
            for cmd, expect in final.values():
                params += (
                    cmd.id,
                    expect.value,
                    cmd.state.value,
                    cmd.reason,
                    cmd.sent_at,
                    cmd.last_sent_at,
                    cmd.acknowledged_at,
                    cmd.finished_at,
                    cmd.attempts,
                    cmd.device_status,
                    cmd.device_reason,
                    cmd.device_t,
                    cmd.updated_at,
                )
            for n, (_, entry) in enumerate(changes):
                params += (entry.command_id, *_history_row(entry, n))
            params.append(len(final))
            await AsyncRawCursor(self._conn).execute(_update_sql(len(final), len(changes)), params)
        return await _snapshots(self._conn.cursor(), then_snapshots)


def _insert_values(c: Command) -> tuple:
    """A new command's values, in the column order of _insert_sql and _insert_many_sql."""
    return (
        c.id,
        c.vehicle_id,
        c.device_id,
        c.type.value,
        orjson.dumps(c.params).decode(),
        c.idempotency_key,
        c.requested_by,
        c.request_hash,
        c.on_unsafe,
        c.state.value,
        c.reason,
        c.created_at,
        c.deadline,
        c.sent_at,
        c.last_sent_at,
        c.acknowledged_at,
        c.finished_at,
        c.attempts,
        c.updated_at,
    )


def _history_row(e: HistoryEntry, n: int) -> tuple:
    return (
        e.at,
        e.from_state.value if e.from_state else None,
        e.to_state.value,
        e.reason,
        None if e.detail is None else orjson.dumps(e.detail).decode(),
        n,
    )


async def _snapshots(cur: AsyncCursor, vehicle_ids: Iterable[int]) -> dict[int, VehicleSnapshot]:
    ids = sorted(set(vehicle_ids))
    if not ids:
        return {}
    await cur.execute(_SNAPSHOTS, (ids,))
    return {
        r[0]: VehicleSnapshot(
            vehicle_id=r[0],
            vehicle_type=r[1],
            online=r[2],
            state_time=r[3],
            speed_kmh=r[4],
            ignition=r[5],
            locked=r[6],
            immobilised=r[7],
            form_factor=r[8],
            last_actuation=r[9],
            held_by=r[10],
        )
        for r in await cur.fetchall()
    }


class CommandStore:
    """Commands in PostgreSQL. `await CommandStore.open(dsn)` for a pool of its own, or
    `CommandStore(pool)` to share one (e.g. the telemetry store's); close() closes only a pool
    the store opened itself."""

    def __init__(self, pool: AsyncConnectionPool, *, owns_pool: bool = False) -> None:
        self._pool = pool
        self._owns_pool = owns_pool

    @classmethod
    async def open(
        cls, dsn: str, *, pool_min: int = 1, pool_max: int = 2, timeout_s: float = 5.0
    ) -> CommandStore:
        pool = await open_pool(
            dsn,
            name="fleetgate-commands",
            application_name="fleetgate-commands",
            pool_min=pool_min,
            pool_max=pool_max,
            timeout_s=timeout_s,
        )
        return cls(pool, owns_pool=True)

    async def close(self) -> None:
        if self._owns_pool:
            await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection of the ground's (connection trouble is StoreUnavailable); a row
        commands_guard found moved is CommandConflict."""
        async with pooled_connection(self._pool) as conn:
            # Inside: commands_guard's SQLSTATE is of an OperationalError class, which the
            # ground would otherwise report as an unavailable database.
            try:
                yield conn
            except psycopg.Error as exc:
                if exc.sqlstate == _CONFLICT:
                    raise CommandConflict(exc.diag.message_primary or str(exc)) from exc
                raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[CommandTx]:
        """One transaction: committed when the block ends, rolled back on any error."""
        # (Not in pipeline mode: on a local server a round trip costs less than psycopg's
        # pipeline bookkeeping; measured with benchmarks/commands.py.)
        async with self._connection() as conn:
            async with conn.transaction():
                yield CommandTx(conn)

    async def apply(
        self,
        inserts: Sequence[tuple[Command, Sequence[HistoryEntry]]],
        changes: Sequence[tuple[Command, HistoryEntry]],
    ) -> list[Command | None]:
        """Write new commands and changes atomically; per insert the stored command, or None
        where its key was taken. A single statement runs on its own (a statement is a
        transaction: one round trip instead of BEGIN, statement, COMMIT)."""
        if not inserts and not changes:
            return []
        async with self._connection() as conn:
            tx = CommandTx(conn)
            if len(inserts) == 1 and not changes:
                await tx.insert(*inserts[0])
                return await tx.inserted()
            if not inserts:
                await tx.write(changes)  # one statement: atomic on its own
                return []
            if not changes:
                return await tx.insert_many(inserts)
            async with conn.transaction():
                stored = await tx.insert_many(inserts)
                await tx.write(changes)
            return stored

    # --- reads ------------------------------------------------------------------------------

    async def vehicle(
        self,
        *,
        vehicle_ref: str | None = None,
        device_id: str | None = None,
        vehicle_id: int | None = None,
    ) -> VehicleInfo | None:
        column, value = (
            ("vehicle_ref", vehicle_ref)
            if vehicle_ref is not None
            else ("device_id", device_id)
            if device_id is not None
            else ("id", vehicle_id)
        )
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT id, vehicle_ref, device_id, vehicle_type FROM vehicles "
                f"WHERE {column} = %s",
                (value,),
            )
            row = await cur.fetchone()
        return VehicleInfo(*row) if row else None

    async def registry_version(self) -> int:
        """The registry's version (migration 0064): it moves with every committed change."""
        async with self._connection() as conn:
            cur = await conn.execute("SELECT version FROM registry_version")
            return (await cur.fetchone())[0]

    async def vehicles(self) -> tuple[int, list[VehicleInfo]]:
        """Every registered vehicle (the command service's copy of the registry), with the
        registry's version read just before: a change committed between the two reads makes
        the version older than the rows, never newer, so it is read again, never missed."""
        async with self._connection() as conn:
            cur = await conn.execute("SELECT version FROM registry_version")
            version = (await cur.fetchone())[0]
            cur = await conn.execute(
                "SELECT id, vehicle_ref, device_id, vehicle_type FROM vehicles"
            )
            return version, [VehicleInfo(*row) for row in await cur.fetchall()]

    async def get(self, command_id: uuid.UUID) -> Command | None:
        return (await self.get_many([command_id])).get(command_id)

    async def get_many(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Command]:
        ids = list(ids)
        if not ids:
            return {}
        async with self._connection() as conn:
            cur = await conn.execute(_SELECT + " WHERE c.id = ANY(%s)", (ids,))
            return {c.id: c for c in map(_command, await cur.fetchall())}

    async def find(self, requested_by: str, idempotency_key: str) -> Command | None:
        async with self._connection() as conn:
            cur = await conn.execute(
                _SELECT + " WHERE c.requested_by = %s AND c.idempotency_key = %s",
                (requested_by, idempotency_key),
            )
            row = await cur.fetchone()
        return _command(row) if row else None

    async def open_commands(self, vehicle_ids: Iterable[int] | None = None) -> list[Command]:
        """Every command not in a terminal state (of these vehicles), in submission order."""
        query, args = _SELECT + " WHERE c.state = ANY(%s)", [list(_OPEN_STATES)]
        if vehicle_ids is not None:
            query += " AND c.vehicle = ANY(%s)"
            args.append(sorted(set(vehicle_ids)))
        async with self._connection() as conn:
            cur = await conn.execute(query + " ORDER BY c.seq", args)
            return [_command(r) for r in await cur.fetchall()]

    async def snapshots(self, vehicle_ids: Iterable[int]) -> dict[int, VehicleSnapshot]:
        async with self._connection() as conn:
            return await _snapshots(conn.cursor(), vehicle_ids)

    async def history(self, command_id: uuid.UUID) -> list[HistoryEntry]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT command_id, at, from_state, to_state, reason, detail "
                "FROM command_history WHERE command_id = %s ORDER BY id",
                (command_id,),
            )
            return [_history(r) for r in await cur.fetchall()]

    async def list(
        self,
        *,
        vehicle_id: int | None = None,
        device_id: str | None = None,
        states: Sequence[CommandState] | None = None,
        type: CommandType | None = None,
        requested_by: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> CommandPage:
        """Commands newest first; `before` is the cursor of the previous page."""
        limit = max(1, min(limit, 500))
        where, args = [], []
        for cond, value in (
            ("c.vehicle = %s", vehicle_id),
            ("c.device_id = %s", device_id),
            ("c.type = %s", type.value if type else None),
            ("c.requested_by = %s", requested_by),
            ("c.created_at >= %s", created_from),
            ("c.created_at < %s", created_to),
            ("c.seq < %s", before),
        ):
            if value is not None:
                where.append(cond)
                args.append(value)
        if states:
            where.append("c.state = ANY(%s)")
            args.append([s.value for s in states])
        query = (
            _SELECT
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.seq DESC LIMIT %s"
        )
        async with self._connection() as conn:
            cur = await conn.execute(query, [*args, limit + 1])
            rows = await cur.fetchall()
        items = [_command(r) for r in rows[:limit]]
        return CommandPage(items=items, next_cursor=items[-1].seq if len(rows) > limit else None)
