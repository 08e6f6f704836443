"""Command authority during a fleet migration (migrations/0058): which platform may command a
vehicle, the cut-overs and roll-backs that moved it, and what fleetgate stored for a vehicle
while it held it (the roll-back's backfill). docs/migration.md, "Cut-over and roll-back".

A vehicle without a vehicle_authority row is fleetgate's: only vehicles that came through
`migrate import` from a legacy source are held by that platform until they are cut over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from telemetry.store._store import SAMPLE_COLUMNS

if TYPE_CHECKING:
    from telemetry.store._store import TelemetryStore

FLEETGATE = "fleetgate"


class AuthorityConflict(Exception):
    """A cut-over or roll-back that cannot be done as asked (the message says why); nothing
    was changed."""


@dataclass(frozen=True, slots=True)
class HeldVehicle:
    """A vehicle as a cut-over or roll-back sees it."""

    vehicle_id: int
    vehicle_ref: str
    device_id: str
    holder: str  # 'fleetgate' or the legacy platform
    legacy: str | None  # the platform it came from (None: never migrated)
    batch: str | None  # the cut-over batch while fleetgate holds it
    lat: float | None  # its last known fix (for --zone)
    lon: float | None


@dataclass(frozen=True, slots=True)
class BatchVehicle:
    """One vehicle of a cut-over batch, as `migrate status` reports it."""

    vehicle_id: int
    vehicle_ref: str
    device_id: str
    holder: str
    cutover_at: datetime  # when the batch took it (database clock)
    since_t: datetime | None  # the device's boundary (set_config result t), if it answered
    rolled_back_at: datetime | None  # the last roll-back after that cut-over, if any
    back_t: datetime | None  # the device's boundary going back
    first_sample: datetime | None  # the first sample at or after the boundary, if any


_HELD = """
SELECT v.id, v.vehicle_ref, v.device_id, coalesce(a.holder, 'fleetgate'), a.legacy, a.batch,
       s.lat, s.lon
FROM vehicles v
LEFT JOIN vehicle_authority a ON a.vehicle = v.id
LEFT JOIN vehicle_state s ON s.vehicle = v.id
"""

# Per vehicle of a batch: its last cut-over in this batch, the roll-back after it (if any) and
# the first sample stored at or after the device's boundary (the vehicle is live then). Without
# the device's answer (an --export cut-over) the boundary is its own online status on
# fleetgate's broker after the cut-over: status topics are never bridged, so that one came from
# the device directly, and a mirrored copy of an older sample does not count.
_BATCH = """
WITH c AS (
  SELECT DISTINCT ON (vehicle) vehicle, id, at, device_t
  FROM cutover_history WHERE batch = %(batch)s AND action = 'cutover'
  ORDER BY vehicle, id DESC
), r AS (
  SELECT DISTINCT ON (h.vehicle) h.vehicle, h.at, h.device_t
  FROM cutover_history h JOIN c ON c.vehicle = h.vehicle AND h.id > c.id
  WHERE h.action = 'rollback'
  ORDER BY h.vehicle, h.id DESC
)
SELECT v.id, v.vehicle_ref, v.device_id, coalesce(a.holder, 'fleetgate'), c.at, c.device_t,
       r.at, r.device_t,
       (SELECT min(p.time) FROM positions p
         WHERE p.vehicle = v.id
           AND p.time >= coalesce(c.device_t, CASE WHEN s.online AND s.presence_changed_at >= c.at
                                                   THEN s.presence_changed_at END)
           AND (r.at IS NULL OR p.time < coalesce(r.device_t, r.at)))
