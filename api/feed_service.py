"""What the public feed routes hold: the system they publish, a cache of built files (each kept
for its ttl, so a crowd of trip planners costs one build per ttl), a per-client rate limit, and
the clock (tests move it to read an hour as past).

The files are built by the feeds core from what api.feed_queries reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from feeds import FeedSystem


@dataclass
class CachedFile:
    body: bytes
    expires: float  # monotonic


class FeedCache:
    """Built files by name, each until its ttl runs out; one build at a time per file (the
    others wait for it rather than building the same file again)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._files: dict[str, CachedFile] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.builds = 0

    async def get(
        self, name: str, ttl_s: float, build: Callable[[], Awaitable[bytes]]
    ) -> tuple[bytes, bool]:
        """The file's body and whether it came from the cache."""
        if not self.enabled:
            self.builds += 1
            return await build(), False
        hit = self._files.get(name)
        if hit is not None and hit.expires > time.monotonic():
            return hit.body, True
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            hit = self._files.get(name)
            if hit is not None and hit.expires > time.monotonic():
                return hit.body, True
            body = await build()
            self.builds += 1
            self._files[name] = CachedFile(body, time.monotonic() + max(ttl_s, 0.0))
            return body, False

    def clear(self) -> None:
        self._files.clear()


class RateLimiter:
    """A token bucket per client address: `per_s` requests a second on average, bursts of
    `burst`. Public feeds have no key to limit by; the address is what there is."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s, self.burst = per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, client: str) -> float:
        """0 when admitted, else the seconds until the next request would be."""
        if self.per_s <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.per_s)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.per_s
        if len(self._buckets) > 100_000:  # a flood of addresses: start over rather than grow
            self._buckets.clear()
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class FeedService:
    """The feeds of one system. `system` None: nothing configured, every feed route is 404."""

    system: FeedSystem | None
    cache: FeedCache = field(default_factory=FeedCache)
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(10.0, 30))
    clock: Callable[[], datetime] = utc_now
    mds_page_size: int = 1000
