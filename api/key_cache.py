"""Verified API keys remembered for a short while (api_key_cache_s), so that a busy client does
not cost a database lookup per request; a revoked key stops working within that time."""

from __future__ import annotations

import time

from telemetry.store import ApiKey


class KeyCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._keys: dict[str, tuple[ApiKey, float]] = {}

    def get(self, key: str) -> ApiKey | None:
        hit = self._keys.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: str, record: ApiKey) -> None:
        if self.ttl_s > 0:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[key] = (record, time.monotonic() + self.ttl_s)
