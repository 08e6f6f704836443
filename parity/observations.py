"""One side's observations of a shadow batch as columns (fleetgate's positions, or the legacy
platform's forwarded positions), and the rides either side's samples imply."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telemetry.earth import haversine_m

UNKNOWN = -1  # a flag (locked, ignition, immobilised) the sample does not report


@dataclass(frozen=True, slots=True)
class Observations:
    """Samples of one side, one row each; any order. time_ms and received_ms in ms since the
    epoch (received_ms -1: unknown); NaN: not reported; flags int8 1/0, UNKNOWN not reported."""

    vehicle: np.ndarray
    time_ms: np.ndarray
    received_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    soc_pct: np.ndarray
    odometer_m: np.ndarray
    locked: np.ndarray
    ignition: np.ndarray
    immobilised: np.ndarray

    def __len__(self) -> int:
        return len(self.vehicle)

    @classmethod
    def of(cls, **columns) -> Observations:
        """From lists or arrays: vehicle and time_ms required, the others default to unknown."""
        n = len(columns["vehicle"])
        i64 = {"vehicle", "time_ms", "received_ms"}
        flags = {"locked", "ignition", "immobilised"}
        out = {}
        for name in cls.__slots__:
            value = columns.get(name)
            if name in i64:
                out[name] = (
                    np.full(n, -1, np.int64) if value is None else np.asarray(value, np.int64)
                )
            elif name in flags:
                if value is None:
                    out[name] = np.full(n, UNKNOWN, np.int8)
                else:
                    a = np.asarray(value, dtype=object)
                    out[name] = np.array(
                        [UNKNOWN if x is None else int(bool(x)) for x in a], np.int8
                    ).reshape(n)
            else:
                out[name] = (
                    np.full(n, np.nan)
                    if value is None
                    else np.asarray(
                        [np.nan if x is None else x for x in np.asarray(value, object)], np.float64
                    ).reshape(n)
                )
        return cls(**out)

    def take(self, rows: np.ndarray) -> Observations:
        return Observations(*(getattr(self, name)[rows] for name in self.__slots__))


@dataclass(frozen=True, slots=True)
class Rides:
    """Ended rides, one row each: vehicle, start and end (ms since the epoch), distance (m)."""

    vehicle: np.ndarray
    started_ms: np.ndarray
    ended_ms: np.ndarray
    distance_m: np.ndarray

    def __len__(self) -> int:
        return len(self.vehicle)

    @classmethod
    def of(cls, vehicle, started_ms, ended_ms, distance_m) -> Rides:
        return cls(
            np.asarray(vehicle, np.int64),
            np.asarray(started_ms, np.int64),
            np.asarray(ended_ms, np.int64),
            np.asarray([np.nan if d is None else d for d in distance_m], np.float64).reshape(
                len(vehicle)
            ),
        )


def rides_from_observations(obs: Observations, gap_s: float = 60.0) -> Rides:
    """The rides the samples imply, by the trips core's rule (trips.tracker): a ride starts at
    the first sample reporting the vehicle unlocked after one reporting it locked, and ends at the
    first reporting it locked again (a vehicle first seen unlocked opens none; a ride not yet
    ended is left out). Its distance is the odometer's advance where it is reported within gap_s
    of both ends, else the sum of the great-circle steps between its fixes."""
    order = np.lexsort((obs.time_ms, obs.vehicle))
    # a dense vehicle number per sorted row: keys of (vehicle, time) then stay small
    v_sorted = obs.vehicle[order]
    dense = np.zeros(len(order), np.int64)
    if len(order):
        dense[1:] = np.cumsum(v_sorted[1:] != v_sorted[:-1])
    known = obs.locked[order] != UNKNOWN
    rows = order[known]
    v, t, lk, d = obs.vehicle[rows], obs.time_ms[rows], obs.locked[rows], dense[known]
    same = np.zeros(len(rows), bool)
    same[1:] = v[1:] == v[:-1]
    prev = np.full(len(rows), UNKNOWN, np.int8)
    prev[1:] = lk[:-1]
    prev[~same] = UNKNOWN
    start = (prev == 1) & (lk == 0)
    end = (prev == 0) & (lk == 1)
    edges = np.flatnonzero(start | end)
    ev, et, es, ed = v[edges], t[edges], start[edges], d[edges]
    # A vehicle's edges alternate start, end: a ride is a start followed by an end of the vehicle.
    pair = np.flatnonzero(es[:-1] & ~es[1:] & (ev[:-1] == ev[1:])) if len(edges) > 1 else []
    pair = np.asarray(pair, np.int64)
    vehicle, started, ended = ev[pair], et[pair], et[pair + 1]
    distance = _ride_distances(obs, order, dense, ed[pair], started, ended, gap_s)
    return Rides(vehicle, started, ended, distance)


def _ride_distances(
    obs: Observations,
    order: np.ndarray,
    dense: np.ndarray,
    ride: np.ndarray,
    started: np.ndarray,
    ended: np.ndarray,
    gap_s: float,
) -> np.ndarray:
    """Per ride (dense vehicle number, start, end; in (vehicle, start) order, so their keys are
    ascending and do not overlap), the odometer's advance or else the fixes' steps summed."""
    if not len(ride):
        return np.empty(0)
    keys = TimeKeys(obs.time_ms)
    sk, ek = keys.of(ride, started), keys.of(ride, ended)
    # Fixes: the steps between consecutive fixes inside the same ride, and only those.
    finite = np.isfinite(obs.lat[order]) & np.isfinite(obs.lon[order])
    fix = order[finite]
    fk = keys.of(dense[finite], obs.time_ms[fix])
    r = np.searchsorted(sk, fk, "right") - 1
    inside = (r >= 0) & (fk <= ek[np.maximum(r, 0)])
    i = np.flatnonzero(inside[1:] & inside[:-1] & (r[1:] == r[:-1]))
    a, b = fix[i], fix[i + 1]
    steps = haversine_m(obs.lat[a], obs.lon[a], obs.lat[b], obs.lon[b])
    gps = np.bincount(r[i + 1], weights=steps, minlength=len(sk))
    # The odometer, where read within gap_s of both ends and not running backwards.
    has_odo = np.isfinite(obs.odometer_m[order])
    odo = order[has_odo]
    if not len(odo):
        return gps
    ok_ = keys.of(dense[has_odo], obs.time_ms[odo])
    lo = np.searchsorted(ok_, sk, "left")
    hi = np.searchsorted(ok_, ek, "right") - 1
    has = hi > lo
    first, last = odo[np.where(has, lo, 0)], odo[np.where(has, hi, 0)]
    t_odo, m_odo = obs.time_ms, obs.odometer_m
    near = (t_odo[first] - started <= gap_s * 1000) & (ended - t_odo[last] <= gap_s * 1000)
    delta = m_odo[last] - m_odo[first]
    return np.where(has & near & (delta >= 0), delta, gps)


class TimeKeys:
    """Sortable int64 keys of (vehicle, time) for the times given: vehicles apart by more than
    any window, so a search by key never crosses from one vehicle into another."""

    def __init__(self, *times: np.ndarray, margin_ms: int = 86_400_000) -> None:
        # margin_ms: longer than any window searched with these keys
        times = tuple(c for c in times if len(c))
        lo = min((int(c.min()) for c in times), default=0)
        hi = max((int(c.max()) for c in times), default=0)
        self.t0 = lo - margin_ms
        self.span = hi - lo + 2 * margin_ms + 1

    def of(self, vehicle: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
        return vehicle.astype(np.int64) * self.span + (time_ms.astype(np.int64) - self.t0)
