"""Which slices of a Traccar server's position history to ask for, and in what order (sans-IO).

Traccar's `GET /api/positions?deviceId=&from=&to=` has no paging: it returns every position of
one device whose fixTime lies between `from` and `to`, both ends included (SQL BETWEEN), as one
JSON array. A pull therefore pages by device and time window. `DeviceHistoryPager` plans the
windows of one device: it widens them while they come back small, narrows them when they come
back large, and splits a window whose answer was too much (too many positions, too many bytes,
or a server that timed out on it) into halves that are asked for next. It touches no socket; the
HTTP shell (`traccar_pull`) asks it what to fetch and tells it what came back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def traccar_time(ms: int) -> str:
    """A time as Traccar's query parameters want it: full ISO 8601 in UTC with milliseconds
    and a `Z` (`2026-11-01T00:00:00.000Z`); Traccar refuses shorter forms ("too short")."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class PositionWindow:
    """The positions of Traccar device `device_id` with start_ms <= fixTime < end_ms."""

    device_id: int
    start_ms: int
    end_ms: int

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms

    def query(self) -> dict[str, str]:
        """The query string of `GET /api/positions` for this window. Traccar includes both ends,
        so the window asks up to the millisecond before its end: a position at a boundary
        belongs to the next window only, and none comes twice."""
        return {
            "deviceId": str(self.device_id),
            "from": traccar_time(self.start_ms),
            "to": traccar_time(self.end_ms - 1),
        }

    def halves(self) -> tuple[PositionWindow, PositionWindow]:
        middle = self.start_ms + self.span_ms // 2
        return (
            PositionWindow(self.device_id, self.start_ms, middle),
            PositionWindow(self.device_id, middle, self.end_ms),
        )


@dataclass(frozen=True, slots=True)
class PagingLimits:
    """How a pull slices the history.

    Args:
        first_window_ms: the span of a device's first window.
        min_window_ms: a window is never split below this (a second full of positions is
            taken as it comes rather than asked for in ever smaller pieces).
        max_window_ms: windows never grow beyond this, however empty the history is.
        max_positions: an answer with more positions than this is dropped and its window split
            (it bounds the memory one answer takes); windows shrink well before that.
    """

    first_window_ms: int = DAY_MS
    min_window_ms: int = MINUTE_MS
    max_window_ms: int = 30 * DAY_MS
    max_positions: int = 50_000

    def __post_init__(self) -> None:
        if not 0 < self.min_window_ms <= self.first_window_ms <= self.max_window_ms:
            raise ValueError("windows must satisfy 0 < min <= first <= max")
        if self.max_positions < 1:
            raise ValueError("max_positions must be at least 1")


class WindowTooLarge(Exception):
    """A window at the smallest span still brought back too much: the pull cannot go on."""

    def __init__(self, window: PositionWindow, why: str) -> None:
        super().__init__(
            f"Traccar device {window.device_id}: the positions of "
            f"{traccar_time(window.start_ms)} .. {traccar_time(window.end_ms - 1)} ({why}) "
            "cannot be split further"
        )
        self.window = window


class DeviceHistoryPager:
    """The windows of one device's history in [start_ms, end_ms), oldest first.

    Call `next_window()` for what to fetch (None: the history is complete), then exactly one of
    `received(window, count)` with the number of positions it returned, or `too_large(window,
    why)` when the answer could not be taken (too many bytes, a timeout the retries did not
    cure). Windows are handed out one at a time: their order is the order of the positions.
    """

    def __init__(
        self, device_id: int, start_ms: int, end_ms: int, limits: PagingLimits | None = None
    ) -> None:
        if end_ms < start_ms:
            raise ValueError("the history ends before it starts")
        self.device_id = device_id
        self.limits = limits or PagingLimits()
        self.end_ms = end_ms
        self._cursor = start_ms  # everything before it is planned
        self._span = self.limits.first_window_ms
        self._split: deque[PositionWindow] = deque()  # halves waiting, oldest first
        self._asked: PositionWindow | None = None
        self.windows_asked = 0
        self.windows_split = 0
        self.positions = 0

    @property
    def done(self) -> bool:
        return self._asked is None and not self._split and self._cursor >= self.end_ms

    def next_window(self) -> PositionWindow | None:
        if self._asked is not None:
            raise RuntimeError("the previous window has not been answered yet")
        if self._split:
            window = self._split.popleft()
        elif self._cursor < self.end_ms:
            end = min(self._cursor + self._span, self.end_ms)
            window = PositionWindow(self.device_id, self._cursor, end)
            self._cursor = end
        else:
            return None
        self._asked = window
        self.windows_asked += 1
        return window

    def received(self, window: PositionWindow, count: int) -> bool:
        """Whether to keep the window's positions. False: it returned more than max_positions
        and was split; its halves come next (raises WindowTooLarge at the smallest span)."""
        self._answered(window)
        limits = self.limits
        if count > limits.max_positions:
            self._split_up(window, f"{count} positions")
            return False
        self.positions += count
        # Aim the next windows at an eighth to a half of the limit; an empty window always
        # widens the next, so a sparse stretch after a dense one is not crawled through.
        if count > limits.max_positions // 2:
            self._span = max(limits.min_window_ms, window.span_ms // 2)
        elif count * 8 <= limits.max_positions:
            self._span = min(limits.max_window_ms, max(self._span, window.span_ms) * 2)
        return True

    def too_large(self, window: PositionWindow, why: str) -> None:
        """The window's answer could not be taken: split it (WindowTooLarge if it cannot be)."""
        self._answered(window)
        self._split_up(window, why)

    def _answered(self, window: PositionWindow) -> None:
        if window != self._asked:
            raise RuntimeError(f"{window} is not the window asked for ({self._asked})")
        self._asked = None

    def _split_up(self, window: PositionWindow, why: str) -> None:
        if window.span_ms < 2 * self.limits.min_window_ms:
            raise WindowTooLarge(window, why)
        self.windows_split += 1
        first, second = window.halves()
        self._split.appendleft(second)
        self._split.appendleft(first)
        self._span = max(self.limits.min_window_ms, first.span_ms)
