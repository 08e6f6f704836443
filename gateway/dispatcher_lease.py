"""At most one command dispatcher among the gateway processes of one database: a PostgreSQL
session-level advisory lock, held on a connection of its own.

Ordering and "one command in flight per vehicle" are decided in the dispatcher's memory
(docs/commands.md), so two dispatchers must never run at once. The process holding the lock runs
it; the others try again every few seconds and take over when the holder stops, dies or loses its
database session. The session is the lease: a process killed outright closes its socket and the
server releases the lock at once; one that hangs or is cut off is ended by the server after
`idle_session_timeout`, because the holder keeps its session busy every check_s (from a task of
its own, so also while the dispatcher is starting).

A holder whose session is ended notices it at its next check, up to check_s later; the server has
released the lock at once. So a process that stood by (it found the lock taken before) waits two
check intervals after taking the lock before it reports it held: by then the old holder has
stopped, and the two never dispatch at once. A process that gets the lock at its first try (a
start) does not wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

log = logging.getLogger(__name__)

# Advisory locks are per database, so the key only has to differ from the project's other
# advisory locks (migrations, partition maintenance).
LOCK_KEY = int.from_bytes(b"fg-cmds", "big")


class LeaseLost(RuntimeError):
    """The lease ended while the dispatcher was being started under it."""


class DispatcherLease:
    def __init__(
        self,
        dsn: str,
        *,
        check_s: float = 2.0,
        idle_timeout_s: float = 10.0,
        timeout_s: float = 5.0,
        lock_key: int = LOCK_KEY,
        name: str = "dispatcher",
    ) -> None:
        if idle_timeout_s <= 2 * check_s:
            raise ValueError("idle_timeout_s must be well above check_s")
        self._dsn = dsn
        # Other one-per-deployment workers (the webhook delivery worker) hold a lease the same
        # way under a key of their own.
        self._lock_key = lock_key
        self._name = name
        self.check_s = check_s
        self._idle_timeout_s = idle_timeout_s
        self._timeout_s = timeout_s
        self._conn: psycopg.AsyncConnection | None = None
        self._keeping: asyncio.Task | None = None
        self.held = False  # False from the first failed check of the session on
        self._stood_by = False  # found the lock taken once: a later acquisition is a takeover

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False also when the database is away."""
        if self.held:
            return True
        try:
            conn = await self._connection()
            cur = await asyncio.wait_for(
                conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,)), self._timeout_s
            )
            got = bool((await cur.fetchone())[0])
            if got and self._stood_by:
                await self._outwait_previous_holder(conn)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            log.warning(f"{self._name}_lease_unavailable", extra={"error": str(exc)[:300]})
            await self._drop_connection()
            return False
        self.held = got
        self._stood_by = not got
        if self.held:
            self._keeping = asyncio.create_task(self._keep(), name=f"{self._name}-lease")
        return self.held

    async def _outwait_previous_holder(self, conn: psycopg.AsyncConnection) -> None:
        """The lock is ours, but a holder whose session was ended stops only at its next check:
        wait that out, then prove the session still lives (a failure raises, as the lock query)."""
        log.info("dispatcher_lease_takeover_wait", extra={"wait_s": 2 * self.check_s})
        await asyncio.sleep(2 * self.check_s)
        await asyncio.wait_for(conn.execute("SELECT 1"), self._timeout_s)

    async def _keep(self) -> None:
        """While held: prove every check_s that the session (and so the lock) lives."""
        while self.held:
            await asyncio.sleep(self.check_s)
            try:
                await asyncio.wait_for(self._conn.execute("SELECT 1"), self._timeout_s)
            except (psycopg.Error, OSError, TimeoutError, AttributeError) as exc:
                log.warning(f"{self._name}_lease_lost", extra={"error": str(exc)[:300]})
                self.held = False
                await self._drop_connection()

    async def release(self) -> None:
        """Give the lock up (closing the session releases it)."""
        self.held = False
        keeping, self._keeping = self._keeping, None
        if keeping is not None and keeping is not asyncio.current_task():
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping
        await self._drop_connection()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn,
                autocommit=True,
                application_name=f"fleetgate-{self._name}-lease",
                connect_timeout=max(2, int(self._timeout_s)),
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=2,
                tcp_user_timeout=int(self._timeout_s * 1000),
            )
            await self._conn.execute(
                f"SET idle_session_timeout = '{int(self._idle_timeout_s * 1000)}ms'"
            )
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self._timeout_s)
