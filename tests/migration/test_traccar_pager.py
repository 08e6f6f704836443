"""The pager of a live Traccar pull (migration/traccar_pager.py): the windows it asks for cover a
device's history once, in order, never twice at a boundary, and shrink or split where the history
is dense. Plain data in and out: no server needed."""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migration.traccar_pager import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    DeviceHistoryPager,
    PagingLimits,
    PositionWindow,
    WindowTooLarge,
    traccar_time,
)

T0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def test_times_are_full_iso_8601_with_milliseconds_and_z():
    assert traccar_time(T0) == "2025-12-01T00:00:00.000Z"
    assert traccar_time(T0 + 1) == "2025-12-01T00:00:00.001Z"
    assert traccar_time(T0 - 1) == "2025-11-30T23:59:59.999Z"


def test_a_window_asks_up_to_the_millisecond_before_its_end():
    """Traccar's from/to are both inclusive: asking [start, end - 1 ms] keeps a position that
    lies exactly on a boundary in one window only."""
    query = PositionWindow(7, T0, T0 + HOUR_MS).query()
    assert query == {
        "deviceId": "7",
        "from": "2025-12-01T00:00:00.000Z",
        "to": "2025-12-01T00:59:59.999Z",
    }


def test_windows_follow_each_other_without_gap_or_overlap_and_end_at_the_end():
    pager = DeviceHistoryPager(3, T0, T0 + 3 * DAY_MS + 5, PagingLimits(first_window_ms=DAY_MS))
    windows = []
    while (window := pager.next_window()) is not None:
        windows.append(window)
        assert pager.received(window, 100)
    assert windows[0].start_ms == T0 and windows[-1].end_ms == T0 + 3 * DAY_MS + 5
    assert all(a.end_ms == b.start_ms for a, b in zip(windows, windows[1:]))
    assert pager.done and pager.positions == 100 * len(windows)


def test_a_window_with_too_many_positions_is_dropped_and_asked_for_in_halves():
    pager = DeviceHistoryPager(1, T0, T0 + DAY_MS, PagingLimits(max_positions=1000))
    whole = pager.next_window()
    assert not pager.received(whole, 1001)
    first, second = pager.next_window(), None
    assert (first.start_ms, first.end_ms) == (T0, T0 + DAY_MS // 2)
    assert pager.received(first, 400)
    second = pager.next_window()
    assert (second.start_ms, second.end_ms) == (T0 + DAY_MS // 2, T0 + DAY_MS)
    assert pager.received(second, 600)
    assert pager.next_window() is None and pager.done
    assert (pager.positions, pager.windows_split) == (1000, 1)


def test_windows_grow_while_empty_and_shrink_when_dense():
    limits = PagingLimits(first_window_ms=DAY_MS, max_window_ms=8 * DAY_MS, max_positions=1000)
    pager = DeviceHistoryPager(1, T0, T0 + 100 * DAY_MS, limits)
    spans = []
    for count in (0, 0, 0, 0, 0, 900, 900):
        window = pager.next_window()
        spans.append(window.span_ms // DAY_MS)
        pager.received(window, count)
    assert spans == [1, 2, 4, 8, 8, 8, 4]


def test_a_window_the_server_could_not_answer_is_split():
    pager = DeviceHistoryPager(1, T0, T0 + 4 * MINUTE_MS, PagingLimits(first_window_ms=DAY_MS))
    whole = pager.next_window()
    pager.too_large(whole, "timed out")
    assert pager.next_window() == PositionWindow(1, T0, T0 + 2 * MINUTE_MS)


def test_a_window_at_the_smallest_span_that_is_still_too_much_stops_the_pull():
    pager = DeviceHistoryPager(9, T0, T0 + MINUTE_MS, PagingLimits(max_positions=10))
    window = pager.next_window()
    with pytest.raises(WindowTooLarge, match=r"device 9: .*\(11 positions\) cannot be split"):
        pager.received(window, 11)


def test_a_window_must_be_answered_before_the_next_is_asked_for():
    pager = DeviceHistoryPager(1, T0, T0 + DAY_MS)
    window = pager.next_window()
    with pytest.raises(RuntimeError, match="not been answered"):
        pager.next_window()
    with pytest.raises(RuntimeError, match="not the window asked for"):
        pager.received(PositionWindow(2, T0, T0 + 1), 0)
    assert pager.received(window, 0)


def test_an_empty_history_asks_for_nothing():
    pager = DeviceHistoryPager(1, T0, T0)
    assert pager.next_window() is None and pager.done


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.integers(0, 10 * DAY_MS), max_size=400),
    max_positions=st.integers(5, 80),
    first_window_h=st.integers(1, 72),
)
def test_every_position_is_taken_once_and_in_time_order(times, max_positions, first_window_h):
    """Whatever the density, serving each window as Traccar would (fixTime BETWEEN from AND to,
    from the query's own strings) hands every position over exactly once, in order."""
    times = sorted(T0 + t for t in times)
    limits = PagingLimits(
        first_window_ms=first_window_h * HOUR_MS,
        min_window_ms=1,
        max_window_ms=10 * DAY_MS,
        max_positions=max_positions,
    )
    pager = DeviceHistoryPager(1, T0, T0 + 10 * DAY_MS + 1, limits)
    taken: list[int] = []
    while (window := pager.next_window()) is not None:
        query = window.query()
        assert query["from"] == traccar_time(window.start_ms)
        low = bisect.bisect_left(times, window.start_ms)
        high = bisect.bisect_right(times, window.end_ms - 1)  # `to` included, as Traccar does
        answer = times[low:high]
        try:
            if pager.received(window, len(answer)):
                taken.extend(answer)
        except WindowTooLarge:
            # Only possible where more than max_positions share one millisecond.
            assert window.span_ms == 1
            return
    assert taken == times


def test_windows_widen_again_after_a_dense_stretch_even_under_a_small_limit():
    """A limit of 5 halves the window at 3 positions; 0 positions must still widen it, or a
    quiet stretch after a burst would be crawled through minute by minute."""
    limits = PagingLimits(first_window_ms=HOUR_MS, min_window_ms=MINUTE_MS, max_positions=5)
    pager = DeviceHistoryPager(1, T0, T0 + DAY_MS, limits)
    spans = []
    for count in (4, 4, 0, 0, 0):
        window = pager.next_window()
        spans.append(window.span_ms // MINUTE_MS)
        pager.received(window, count)
    assert spans == [60, 30, 15, 30, 60]
