"""The dispatcher lease on a real PostgreSQL: a standby that takes the lock after the holder's
session was ended reports it held only once the old holder has noticed its loss,, so two
processes never dispatch at once."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from gateway.dispatcher_lease import DispatcherLease

pytestmark = pytest.mark.integration

CHECK_S = 0.2


async def _end_lease_sessions(pg_dsn: str) -> int:
    """End the lease holder's session, and wait until it has ended (the lock is free then)."""
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
            "WHERE application_name = 'fleetgate-dispatcher-lease' "
            "AND datname = current_database() "
            "AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        )
        return (await cur.fetchone())[0]


async def test_a_standby_takes_over_only_after_the_ended_holder_stopped(pg_dsn):
    holder = DispatcherLease(pg_dsn, check_s=CHECK_S, idle_timeout_s=5)
    standby = DispatcherLease(pg_dsn, check_s=CHECK_S, idle_timeout_s=5)
    try:
        assert await holder.try_acquire()
        assert not await standby.try_acquire(), "the lock is taken: the standby stands by"
        assert await _end_lease_sessions(pg_dsn) == 1
        # The server freed the lock at once; the holder learns it at its next check only.
        assert holder.held
        taking_over = asyncio.create_task(standby.try_acquire())
        await asyncio.sleep(CHECK_S / 2)
        assert not taking_over.done(), "the standby reported the lock before the holder stopped"
        assert await taking_over
        assert not holder.held, "the standby took over while the old holder still dispatched"
        assert standby.held
    finally:
        await holder.release()
        await standby.release()


async def test_a_process_that_gets_the_lock_at_its_first_try_does_not_wait(pg_dsn):
    lease = DispatcherLease(pg_dsn, check_s=30, idle_timeout_s=90)
    try:
        # With a 30 s check, a takeover wait would outlast the test's timeout.
        assert await asyncio.wait_for(lease.try_acquire(), timeout=5)
    finally:
        await lease.release()


async def test_the_holder_that_lost_its_session_stands_by_while_the_standby_holds(pg_dsn):
    holder = DispatcherLease(pg_dsn, check_s=CHECK_S, idle_timeout_s=5)
    standby = DispatcherLease(pg_dsn, check_s=CHECK_S, idle_timeout_s=5)
    try:
        assert await holder.try_acquire()
        assert not await standby.try_acquire()
        await _end_lease_sessions(pg_dsn)
        assert await standby.try_acquire()
        assert not holder.held
        assert not await holder.try_acquire(), "two holders"
    finally:
        await holder.release()
        await standby.release()
