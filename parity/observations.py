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
    rows = np.lexsort((obs.time_ms, obs.vehicle))
    rows = rows[obs.locked[rows] != UNKNOWN]
    v, t, lk = obs.vehicle[rows], obs.time_ms[rows], obs.locked[rows]
    same = np.zeros(len(rows), bool)
    same[1:] = v[1:] == v[:-1]
    prev = np.full(len(rows), UNKNOWN, np.int8)
    prev[1:] = lk[:-1]
    prev[~same] = UNKNOWN
    start = (prev == 1) & (lk == 0)
    end = (prev == 0) & (lk == 1)
    edges = np.flatnonzero(start | end)
    ev, et, es = v[edges], t[edges], start[edges]
    # A vehicle's edges alternate start, end: a ride is a start followed by an end of the vehicle.
    pair = np.flatnonzero(es[:-1] & ~es[1:] & (ev[:-1] == ev[1:])) if len(edges) > 1 else []
    pair = np.asarray(pair, np.int64)
    vehicle, started, ended = ev[pair], et[pair], et[pair + 1]
    return Rides(vehicle, started, ended, _ride_distances(obs, vehicle, started, ended, gap_s))


def _ride_distances(
    obs: Observations, vehicle: np.ndarray, started: np.ndarray, ended: np.ndarray, gap_s: float
) -> np.ndarray:
    if not len(vehicle):
        return np.empty(0)
    keys = TimeKeys(obs.time_ms, started, ended)
    # Fixes: the step from each fix to the next of the same vehicle, summed between the ends.
    fix = np.flatnonzero(np.isfinite(obs.lat) & np.isfinite(obs.lon))
    fix = fix[np.lexsort((obs.time_ms[fix], obs.vehicle[fix]))]
    fk = keys.of(obs.vehicle[fix], obs.time_ms[fix])
    lat, lon = obs.lat[fix], obs.lon[fix]
    step = np.zeros(len(fix))
    if len(fix) > 1:
        step[1:] = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
        step[1:][obs.vehicle[fix][1:] != obs.vehicle[fix][:-1]] = 0.0
    cum = np.concatenate([[0.0], np.cumsum(step)])
    lo = np.searchsorted(fk, keys.of(vehicle, started), "left")
    hi = np.searchsorted(fk, keys.of(vehicle, ended), "right")
    # steps lo+1 .. hi-1 lie inside the ride (step k joins fix k-1 and fix k)
    gps = np.where(hi - lo > 1, cum[np.maximum(hi, lo + 1)] - cum[np.minimum(lo + 1, hi)], 0.0)
    # The odometer, where read within gap_s of both ends and not running backwards.
    odo = np.flatnonzero(np.isfinite(obs.odometer_m))
    odo = odo[np.lexsort((obs.time_ms[odo], obs.vehicle[odo]))]
    ok_ = keys.of(obs.vehicle[odo], obs.time_ms[odo])
    olo = np.searchsorted(ok_, keys.of(vehicle, started), "left")
    ohi = np.searchsorted(ok_, keys.of(vehicle, ended), "right") - 1
    has = ohi > olo
    a, b = np.where(has, olo, 0), np.where(has, ohi, 0)
    if len(odo):
        t_odo, m_odo = obs.time_ms[odo], obs.odometer_m[odo]
        near = (t_odo[a] - started <= gap_s * 1000) & (ended - t_odo[b] <= gap_s * 1000)
        delta = m_odo[b] - m_odo[a]
        use = has & near & (delta >= 0)
        return np.where(use, delta, gps)
    return gps


class TimeKeys:
    """Sortable int64 keys of (vehicle, time) for the times given: vehicles apart by more than
    any window, so a search by key never crosses from one vehicle into another."""

    def __init__(self, *times: np.ndarray, margin_ms: int = 86_400_000) -> None:
        times = tuple(c for c in times if len(c))
        lo = min((int(c.min()) for c in times), default=0)
        hi = max((int(c.max()) for c in times), default=0)
        self.t0 = lo - margin_ms
        self.span = hi - lo + 2 * margin_ms + 1

    def of(self, vehicle: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
        return vehicle.astype(np.int64) * self.span + (time_ms.astype(np.int64) - self.t0)
