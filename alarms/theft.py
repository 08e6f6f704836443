"""Theft detection: a vehicle that moves while it reports itself locked (and not immobilised).

A locked vehicle is anchored at its first plausible fix after locking. A sample supports
movement when its speed is above TheftPolicy.speed_kmh or its plausible fix lies more than
noise_m from the anchor (GPS noise of a parked vehicle stays within it). As in the geofence
core, an episode starts only after `fixes` consecutive supporting samples (one glitch never
raises an alarm) and ends after `calm_fixes` consecutive calm ones, or when the vehicle is
unlocked or immobilised; one episode raises one alarm, at its start. During an episode the anchor
follows the vehicle (calm then means staying within noise_m of its last fix), so a vehicle
carried off and left elsewhere alarms once, not forever.

Vectorised over the batch: the flags of every sample and the vehicles with nothing to decide
(unlocked throughout, or locked, anchored and calm throughout) are found with array operations;
the per-sample state machine runs in Python only over the vehicles left, which are few.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP
from telemetry.earth import haversine_m

ALARM_SOURCE = "alarm"
MOVED_WHILE_LOCKED = "alarm.moved_while_locked"  # stored as its catalogue name
STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class TheftPolicy:
    """noise_m: how far a parked vehicle's fixes wander; speed_kmh: a reported speed above it is
    movement; fixes / calm_fixes: consecutive samples that start / end an episode."""

    noise_m: float = 50.0
    speed_kmh: float = 8.0
    fixes: int = 2
    calm_fixes: int = 3

    def __post_init__(self) -> None:
        if self.noise_m <= 0 or self.speed_kmh <= 0 or self.fixes < 1 or self.calm_fixes < 1:
            raise ValueError("TheftPolicy needs noise_m, speed_kmh > 0 and fixes, calm_fixes >= 1")


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One alarm for the events table (the fields the store inserts, as DeviceEvent's)."""

    vehicle: int
    time_ms: int
    type: str
    detail: dict[str, Any] | None = None
    source: str = ALARM_SOURCE


@dataclass(slots=True)
class TheftResult:
    events: list[AlarmEvent] = field(default_factory=list)
    # Exported state of every vehicle whose state changed (the others' stored state is right).
    states: dict[int, dict[str, Any]] = field(default_factory=dict)


