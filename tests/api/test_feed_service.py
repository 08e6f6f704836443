"""The feed cache and the rate limit, without a server: one build however many ask at once, the
old file while the database is away, a bucket per client address."""

from __future__ import annotations

import asyncio

import pytest

from api.feed_service import FeedCache, RateLimiter
from telemetry.store import StoreUnavailable


async def test_many_requests_at_once_cost_one_build():
    cache = FeedCache()
    started = asyncio.Event()

    async def build() -> bytes:
        started.set()
        await asyncio.sleep(0)  # let every other request arrive while this one builds
        return b"{}"

    answers = await asyncio.gather(*(cache.get("vehicle_status", 30, build) for _ in range(20)))
    assert cache.builds == 1 and started.is_set()
    assert sum(1 for _, cached in answers if not cached) == 1
    assert {body for body, _ in answers} == {b"{}"}


async def test_a_ttl_of_zero_builds_every_time_and_a_disabled_cache_never_keeps():
    zero, off = FeedCache(), FeedCache(enabled=False)

    async def build() -> bytes:
        return b"x"

    for _ in range(3):
        await zero.get("f", 0, build)
        await off.get("f", 30, build)
    assert zero.builds == 3 and off.builds == 3


async def test_the_old_file_is_served_while_the_database_is_away_and_none_is_not_invented():
    cache = FeedCache()
    cache.retry_s = 0.0

    async def good() -> bytes:
        return b"old"

    async def down() -> bytes:
        raise StoreUnavailable("database gone")

    await cache.get("vehicle_status", 0, good)
    assert await cache.get("vehicle_status", 0, down) == (b"old", True)
    assert cache.stale_served == 1
    with pytest.raises(StoreUnavailable):
        await cache.get("station_status", 0, down)

    async def broken() -> bytes:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await cache.get("vehicle_status", 0, broken)


def test_each_address_has_its_own_bucket_and_the_wait_is_told():
    limiter = RateLimiter(per_s=0.001, burst=3)
    assert [limiter.admit("10.0.0.1") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.admit("10.0.0.1")
    assert wait > 0
    assert limiter.admit("10.0.0.2") == 0.0
    assert RateLimiter(per_s=0, burst=1).admit("x") == 0.0  # 0: no limit
