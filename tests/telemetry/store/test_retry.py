"""Retrying while the database is away (telemetry/store/_retry.py): the delays, what ends the
retrying, and a store opened once a cut database comes back."""

from __future__ import annotations

import asyncio

import pytest

from telemetry.store import Backoff, StoreUnavailable, TelemetryStore, retry_while_unavailable
from tests.netproxy import TcpProxy


def test_backoff_doubles_up_to_its_ceiling_and_starts_again_after_a_reset():
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2
    fixed = Backoff(1.0, 1.0)
    assert [fixed.next() for _ in range(3)] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


class Outage:
    """An attempt that meets the database away `failures` times, then succeeds. A stand-in for
    the store where the test is about the loop itself (the order of attempts and reports)."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.error = failures, error
        self.attempts = 0
        self.reports: list[tuple[str, float]] = []

    async def attempt(self) -> str:
        self.attempts += 1
        if self.error is not None:
            raise self.error
        if self.attempts <= self.failures:
            raise StoreUnavailable(f"away ({self.attempts})")
        return "stored"

    def report(self, exc: StoreUnavailable, delay: float) -> None:
        self.reports.append((str(exc), delay))


async def test_each_unavailable_attempt_is_reported_with_its_delay_until_one_succeeds():
    outage = Outage(failures=3)
    result = await retry_while_unavailable(outage.attempt, outage.report, first_s=0.01, max_s=0.02)
    assert result == "stored" and outage.attempts == 4
    assert outage.reports == [("away (1)", 0.01), ("away (2)", 0.02), ("away (3)", 0.02)]


async def test_an_error_that_is_not_an_outage_ends_the_retrying_at_once():
    outage = Outage(failures=0, error=ValueError("the data itself"))
    with pytest.raises(ValueError, match="the data itself"):
        await retry_while_unavailable(outage.attempt, outage.report, first_s=0.01)
    assert outage.attempts == 1 and outage.reports == []


async def test_stop_ends_the_wait_and_starts_no_further_attempt():
    outage = Outage(failures=1_000)
    stop = asyncio.Event()
    retrying = asyncio.create_task(
        retry_while_unavailable(outage.attempt, outage.report, first_s=60.0, max_s=60.0, stop=stop)
    )
    while not outage.reports:
        await asyncio.sleep(0.01)
    stop.set()
    assert await asyncio.wait_for(retrying, 5) is None  # not after the 60 s wait
    assert outage.attempts == 1
    assert await retry_while_unavailable(outage.attempt, outage.report, stop=stop) is None
    assert outage.attempts == 1, "no attempt once stop is set"


@pytest.mark.integration
async def test_a_store_is_opened_once_the_database_is_reachable_again(pg_dsn):
    proxy = await TcpProxy.start_for(pg_dsn)
    await proxy.cut()
    delays: list[float] = []

    def unavailable(exc: StoreUnavailable, delay: float) -> None:
        delays.append(delay)
        if len(delays) == 2:
            asyncio.get_running_loop().create_task(proxy.restore())

    try:
        store = await asyncio.wait_for(
            retry_while_unavailable(
                lambda: TelemetryStore.open(proxy.dsn(pg_dsn), timeout_s=0.5),
                unavailable,
                first_s=0.05,
                max_s=0.1,
            ),
            30,
        )
        try:
            assert await store.check_writable() is None
        finally:
            await store.close()
        assert delays[:2] == [0.05, 0.1]
    finally:
        await proxy.close()
