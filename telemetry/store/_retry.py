"""Waiting for the database to come back: one retry loop, with delays that double up to a ceiling,
for every caller that must not give up while the store is unavailable (the gateway, the command
dispatcher, the API's start)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

from telemetry.store._errors import StoreUnavailable

T = TypeVar("T")


class Backoff:
    """Delays that double from first_s up to max_s (equal: a fixed delay); reset() after a
    success starts again from first_s."""

    def __init__(self, first_s: float = 0.5, max_s: float = 5.0) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError("a backoff needs 0 < first_s <= max_s")
        self.first_s, self.max_s = first_s, max_s
        self._next = first_s

    def next(self) -> float:
        """The delay before the next attempt."""
        delay = self._next
        self._next = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


@overload
async def retry_while_unavailable(
    attempt: Callable[[], Awaitable[T]],
    on_unavailable: Callable[[StoreUnavailable, float], object],
    *,
    first_s: float = ...,
    max_s: float = ...,
    stop: None = None,
) -> T: ...


@overload
async def retry_while_unavailable(
    attempt: Callable[[], Awaitable[T]],
    on_unavailable: Callable[[StoreUnavailable, float], object],
    *,
    first_s: float = ...,
    max_s: float = ...,
    stop: asyncio.Event,
) -> T | None: ...


async def retry_while_unavailable(attempt, on_unavailable, *, first_s=0.5, max_s=5.0, stop=None):
    """Await attempt() until it returns, and return what it returned.

    After each StoreUnavailable, on_unavailable(error, delay) reports it (log, count) and the
    next attempt follows delay seconds later (Backoff(first_s, max_s)); any other error ends the
    retrying at once. attempt is called anew each time: pass a function, not a coroutine.
    With stop: no attempt starts once it is set, a wait ends when it is set, and None is
    returned then.
    """
    backoff = Backoff(first_s, max_s)
    while stop is None or not stop.is_set():
        try:
            return await attempt()
        except StoreUnavailable as exc:
            delay = backoff.next()
            on_unavailable(exc, delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    return None
