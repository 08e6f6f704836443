"""Command authority (migration 0058) against the real database: a re-import never takes a
cut-over vehicle back, a cut-over refuses what fleetgate holds already and changes nothing, a
vehicle is live only on a sample at or after its boundary (the device's answer, else its own
online status after the cut-over), a roll-back fails the commands not delivered yet with their
history, and the backfill reads exactly the window fleetgate held."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from telemetry.store import AuthorityConflict, CommandAuthority, TelemetryStore
from tests.harness import register
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration

VEHICLES = [("dev-a", "veh-a", "ebike"), ("dev-b", "veh-b", "ebike"), ("dev-c", "veh-c", "car")]


async def _sample(dsn: str, vehicle: int, t: datetime) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO positions (time, vehicle, lat, lon, received_at) "
            "VALUES (%s, %s, 52.5, 13.4, now())",
            (t, vehicle),
        )


async def _presence(dsn: str, vehicle: int, t: datetime) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO vehicle_state (vehicle, online, presence_changed_at, last_seen) "
            "VALUES (%s, true, %s, %s) ON CONFLICT (vehicle) DO UPDATE SET online = true, "
            "presence_changed_at = EXCLUDED.presence_changed_at",
            (vehicle, t, t),
        )


async def _queued_command(dsn: str, vehicle: int, device: str, key: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(
            "INSERT INTO commands (id, vehicle, device_id, type, idempotency_key, requested_by, "
            "request_hash, on_unsafe, state, created_at, deadline, updated_at) VALUES "
            "(gen_random_uuid(), %s, %s, 'lock', %s, 'rental', 'h', 'wait', 'queued', now(), "
            "now() + interval '1 hour', now())",
            (vehicle, device, key),
        )


async def test_authority_moves_and_comes_back_and_live_needs_a_sample_after_the_boundary(pg_dsn):
    ids = await register(pg_dsn, VEHICLES)
    a, b, c = (ids[d] for d, _, _ in VEHICLES)
    async with await TelemetryStore.open(pg_dsn) as store:
        authority = CommandAuthority(store)
        assert await authority.hold_for_legacy([a, b], "traccar") == 2
        held = {h.vehicle_ref: (h.holder, h.legacy) for h in await authority.vehicles()}
        assert held == {
            "veh-a": ("traccar", "traccar"),
            "veh-b": ("traccar", "traccar"),
            "veh-c": ("fleetgate", None),  # never migrated
        }
        with pytest.raises(AuthorityConflict, match=r"veh-c \(never migrated\)"):
            await authority.cut_over("pilot", [a, c], {})
        assert await authority.batches() == []  # nothing of it was written

        await authority.cut_over("pilot", [a, b], {"selection": "vehicles"})
        assert await authority.hold_for_legacy([a, b], "traccar") == 0  # a re-import
        with pytest.raises(AuthorityConflict, match="exists already"):
            await authority.cut_over("pilot", [a], {})
        await authority.hold_for_legacy([c], "csv")
        with pytest.raises(AuthorityConflict, match=r"veh-a \(batch 'pilot'\)"):
            await authority.cut_over("wave-2", [a, c], {})

        # a: the device answered at t_a; a mirrored sample from before it does not make it live.
        (cut,) = {r.cutover_at for r in await authority.batch("pilot")}
        t_a = cut + timedelta(seconds=5)
        await authority.record_boundaries("pilot", "cutover", {a: t_a})
        await _sample(pg_dsn, a, t_a - timedelta(seconds=1))
        # b: no answer (an --export cut-over); a sample before its online status at fleetgate
        # does not count either.
        await _sample(pg_dsn, b, cut + timedelta(seconds=2))
        rows = {r.vehicle_ref: r for r in await authority.batch("pilot")}
        assert rows["veh-a"].since_t == t_a and rows["veh-a"].first_sample is None
        assert rows["veh-b"].since_t is None and rows["veh-b"].first_sample is None
        await _sample(pg_dsn, a, t_a)
        await _presence(pg_dsn, b, cut + timedelta(seconds=3))
        await _sample(pg_dsn, b, cut + timedelta(seconds=4))
        rows = {r.vehicle_ref: r for r in await authority.batch("pilot")}
        assert rows["veh-a"].first_sample == t_a
        assert rows["veh-b"].first_sample == cut + timedelta(seconds=4)

        # Roll-back of a alone: its queued command fails (not_held) with its history.
        await _queued_command(pg_dsn, a, "dev-a", "k1")
        await _queued_command(pg_dsn, b, "dev-b", "k2")
        with pytest.raises(AuthorityConflict, match="not held in batch 'pilot': veh-c"):
            await authority.roll_back("pilot", [a, c], {})
        back = await authority.roll_back("pilot", [a], {"legacy_url": "mqtt://legacy:1883"})
        assert [h.vehicle_ref for h in back] == ["veh-a"]
        t_back = t_a + timedelta(seconds=10)
        await authority.record_boundaries("pilot", "rollback", {a: t_back})
        await _sample(pg_dsn, a, t_back)  # on the legacy broker again (mirrored)
        commands = {
            r["idempotency_key"]: (r["state"], r["reason"])
            for r in await fetch(pg_dsn, "SELECT idempotency_key, state, reason FROM commands")
        }
        assert commands == {"k1": ("failed", "not_held"), "k2": ("queued", None)}
        (hist,) = await fetch(
            pg_dsn,
            "SELECT h.from_state, h.to_state, h.reason FROM command_history h "
            "JOIN commands c ON c.id = h.command_id WHERE c.idempotency_key = 'k1'",
        )
        assert hist == {"from_state": "queued", "to_state": "failed", "reason": "not_held"}
        held = {h.vehicle_ref: (h.holder, h.batch) for h in await authority.vehicles()}
        assert held["veh-a"] == ("traccar", None) and held["veh-b"] == ("fleetgate", "pilot")

        for t, type_ in ((t_a - timedelta(seconds=1), "tamper"), (t_a, "crash"), (t_back, "x")):
            async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
                await conn.execute(
                    "INSERT INTO events (time, vehicle, source, type, detail) "
                    "VALUES (%s, %s, 'device', %s, '{\"n\": 1}')",
                    (t, a, type_),
                )
        rows = [r async for r in authority.stored_since_cutover("pilot", [a])]
        samples = [r["time"] for r in rows if r["kind"] == "sample"]
        assert samples == [t_a]  # not the mirrored one before, not the one after the roll-back
        events = [(r["time"], r["type"], r["detail"]) for r in rows if r["kind"] == "event"]
        assert events == [(t_a, "crash", {"n": 1})]
        assert [r["kind"] for r in rows] == ["sample", "event"]
        rows = {r.vehicle_ref: r for r in await authority.batch("pilot")}
        assert rows["veh-a"].rolled_back_at is not None and rows["veh-a"].back_t == t_back
        assert rows["veh-b"].rolled_back_at is None

        with pytest.raises(AuthorityConflict, match="no cut-over batch 'nope'"):
            await authority.roll_back("nope", None, {})
        with pytest.raises(AuthorityConflict, match="no vehicles selected"):
            await authority.cut_over("empty", [], {})