class TheftDetector:
    """Per-vehicle theft state over batches of samples (see the module's docstring).

    Samples are taken per vehicle in time order; one not newer than the vehicle's last processed
    sample (late, duplicate) is ignored. A sample without `locked` (or `immobilised`) keeps the
    vehicle's last reported value.
    """

    def __init__(self, policy: TheftPolicy = TheftPolicy()) -> None:
        self.policy = policy
        self._t = np.empty(0, dtype=np.int64)  # last processed sample time; -1: never
        self._locked = np.empty(0, dtype=np.int8)  # last reported (-1 unknown)
        self._immobilised = np.empty(0, dtype=np.int8)
        self._armed = np.empty(0, dtype=bool)  # locked and not immobilised at the last sample
        self._anchor_lat = np.empty(0, dtype=np.float64)
        self._anchor_lon = np.empty(0, dtype=np.float64)
        self._support = np.empty(0, dtype=np.int32)  # consecutive moving samples
        self._calm = np.empty(0, dtype=np.int32)  # consecutive calm samples during an episode
        self._active = np.empty(0, dtype=bool)  # in an episode (its alarm raised)

    # ------------------------------------------------------------------------------- state --

    def _grow(self, n: int) -> None:
        old = len(self._t)
        if n <= old:
            return
        n = max(n, 2 * old)

        def grown(a: np.ndarray, fill) -> np.ndarray:
            out = np.full(n, fill, dtype=a.dtype)
            out[:old] = a
            return out

        self._t = grown(self._t, -1)
        self._locked = grown(self._locked, -1)
        self._immobilised = grown(self._immobilised, -1)
        self._armed = grown(self._armed, False)
        self._anchor_lat = grown(self._anchor_lat, np.nan)
        self._anchor_lon = grown(self._anchor_lon, np.nan)
        self._support = grown(self._support, 0)
        self._calm = grown(self._calm, 0)
        self._active = grown(self._active, False)

    def in_episode(self, vehicle: int) -> bool:
        return vehicle < len(self._active) and bool(self._active[vehicle])

    def export_state(self, vehicles: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """JSON-able state per vehicle (all vehicles seen by default), for vehicle_state.theft."""
        if vehicles is None:
            vehicles = np.flatnonzero(self._t >= 0).tolist()
        return {int(v): self._export_one(int(v)) for v in vehicles if self._t[int(v)] >= 0}

    def _export_one(self, v: int) -> dict[str, Any]:
        anchor = None
        if np.isfinite(self._anchor_lat[v]):
            anchor = [float(self._anchor_lat[v]), float(self._anchor_lon[v])]
        return {
            "v": STATE_FORMAT,
            "t": int(self._t[v]),
            "locked": int(self._locked[v]),
            "immobilised": int(self._immobilised[v]),
            "armed": bool(self._armed[v]),
            "anchor": anchor,
            "support": int(self._support[v]),
            "calm": int(self._calm[v]),
            "active": bool(self._active[v]),
        }

    def restore(
        self, states: Mapping[int, Mapping[str, Any]], last_time_ms: Mapping[int, int] | None = None
    ) -> None:
        """Resume from exported states; last_time_ms (the newest stored sample of each vehicle)
        keeps samples older than what was already processed ignored."""
        if not states:
            return
        self._grow(max(int(v) for v in states) + 1)
        for v, st in states.items():
            v = int(v)
            if st.get("v") != STATE_FORMAT:
                raise ValueError(f"vehicle {v}: unknown theft state format {st.get('v')!r}")
            self._t[v] = max(int(st["t"]), int((last_time_ms or {}).get(v, -1)))
            self._locked[v] = int(st.get("locked", -1))
            self._immobilised[v] = int(st.get("immobilised", -1))
            self._armed[v] = bool(st.get("armed", False))
            anchor = st.get("anchor")
            self._anchor_lat[v], self._anchor_lon[v] = anchor if anchor else (np.nan, np.nan)
            self._support[v] = int(st.get("support", 0))
            self._calm[v] = int(st.get("calm", 0))
            self._active[v] = bool(st.get("active", False))

    # ----------------------------------------------------------------------------- process --

    def process(self, batch: Any) -> TheftResult:
        """Evaluate a TelemetryBatch (vehicle, time_ms, lat, lon, speed_kmh, locked,
        immobilised, flags)."""
        result = TheftResult()
        rows = _fresh_rows(batch, self)
        if not len(rows):
            return result
        s = _Rows.take(batch, rows, self)
        quiet = self._quiet_vehicles(s)
        # The quiet ones only advance their clock and last reported flags.
        last = s.group_end - 1
        v_quiet = s.vehicles[quiet]
        self._t[v_quiet] = s.time_ms[last[quiet]]
        self._locked[v_quiet] = s.locked[last[quiet]]
        self._immobilised[v_quiet] = s.immobilised[last[quiet]]
        for g in np.flatnonzero(~quiet):
            v = int(s.vehicles[g])
            self._run_vehicle(v, s, int(s.group_start[g]), int(s.group_end[g]), result)
            result.states[v] = self._export_one(v)
        return result

    def _quiet_vehicles(self, s: _Rows) -> np.ndarray:
        """Per vehicle of the batch: True where no sample can change its theft state."""
        v = s.vehicles
        unarmed_all = ~np.logical_or.reduceat(s.armed, s.group_start)
        armed_all = np.logical_and.reduceat(s.armed, s.group_start)
        candidate_any = np.logical_or.reduceat(s.candidate, s.group_start)
        idle = ~self._active[v] & (self._support[v] == 0)
        anchored = np.isfinite(self._anchor_lat[v])
        unlocked_quiet = unarmed_all & ~self._armed[v] & ~anchored
        parked_quiet = armed_all & self._armed[v] & anchored & ~candidate_any
        # Locked without a fix so far (a car in a garage): it waits for one to anchor it.
        blind = armed_all & self._armed[v] & ~anchored
        blind_quiet = blind & ~np.logical_or.reduceat(s.fix_ok, s.group_start)
        return idle & (unlocked_quiet | parked_quiet | blind_quiet)

    def _run_vehicle(self, v: int, s: _Rows, start: int, end: int, result: TheftResult) -> None:
        for i in range(start, end):
            self._t[v] = s.time_ms[i]
            self._locked[v], self._immobilised[v] = s.locked[i], s.immobilised[i]
            if not s.armed[i]:  # unlocked or immobilised: no theft, any episode is over
                self._disarm(v)
            elif not self._armed[v] or np.isnan(self._anchor_lat[v]):
                self._armed[v] = True
                if s.fix_ok[i]:  # where it was locked: movement is measured from here
                    self._anchor_lat[v], self._anchor_lon[v] = s.lat[i], s.lon[i]
            else:
                self._step(v, s, i, result)

    def _step(self, v: int, s: _Rows, i: int, result: TheftResult) -> None:
        """One sample of an armed, anchored vehicle through the episode's hysteresis."""
        p = self.policy
        has_fix = bool(s.fix_ok[i])
        distance = float("nan")
        if has_fix:
            distance = float(
                haversine_m(self._anchor_lat[v], self._anchor_lon[v], s.lat[i], s.lon[i])
            )
        speed = float(s.speed[i])
        if speed > p.speed_kmh or distance > p.noise_m:
            self._support[v] += 1
            self._calm[v] = 0
            if not self._active[v] and self._support[v] >= p.fixes:
                self._active[v] = True
                result.events.append(self._alarm(v, s, i, distance, speed))
            if self._active[v] and has_fix:  # during an episode rest is judged where it got to
                self._anchor_lat[v], self._anchor_lon[v] = s.lat[i], s.lon[i]
        elif has_fix or np.isfinite(speed):  # evidence of rest (a sample of nothing is not)
            self._support[v] = 0
            if self._active[v]:
                self._calm[v] += 1
                if self._calm[v] >= p.calm_fixes:
                    self._active[v] = False
                    self._calm[v] = 0
                    if has_fix:  # it came to rest here: the new anchor
                        self._anchor_lat[v], self._anchor_lon[v] = s.lat[i], s.lon[i]

    def _disarm(self, v: int) -> None:
        self._armed[v] = False
        self._anchor_lat[v] = self._anchor_lon[v] = np.nan
        self._support[v] = self._calm[v] = 0
        self._active[v] = False

    def _alarm(self, v: int, s: _Rows, i: int, distance: float, speed: float) -> AlarmEvent:
        detail: dict[str, Any] = {
            "anchor": [float(self._anchor_lat[v]), float(self._anchor_lon[v])],
            "distance_m": round(distance, 1) if np.isfinite(distance) else None,
            "speed_kmh": round(speed, 1) if np.isfinite(speed) else None,
        }
        if s.fix_ok[i]:
            detail["lat"], detail["lon"] = float(s.lat[i]), float(s.lon[i])
        return AlarmEvent(v, int(s.time_ms[i]), MOVED_WHILE_LOCKED, detail)


def _fresh_rows(batch: Any, det: TheftDetector) -> np.ndarray:
    """Row numbers of the samples to evaluate, by vehicle then time: duplicates (vehicle, time)
    once, and only samples newer than the vehicle's last processed one."""
    vehicle = np.asarray(batch.vehicle, dtype=np.int64)
    if not len(vehicle):
        return np.empty(0, dtype=np.intp)
    time_ms = np.asarray(batch.time_ms, dtype=np.int64)
    rows = np.lexsort((time_ms, vehicle))
    dup = np.zeros(len(rows), dtype=bool)
    dup[1:] = (vehicle[rows[1:]] == vehicle[rows[:-1]]) & (time_ms[rows[1:]] == time_ms[rows[:-1]])
    rows = rows[~dup]
    det._grow(int(vehicle.max()) + 1)
    return rows[time_ms[rows] > det._t[vehicle[rows]]]


@dataclass(slots=True)
class _Rows:
    """The fresh samples by vehicle and time, with their per-sample flags and vehicle groups."""

    time_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed: np.ndarray
    locked: np.ndarray
    immobilised: np.ndarray
    fix_ok: np.ndarray
    armed: np.ndarray
    candidate: np.ndarray  # moving relative to the vehicle's stored anchor (fast-path test)
    vehicles: np.ndarray  # one per group
    group_start: np.ndarray
    group_end: np.ndarray

    @classmethod
    def take(cls, batch: Any, rows: np.ndarray, det: TheftDetector) -> _Rows:
        vehicle = np.asarray(batch.vehicle, dtype=np.int64)[rows]
        # rows are sorted by vehicle: each vehicle's group starts where the vehicle changes
        # (np.unique would sort them again).
        first = np.ones(len(vehicle), dtype=bool)
        first[1:] = vehicle[1:] != vehicle[:-1]
        group_start = np.flatnonzero(first)
        vehicles = vehicle[group_start]
        group_end = np.append(group_start[1:], len(rows))
        group = np.repeat(np.arange(len(vehicles)), group_end - group_start)
        lat = np.asarray(batch.lat, dtype=np.float64)[rows]
        lon = np.asarray(batch.lon, dtype=np.float64)[rows]
        speed = np.asarray(batch.speed_kmh, dtype=np.float64)[rows]
        flags = np.asarray(batch.flags)[rows]
        fix_ok = np.isfinite(lat) & np.isfinite(lon) & ((flags & FLAG_IMPLAUSIBLE_JUMP) == 0)
        locked = _carry_forward(
            np.asarray(batch.locked)[rows], group_start, group, det._locked[vehicles]
        )
        immobilised = _carry_forward(
            np.asarray(batch.immobilised)[rows], group_start, group, det._immobilised[vehicles]
        )
        armed = (locked == 1) & (immobilised != 1)
        anchor_lat, anchor_lon = det._anchor_lat[vehicles][group], det._anchor_lon[vehicles][group]
        with np.errstate(invalid="ignore"):
            far = fix_ok & (haversine_m(anchor_lat, anchor_lon, lat, lon) > det.policy.noise_m)
            candidate = armed & (far | (speed > det.policy.speed_kmh))
        return cls(
            np.asarray(batch.time_ms, dtype=np.int64)[rows],
            lat,
            lon,
            speed,
            locked,
            immobilised,
            fix_ok,
            armed,
            candidate,
            vehicles,
            group_start,
            group_end,
        )


def _carry_forward(
    values: np.ndarray, group_start: np.ndarray, group: np.ndarray, before: np.ndarray
) -> np.ndarray:
    """A tri-state column (-1 = not reported) with each gap filled by the vehicle's last reported
    value: earlier in the batch, else `before` (its last value from earlier batches)."""
    values = values.astype(np.int8).copy()
    values[group_start] = np.where(values[group_start] >= 0, values[group_start], before)
    known = values >= 0
    idx = np.where(known, np.arange(len(values)), 0)
    # Never carry across vehicles: each group's first row is known or stays -1 by itself.
    np.maximum.accumulate(idx, out=idx)
    filled = values[idx]
    same_group = group[idx] == group  # group: each row's vehicle group
    return np.where(known, values, np.where(same_group, filled, -1)).astype(np.int8)
