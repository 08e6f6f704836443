"""Column helpers the mappers share: a field of many source objects as one numpy column, times
in ISO 8601 as milliseconds, and the gateway's checks (telemetry.decoder's reasons, in its
order) applied to whole columns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from migration.records import TIME_BEYOND_RETENTION, Problem
from telemetry.schema import HEADING_RANGE, LAT_RANGE, LON_RANGE, SOC_RANGE, SPEED_RANGE

# How many problem rows one chunk lists per reason; every rejection is counted all the same.
PROBLEMS_PER_REASON = 10

_NUMBER = frozenset((int, float))
FLOAT32_COLUMNS = ("speed_kmh", "heading_deg", "soc_pct", "pack_v", "pack_a", "aux_v")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_OR_NONE = frozenset((int, float, type(None)))
_BOOL_OR_NONE = frozenset((bool, type(None)))
_TRISTATE = {None: -1, False: 0, True: 1}
_UTC_SUFFIXES = frozenset(("+00:00", "+0000", "Z"))


@dataclass(frozen=True)
class TimeWindow:
    """Times a migrated sample may have: not later than now + max_future_ms (the gateway's
    time_in_future) and not earlier than the store's retention (time_beyond_retention: the
    partition would be dropped at once). Unlike live traffic, old samples are the point."""

    now_ms: int
    max_future_ms: int = 5 * 60_000
    oldest_ms: int | None = None  # None: no retention known (analyse without a database)


def numbers(values: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """(float64 column with NaN where missing, mask of values that are present but no number)."""
    out = np.full(len(values), np.nan)
    # A bool or a numeric string would slip through numpy's conversion: look at the types first
    # (map(type) runs in C; the set is small).
    if set(map(type, values)) <= _NUMBER_OR_NONE:
        try:
            out[:] = values  # None becomes NaN; the common, fast case
            return out, np.zeros(len(values), bool)
        except OverflowError:
            pass
    wrong = np.fromiter((v is not None and type(v) not in _NUMBER for v in values), bool)
    for i, v in enumerate(values):
        if type(v) in _NUMBER:
            try:
                out[i] = float(v)
            except OverflowError:
                wrong[i] = True
    with np.errstate(invalid="ignore"):
        wrong |= ~np.isfinite(out) & np.fromiter((v is not None for v in values), bool)
    out[wrong] = np.nan
    return out, wrong


def tristates(values: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """(int8 column -1/0/1, mask of values present but not booleans)."""
    if set(map(type, values)) <= _BOOL_OR_NONE:
        return np.array([_TRISTATE[v] for v in values], np.int8), np.zeros(len(values), bool)
    out = np.fromiter((1 if v is True else 0 if v is False else -1 for v in values), np.int8)
    wrong = np.fromiter((v is not None and type(v) is not bool for v in values), bool)
    return out, wrong


def iso_times_ms(values: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ms since the epoch, mask of values missing or not ISO 8601 with a zone). Traccar
    writes `2026-11-20T08:00:01.000+00:00`: a column of UTC times is parsed by numpy at once."""
    n = len(values)
    if n and all(type(v) is str for v in values):
        suffixes = {v[-1:] if v[-1:] == "Z" else v[-6:] for v in values}
        if suffixes <= _UTC_SUFFIXES:
            local = [v[:-1] if v[-1] == "Z" else v[:-6] for v in values]
            try:
                return np.array(local, dtype="datetime64[ms]").astype(np.int64), np.zeros(n, bool)
            except ValueError:
                pass
    out = np.zeros(n, np.int64)
    bad = np.zeros(n, bool)
    for i, v in enumerate(values):
        try:
            t = datetime.fromisoformat(v)  # type: ignore[arg-type]
            if t.tzinfo is None:
                raise ValueError("no time zone")
            out[i] = round(t.timestamp() * 1000)
        except (TypeError, ValueError, OverflowError):
            bad[i] = True
    return out, bad


class Verdicts:
    """Each row's first reason for rejection, in the order checks are made (the decoder's), with
    the problem rows listed for the first few of each reason. Codes, not texts, per row: a
    chunk may hold a hundred thousand rows."""

    def __init__(self, n: int, file: str, record_ids: Sequence[object]) -> None:
        self.code = np.zeros(n, dtype=np.int16)  # 0 = importable, else 1 + index into _why
        self._why: list[tuple[str, str, bool]] = []  # (reason, field, listed as problems)
        self._file = file
        self._ids = record_ids

    def reject(self, mask: np.ndarray, reason: str, field: str, listed: bool = True) -> None:
        """Reject the rows of mask not rejected yet. listed=False: counted, but not listed as
        problem rows (the positions of a rejected vehicle: its own row says why)."""
        new = mask & (self.code == 0)
        if new.any():
            self._why.append((reason, field, listed))
            self.code[new] = len(self._why)

    def check_ranges(self, cols: dict[str, np.ndarray], names: dict[str, str]) -> None:
        """The decoder's range checks (telemetry.schema), naming the source's field."""
        with np.errstate(invalid="ignore"):
            for col, (lo, hi), why in (
                ("lat", LAT_RANGE, "lat_out_of_range"),
                ("lon", LON_RANGE, "lon_out_of_range"),
                ("soc_pct", SOC_RANGE, "soc_out_of_range"),
                ("speed_kmh", SPEED_RANGE, "speed_out_of_range"),
                ("heading_deg", HEADING_RANGE, "heading_out_of_range"),
            ):
                values = cols[col]
                self.reject((values < lo) | (values > hi), why, names[col])

    def check_storable(self, cols: dict[str, np.ndarray], names: dict[str, str]) -> None:
        """A number finite in float64 but not in its float32 column is a wrong_type, as the
        decoder has it (telemetry.decoder._store_numbers)."""
        with np.errstate(invalid="ignore"):
            for col in FLOAT32_COLUMNS:
                if col in cols:
                    self.reject(np.abs(cols[col]) > _FLOAT32_MAX, "wrong_type", names.get(col, col))

    def check_time(self, time_ms: np.ndarray, window: TimeWindow, field: str) -> None:
        self.reject(time_ms > window.now_ms + window.max_future_ms, "time_in_future", field)
        if window.oldest_ms is not None:
            self.reject(time_ms < window.oldest_ms, TIME_BEYOND_RETENTION, field)

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def tally(self) -> tuple[dict[str, int], list[Problem]]:
        """Rejections counted by reason, and the first PROBLEMS_PER_REASON of each as rows."""
        skipped: dict[str, int] = {}
        problems: list[Problem] = []
        for code, (reason, field, listed) in enumerate(self._why, start=1):
            rows = np.flatnonzero(self.code == code)
            skipped[reason] = skipped.get(reason, 0) + len(rows)
            if not listed:
                continue
            listed = sum(1 for p in problems if p.reason == reason)
            for i in rows[: max(PROBLEMS_PER_REASON - listed, 0)].tolist():
                problems.append(Problem(self._file, str(self._ids[i]), field, reason))
        return skipped, problems
