"""What the public feed routes hold: the system they publish, a cache of built files (each kept
for its ttl, so a crowd of trip planners costs one build per ttl), a per-client rate limit, and
the clock (tests move it to read an hour as past).

The files are built by the feeds core from what api.feed_queries reads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from feeds import FeedSystem
from telemetry.store import StoreUnavailable

log = logging.getLogger(__name__)


@dataclass
class CachedFile:
    body: bytes
    expires: float  # monotonic


class FeedCache:
    """Built files by name, each until its ttl runs out; one build at a time per file (the
    others wait for it rather than building the same file again). While the database is
    unavailable, a file built before is served as it was (its last_updated says how old it is:
    trip planners keep a slightly old feed rather than none)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._files: dict[str, CachedFile] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.builds = 0
        self.stale_served = 0
        self.retry_s = 5.0  # after a failed build, how long the old file is served unasked

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
            try:
                body = await build()
            except StoreUnavailable as exc:
                if hit is None:
                    raise
                self.stale_served += 1
                # Not again at once: the requests queued behind this build get the old file too.
                self._files[name] = CachedFile(hit.body, time.monotonic() + self.retry_s)
                log.warning("feed_served_stale", extra={"file": name, "reason": str(exc)})
                return hit.body, True
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
    device_refs: dict[str, str] = field(default_factory=dict)  # MDS device_id -> vehicle_ref
