"""Where rides begin and end: the vehicle reporting itself unlocked, then locked again.

The unlock and lock commands of a rental are what make a vehicle report that; a lock engaged by
hand ends a ride as well, and a command that failed ends nothing. Vectorised over the batch: a
ride boundary is a change of the `locked` flag between consecutive samples of a vehicle (its
previous value carried over from earlier batches); samples that do not report it keep the last
reported value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TRIP_SOURCE = "trip"


@dataclass(frozen=True, slots=True)
class TripBoundary:
    """A ride's start (unlocked) or end (locked again): the sample that first reported it."""

    vehicle: int
    time_ms: int
    lat: float | None
    lon: float | None


@dataclass(slots=True)
class TripTransitions:
    starts: list[TripBoundary] = field(default_factory=list)
    ends: list[TripBoundary] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.starts or self.ends)


class TripTracker:
    """Each vehicle's last reported lock state and time, turning batches into ride boundaries.

    A vehicle first seen unlocked opens no ride (its start is unknown); samples not newer than
    the vehicle's last processed one (late uploads, duplicates) are ignored here: they cannot
    move a boundary that was already announced, only the ride's figures (measured from the
    stored samples, see trips.measure).
    """

    def __init__(self) -> None:
        self._t = np.empty(0, dtype=np.int64)
        self._locked = np.empty(0, dtype=np.int8)

    def _grow(self, n: int) -> None:
        old = len(self._t)
        if n <= old:
            return
        n = max(n, 2 * old)
        t = np.full(n, -1, dtype=np.int64)
        t[:old] = self._t
        locked = np.full(n, -1, dtype=np.int8)
        locked[:old] = self._locked
        self._t, self._locked = t, locked

    def restore(self, states: Mapping[int, tuple[int, bool | None]]) -> None:
        """vehicle -> (newest stored sample time ms, newest reported `locked`) from
        vehicle_state, which is written in the same transaction as the boundaries."""
        if not states:
            return
        self._grow(max(states) + 1)
        for v, (t, locked) in states.items():
            self._t[v] = max(self._t[v], t)
            self._locked[v] = -1 if locked is None else int(locked)

    def process(self, batch: Any) -> TripTransitions:
        """Ride starts and ends in a TelemetryBatch (vehicle, time_ms, lat, lon, locked)."""
        out = TripTransitions()
        vehicle = np.asarray(batch.vehicle, dtype=np.int64)
        if not len(vehicle):
            return out
        time_ms = np.asarray(batch.time_ms, dtype=np.int64)
        locked = np.asarray(batch.locked, dtype=np.int8)
        self._grow(int(vehicle.max()) + 1)
        rows = np.lexsort((time_ms, vehicle))
        rows = rows[time_ms[rows] > self._t[vehicle[rows]]]
        # Only samples that report the lock decide anything; duplicates (vehicle, time) once.
        newest = _newest_time_per_vehicle(vehicle[rows], time_ms[rows])
        rows = rows[locked[rows] >= 0]
        if len(rows):
            keep = np.ones(len(rows), dtype=bool)
            keep[1:] = (vehicle[rows[1:]] != vehicle[rows[:-1]]) | (
                time_ms[rows[1:]] != time_ms[rows[:-1]]
            )
            rows = rows[keep]
            v, cur = vehicle[rows], locked[rows]
            first = np.ones(len(rows), dtype=bool)
            first[1:] = v[1:] != v[:-1]
            prev = np.empty_like(cur)
            prev[1:] = cur[:-1]
            prev[first] = self._locked[v[first]]
            self._emit(batch, rows, np.flatnonzero((prev == 1) & (cur == 0)), out.starts)
            self._emit(batch, rows, np.flatnonzero((prev == 0) & (cur == 1)), out.ends)
            last = np.ones(len(rows), dtype=bool)
            last[:-1] = v[1:] != v[:-1]
            self._locked[v[last]] = cur[last]
        vs, ts = newest
        self._t[vs] = np.maximum(self._t[vs], ts)
        return out

    @staticmethod
    def _emit(batch: Any, rows: np.ndarray, at: np.ndarray, into: list[TripBoundary]) -> None:
        for i in rows[at]:
            lat, lon = float(batch.lat[i]), float(batch.lon[i])
            ok = np.isfinite(lat) and np.isfinite(lon)
            into.append(
                TripBoundary(
                    int(batch.vehicle[i]),
                    int(batch.time_ms[i]),
                    lat if ok else None,
                    lon if ok else None,
                )
            )


def _newest_time_per_vehicle(v: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vehicles, newest time) of rows sorted by vehicle then time."""
    if not len(v):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    last = np.ones(len(v), dtype=bool)
    last[:-1] = v[1:] != v[:-1]
    return v[last], t[last]