FROM c JOIN vehicles v ON v.id = c.vehicle
LEFT JOIN vehicle_authority a ON a.vehicle = v.id
LEFT JOIN vehicle_state s ON s.vehicle = v.id
LEFT JOIN r ON r.vehicle = v.id
ORDER BY v.vehicle_ref
"""


class CommandAuthority:
    """Authority rows and cut-over history over the telemetry store's pool."""

    def __init__(self, store: TelemetryStore) -> None:
        self._store = store

    async def hold_for_legacy(self, vehicle_ids: Iterable[int], source: str) -> int:
        """The legacy platform `source` holds these vehicles, unless they have an authority row
        already (a re-import never takes back a vehicle that was cut over); how many rows were
        added."""
        ids = sorted(set(vehicle_ids))
        if not ids:
            return 0
        async with self._store.transaction() as cur:
            await cur.execute(
                "INSERT INTO vehicle_authority (vehicle, holder, legacy) "
                "SELECT v, %s, %s FROM unnest(%s::int4[]) AS v "
                "ON CONFLICT (vehicle) DO NOTHING",
                (source, source, ids),
            )
            return cur.rowcount

    async def vehicles(self) -> list[HeldVehicle]:
        """Every registered vehicle with its holder and last fix."""
        async with self._store.connection() as conn:
            cur = await conn.execute(_HELD + "ORDER BY v.vehicle_ref")
            return [HeldVehicle(*row) for row in await cur.fetchall()]

    async def batches(self) -> list[str]:
        """The names of every cut-over batch, oldest first."""
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT batch FROM cutover_history GROUP BY batch ORDER BY min(id)"
            )
            return [r[0] for r in await cur.fetchall()]

    async def cut_over(
        self, batch: str, vehicle_ids: Iterable[int], detail: Mapping[str, Any]
    ) -> list[HeldVehicle]:
        """Move the vehicles to fleetgate as cut-over batch `batch`, in one transaction:
        AuthorityConflict (nothing changed) if the batch exists already, or a vehicle is held
        by fleetgate already (never migrated, or cut over in a batch: which one is said)."""
        ids = sorted(set(vehicle_ids))
        if not ids:
            raise AuthorityConflict("no vehicles selected; nothing cut over")
        async with self._store.transaction() as cur:
            # One cut-over at a time: the batch name and the rows are checked under this lock.
            await cur.execute("SELECT pg_advisory_xact_lock(hashtext('fleetgate_cutover'))")
            await cur.execute("SELECT 1 FROM cutover_history WHERE batch = %s LIMIT 1", (batch,))
            if await cur.fetchone() is not None:
                raise AuthorityConflict(
                    f"batch {batch!r} exists already; give a new batch a new name"
                )
            await cur.execute(
                _HELD + "WHERE v.id = ANY(%s) ORDER BY v.vehicle_ref FOR UPDATE OF v", (ids,)
            )
            held = [HeldVehicle(*row) for row in await cur.fetchall()]
            ours = [h for h in held if h.holder == FLEETGATE]
            if ours:
                named = ", ".join(
                    f"{h.vehicle_ref} ("
                    + (f"batch {h.batch!r}" if h.batch else "never migrated")
                    + ")"
                    for h in ours[:10]
                )
                more = f" and {len(ours) - 10} more" if len(ours) > 10 else ""
                raise AuthorityConflict(f"fleetgate holds already: {named}{more}; nothing cut over")
            await cur.execute(
                "UPDATE vehicle_authority SET holder = 'fleetgate', batch = %s, since_t = NULL, "
                "changed_at = now() WHERE vehicle = ANY(%s)",
                (batch, ids),
            )
            await cur.execute(
                "INSERT INTO cutover_history (batch, action, vehicle, holder, detail) "
                "SELECT %s, 'cutover', v, 'fleetgate', %s FROM unnest(%s::int4[]) AS v",
                (batch, Jsonb(dict(detail)), ids),
            )
        return held

    async def roll_back(
        self, batch: str, vehicle_ids: Iterable[int] | None, detail: Mapping[str, Any]
    ) -> list[HeldVehicle]:
        """Give the batch's vehicles (all it holds, or these) back to the platforms they came
        from, and fail their commands not delivered yet (reason not_held), in one transaction.
        AuthorityConflict if the batch is unknown, or a given vehicle is not held in it."""
        async with self._store.transaction() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(hashtext('fleetgate_cutover'))")
            await cur.execute("SELECT 1 FROM cutover_history WHERE batch = %s LIMIT 1", (batch,))
            if await cur.fetchone() is None:
                raise AuthorityConflict(f"no cut-over batch {batch!r}")
            await cur.execute(
                _HELD + "WHERE a.batch = %s ORDER BY v.vehicle_ref FOR UPDATE OF v", (batch,)
            )
            held = [HeldVehicle(*row) for row in await cur.fetchall()]
            if vehicle_ids is not None:
                wanted = set(vehicle_ids)
                missing = wanted - {h.vehicle_id for h in held}
                if missing:
                    await cur.execute(
                        "SELECT vehicle_ref FROM vehicles WHERE id = ANY(%s) ORDER BY 1",
                        (sorted(missing),),
                    )
                    refs = [r[0] for r in await cur.fetchall()]
                    raise AuthorityConflict(
                        f"not held in batch {batch!r}: {', '.join(refs[:10])}; nothing rolled back"
                    )
                held = [h for h in held if h.vehicle_id in wanted]
            if not held:
                raise AuthorityConflict(
                    f"batch {batch!r} holds no vehicles (rolled back already?); nothing changed"
                )
            ids = [h.vehicle_id for h in held]
            await cur.execute(
                "UPDATE vehicle_authority SET holder = legacy, batch = NULL, since_t = NULL, "
                "changed_at = now() WHERE vehicle = ANY(%s)",
                (ids,),
            )
            await cur.execute(
                "INSERT INTO cutover_history (batch, action, vehicle, holder, detail) "
                "SELECT %s, 'rollback', a.vehicle, a.holder, %s FROM vehicle_authority a "
                "WHERE a.vehicle = ANY(%s)",
                (batch, Jsonb(dict(detail)), ids),
            )
            # Commands not delivered yet never will be: the device goes back to the legacy
            # broker. (The dispatcher fails any that slip past this too: its plans read the
            # holder.) The dispatcher's memory of them is a stale version: its next write is a
            # conflict, after which it reloads them from here.
            await cur.execute(
                "WITH old AS (SELECT id, state FROM commands WHERE vehicle = ANY(%s) "
                "  AND state IN ('queued', 'waiting_for_safe_state') FOR UPDATE), "
                "failed AS (UPDATE commands c SET state = 'failed', reason = 'not_held', "
                "  finished_at = now(), updated_at = now() FROM old WHERE c.id = old.id "
                "  RETURNING c.id, old.state) "
                "INSERT INTO command_history (command_id, at, from_state, to_state, reason, "
                "detail) SELECT id, now(), state, 'failed', 'not_held', %s FROM failed",
                (ids, Jsonb({"batch": batch, "by": "rollback"})),
            )
        return held

    async def record_boundaries(
        self, batch: str, action: str, device_t: Mapping[int, datetime]
    ) -> None:
        """The devices' own boundaries of the batch's last `action` (set_config result t per
        vehicle id); for a cut-over also the authority row's since_t."""
        if not device_t:
            return
        ids = sorted(device_t)
        ts = [device_t[v] for v in ids]
        async with self._store.transaction() as cur:
            await cur.execute(
                "UPDATE cutover_history h SET device_t = x.t "
                "FROM unnest(%s::int4[], %s::timestamptz[]) AS x(v, t) "
                "WHERE h.id = (SELECT max(id) FROM cutover_history "
                "              WHERE batch = %s AND action = %s AND vehicle = x.v)",
                (ids, ts, batch, action),
            )
            if action == "cutover":
                await cur.execute(
                    "UPDATE vehicle_authority a SET since_t = x.t "
                    "FROM unnest(%s::int4[], %s::timestamptz[]) AS x(v, t) "
                    "WHERE a.vehicle = x.v AND a.batch = %s",
                    (ids, ts, batch),
                )

    async def gone_since(self, since: Mapping[int, datetime]) -> set[int]:
        """The vehicles whose stored presence comes from a status at or after their time in
        `since` (only a status moves presence_changed_at; mirrored telemetry after a roll-back
        sets `online` again, so that is not read): the device's offline status after its
        answer is committed, and with it everything it sent before (one pipeline commits a
        connection's messages in order)."""
        if not since:
            return set()
        ids = sorted(since)
        async with self._store.connection() as conn:
            cur = await conn.execute(
                "SELECT s.vehicle FROM vehicle_state s "
                "JOIN unnest(%s::int4[], %s::timestamptz[]) AS x(v, t) ON x.v = s.vehicle "
                "WHERE s.presence_changed_at >= x.t",
                (ids, [since[v] for v in ids]),
            )
            return {r[0] for r in await cur.fetchall()}

    async def batch(self, batch: str) -> list[BatchVehicle]:
        """The batch's vehicles with their cut-over, roll-back and first sample; [] if the
        batch does not exist."""
        async with self._store.connection() as conn:
            cur = await conn.execute(_BATCH, {"batch": batch})
            return [BatchVehicle(*row) for row in await cur.fetchall()]

    async def stored_since_cutover(
        self, batch: str, vehicle_ids: Iterable[int]
    ) -> AsyncIterator[dict[str, Any]]:
        """Every sample and event fleetgate stored for these vehicles of the batch while it held
        them: from each one's boundary (the device's set_config answer, else the cut-over) to
        its roll-back's boundary, oldest first per vehicle; samples first, then events. Rows as
        dicts with kind 'sample' or 'event'."""
        ids = sorted(set(vehicle_ids))
        window = (
            "WITH c AS (SELECT DISTINCT ON (vehicle) vehicle, id, coalesce(device_t, at) AS t0 "
            "  FROM cutover_history WHERE batch = %(batch)s AND action = 'cutover' "
            "  AND vehicle = ANY(%(ids)s) ORDER BY vehicle, id DESC), "
            "w AS (SELECT c.vehicle, c.t0, (SELECT coalesce(h.device_t, h.at) "
            "  FROM cutover_history h WHERE h.vehicle = c.vehicle AND h.id > c.id "
            "  AND h.action = 'rollback' ORDER BY h.id DESC LIMIT 1) AS t1 FROM c) "
        )
        cols = ", ".join(f"p.{c}" for c in SAMPLE_COLUMNS)
        # (kind, what follows vehicle_ref, device_id and time, the query after the window)
        reads = (
            (
                "sample",
                (*SAMPLE_COLUMNS, "received_at"),
                f"SELECT v.vehicle_ref, v.device_id, p.time, {cols}, p.received_at "
                "FROM w JOIN vehicles v ON v.id = w.vehicle JOIN positions p "
                "ON p.vehicle = w.vehicle AND p.time >= w.t0 "
                "AND (w.t1 IS NULL OR p.time < w.t1) ORDER BY v.vehicle_ref, p.time",
            ),
            (
                "event",
                ("source", "type", "detail", "received_at"),
                "SELECT v.vehicle_ref, v.device_id, e.time, e.source, e.type, "
                "e.detail, e.received_at FROM w JOIN vehicles v ON v.id = w.vehicle "
                "JOIN events e ON e.vehicle = w.vehicle AND e.time >= w.t0 "
                "AND (w.t1 IS NULL OR e.time < w.t1) ORDER BY v.vehicle_ref, e.time, e.id",
            ),
        )
        async with self._store.connection() as conn:
            for kind, columns, query in reads:
                names = ("vehicle_ref", "device_id", "time", *columns)
                async with conn.cursor() as cur:
                    await cur.execute(window + query, {"batch": batch, "ids": ids})
                    async for row in cur:
                        yield {"kind": kind, **dict(zip(names, row))}
