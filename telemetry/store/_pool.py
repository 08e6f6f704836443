"""The one way into PostgreSQL: a psycopg 3 pool opened with the project's connection settings,
and a pooled connection or transaction that turns connection-level trouble into StoreUnavailable.
The telemetry store and the command store (gateway/commands/store.py) both go through here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from telemetry.store._errors import StoreUnavailable

# SQLSTATEs outside OperationalError that still mean "this server cannot take writes now".
_UNAVAILABLE_STATES = {"25006"}  # read_only_sql_transaction: a standby, or during failover
# OperationalError classes that are about the statement, not the server: retrying would stall.
_REFUSED_CLASSES = {"54"}  # program_limit_exceeded


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error means the database cannot be used right now (try again later), as
    opposed to an error about the statement or the data."""
    if isinstance(exc, (PoolTimeout, PoolClosed)):
        return True
    if isinstance(exc, psycopg.OperationalError):
        return (exc.sqlstate or "")[:2] not in _REFUSED_CLASSES
    return isinstance(exc, psycopg.Error) and exc.sqlstate in _UNAVAILABLE_STATES


def describe_unavailable(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"database unavailable: {text}"


async def open_pool(
    dsn: str,
    *,
    name: str,
    application_name: str,
    pool_min: int = 1,
    pool_max: int = 4,
    timeout_s: float = 5.0,
    configure: Callable[[AsyncConnection], Awaitable[None]] | None = None,
    check: Callable[[AsyncConnection], Awaitable[None]] | None = None,
) -> AsyncConnectionPool:
    """An open pool of autocommit connections, once the server answered within timeout_s
    (else StoreUnavailable).

    timeout_s is also how long an operation waits for a pooled connection during an outage
    before it gives up with StoreUnavailable.
    """
    pool = AsyncConnectionPool(
        dsn,
        min_size=pool_min,
        max_size=max(pool_min, pool_max),
        open=False,
        timeout=timeout_s,
        name=name,
        configure=configure,
        check=check,
        # The pool retries a failed connection with exponential backoff until it gives up
        # after reconnect_timeout; the next waiting caller starts afresh. Keeping that short
        # bounds the gap between attempts, so a returning server is used within seconds
        # rather than after a backoff that grew during a long outage.
        reconnect_timeout=timeout_s,
        kwargs={
            "autocommit": True,
            "application_name": application_name,
            "connect_timeout": max(2, int(timeout_s)),
            # A server that vanished without closing the socket is noticed in about
            # 20 s instead of the kernel's two hours.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 2,
            "tcp_user_timeout": 20_000,
        },
    )
    try:
        await pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as exc:
        await pool.close()
        raise StoreUnavailable(f"database not reachable within {timeout_s} s: {exc}") from exc
    return pool


@asynccontextmanager
async def pooled_connection(
    pool: AsyncConnectionPool, deadline_s: float | None = None
) -> AsyncIterator[AsyncConnection]:
    """A connection from the pool; connection-level failures come out as StoreUnavailable,
    other errors unchanged.

    With deadline_s, the whole block (waiting for a connection included) must end within it,
    else StoreUnavailable. That is for a server that hangs with its connections open: the
    kernel acknowledges every segment, so no TCP timeout fires and a query would wait for ever.
    psycopg then tries to cancel the query (5 s) and closes the connection if the server does
    not answer that either, so the block ends at most about 10 s past the deadline."""
    deadline = asyncio.timeout(deadline_s)
    try:
        async with deadline, pool.connection() as conn:
            yield conn
    except TimeoutError as exc:
        if deadline_s is not None and deadline.expired():
            raise StoreUnavailable(f"the database did not answer within {deadline_s:g} s") from exc
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(describe_unavailable(exc)) from exc
        raise


@asynccontextmanager
async def pooled_transaction(
    pool: AsyncConnectionPool, deadline_s: float | None = None
) -> AsyncIterator[AsyncConnection]:
    """A pooled connection in one transaction: committed when the block ends, rolled back on
    any error. deadline_s as for pooled_connection."""
    async with pooled_connection(pool, deadline_s) as conn:
        async with conn.transaction():
            yield conn
