"""Per-device CoAP tokens, checked against the registry's credentials with a short-lived cache.

A device wakes, posts and sleeps: its token is checked on every uplink, so answers are cached for
a while (a revocation takes effect within ttl_s). A wrong token is cached briefly too, and a
burst of requests for one (device, token) costs one database query.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable


class TokenVerifier:
    """verify(device_id, token) -> bool, cached; the store's StoreUnavailable passes through."""

    def __init__(
        self,
        verify: Callable[[str, str], Awaitable[bool]],
        *,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 5.0,
        max_entries: int = 200_000,
    ) -> None:
        self._verify = verify
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        # Keyed by a digest, so that the cache holds no token in clear.
        self._cache: dict[tuple[str, bytes], tuple[float, bool]] = {}
        self._asking: dict[tuple[str, bytes], asyncio.Future] = {}

    async def verify(self, device_id: str, token: str) -> bool:
        key = (device_id, hashlib.sha256(token.encode()).digest())
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        asking = self._asking.get(key)
        if asking is not None:
            return await asyncio.shield(asking)
        fut = self._asking[key] = asyncio.get_running_loop().create_future()
        try:
            ok = await self._verify(device_id, token)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: only the waiters (if any) need to see it
            raise
        else:
            fut.set_result(ok)
        finally:
            del self._asking[key]
        if len(self._cache) >= self._max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
        self._cache[key] = (now + (self._ttl_s if ok else self._negative_ttl_s), ok)
        return ok

    def forget(self, device_id: str | None = None) -> None:
        """Drop cached answers (of one device, or all): the next uplink asks the store."""
        if device_id is None:
            self._cache.clear()
        else:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != device_id}
