"""Per-vehicle zone transitions over telemetry batches (sans-IO): hysteresis against GPS jitter,
enter/exit and violation events, speed-cap changes for slow zones, and per-vehicle state that
round-trips through JSON so a restarted gateway carries on without false events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely

from geofence._geo import M_PER_DEG
from geofence.index import Membership, _expand
from geofence.zoneset import ZoneSet
from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP

EVENT_SOURCE = "geofence"
ZONE_ENTER = "zone_enter"
ZONE_EXIT = "zone_exit"
LEFT_OPERATING_AREA = "left_operating_area"
SPEEDING_IN_ZONE = "speeding_in_zone"
RIDE_THROUGH_FORBIDDEN = "ride_through_forbidden"
_EVENT_ORDER = {
    ZONE_EXIT: 0,
    ZONE_ENTER: 1,
    LEFT_OPERATING_AREA: 2,
    SPEEDING_IN_ZONE: 3,
    RIDE_THROUGH_FORBIDDEN: 4,
}

STATE_FORMAT = 1
_NO_EPISODE = -2  # episode codes: -2 none, -1 under the global rules, >= 0 zone number
_GLOBAL = -1


@dataclass(frozen=True, slots=True)
class Hysteresis:
    """When a change of zone counts. A fix supports entering (leaving) a zone when it is at least
    margin_m inside (outside) the boundary; the change is confirmed after `fixes` consecutive
    supporting fixes. A fix nearer the boundary than the margin resets the count, so jitter along a
    boundary never confirms anything. The margin is capped per zone at half its inscribed radius
    (half the radius for circles) so that small stations can still be entered.
    """

    margin_m: float = 10.0
    fixes: int = 2

    def __post_init__(self) -> None:
        if self.margin_m < 0 or self.fixes < 1:
            raise ValueError("Hysteresis needs margin_m >= 0 and fixes >= 1")


@dataclass(frozen=True, slots=True)
class ViolationPolicy:
    """Thresholds of the violation episodes (each episode yields one event, at its start).

    Speeding starts above maximum_speed_kph + speed_tolerance_kmh and ends at or below the limit.
    Riding where ride_through_allowed is false starts above riding_speed_kmh and ends at or below
    stopped_speed_kmh. An episode also ends when the governing zone changes; samples without a
    speed keep the episode as it is.
    """

    speed_tolerance_kmh: float = 2.0
    riding_speed_kmh: float = 5.0
    stopped_speed_kmh: float = 2.0


@dataclass(frozen=True, slots=True)
class GeofenceEvent:
    """One event for the events table: unique on (vehicle, time_ms, type, source).

    zone_enter / zone_exit carry every zone entered / left at that fix in detail["zones"] (one
    event per fix and type, never one per zone, so simultaneous changes cannot collide on the
    unique key). Violations carry the governing zone in detail["zone"] (None: the global rules).
    Field names match telemetry.batch.DeviceEvent, so the store can insert both alike.
    """

    vehicle: int
    time_ms: int
    type: str
    detail: dict[str, Any]
    source: str = EVENT_SOURCE


@dataclass(frozen=True, slots=True)
class SpeedCapChange:
    """The speed limit in force for a vehicle changed (the slow-zone hook for the commands layer).
    max_speed_kph None: no limit any more."""

    vehicle: int
    time_ms: int
    max_speed_kph: float | None
    zone_id: str | None


@dataclass(slots=True)
class TrackResult:
    events: list[GeofenceEvent] = field(default_factory=list)
    speed_caps: list[SpeedCapChange] = field(default_factory=list)
    # Exported state of every vehicle whose geofence state changed in this batch (zones, pending
    # hysteresis, episodes, speed cap); the others' stored state is still right.
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    used: int = 0  # samples evaluated
    stale: int = 0  # samples not newer than their vehicle's last processed sample


class ZoneTracker:
    """Keeps each vehicle's confirmed zones and turns batches of samples into events.

    Samples are taken per vehicle in time order. A sample without a fix, flagged
    FLAG_IMPLAUSIBLE_JUMP, or not newer than the vehicle's last processed sample (late or
    duplicate, e.g. out of order across batches) is ignored: it neither moves the vehicle nor emits
    anything. The first sample of a vehicle never seen before places it silently (no enter events).

    Locating and rule resolution are vectorised over the batch; the hysteresis state machine loops
    in Python only over the vehicles whose located zones differ from their confirmed zones (or
    that have a change pending), which are few in any batch.
    """

    def __init__(
        self,
        zoneset: ZoneSet,
        *,
        hysteresis: Hysteresis = Hysteresis(),
        violations: ViolationPolicy = ViolationPolicy(),
    ) -> None:
        self.zoneset = zoneset
        self.hysteresis = hysteresis
        self.violations = violations
        self._zones: dict[int, tuple[int, ...]] = {}  # confirmed zone numbers, sorted
        self._pending: dict[int, dict[int, int]] = {}  # zone number -> supporting fixes so far
        self._gone: dict[int, list[str]] = {}  # confirmed zones deleted by a swap: exit next fix
        self._type_name: dict[int, str] = {}
        self._margin_cap: dict[int, float] = {}
        self._t = np.empty(0, dtype=np.int64)  # last processed time; -1: never seen
        self._speeding = np.empty(0, dtype=np.int32)
        self._riding = np.empty(0, dtype=np.int32)
        self._cap = np.empty(0, dtype=np.float64)
        self._cap_known = np.empty(0, dtype=bool)
        self._type_code = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------------ configuration --

    def set_vehicle_types(self, vehicles: Sequence[int] | np.ndarray, types: Sequence[str]) -> None:
        """Vehicle type ('ebike', 'car', ...) by vehicles.id; rules are matched on it."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        if not len(vehicles):
            return
        self._grow(int(vehicles.max()) + 1)
        types = [str(t) for t in types]
        self._type_name.update(zip(vehicles.tolist(), types))
        self._type_code[vehicles] = self.zoneset.vehicle_type_codes(np.array(types))

    def swap(self, zoneset: ZoneSet) -> None:
        """Use a new zone-set version from the next batch on. Vehicles keep their confirmed zones
        by id, so unchanged zones cause no events; a confirmed zone that no longer exists yields a
        zone_exit (reason "zone_removed") at the vehicle's next fix."""
        old = self.zoneset
        # Old zone number -> new one (_NO_EPISODE if deleted); the two extra slots map the episode
        # codes -2 (none) and -1 (global rules) to themselves through negative indexing.
        remap = np.array(
            [zoneset.position.get(zid, _NO_EPISODE) for zid in old.ids] + [_NO_EPISODE, _GLOBAL],
            dtype=np.int32,
        )
        for v, zones in list(self._zones.items()):
            kept = tuple(sorted(int(remap[z]) for z in zones if remap[z] >= 0))
            removed = [old.ids[z] for z in zones if remap[z] < 0]
            if removed:
                self._gone.setdefault(v, []).extend(removed)
            self._set_zones(v, kept)
        for v, pend in list(self._pending.items()):
            pend = {int(remap[z]): c for z, c in pend.items() if remap[z] >= 0}
            if pend:
                self._pending[v] = pend
            else:
                del self._pending[v]
        for arr in (self._speeding, self._riding):
            arr[:] = remap[arr]
        self.zoneset = zoneset
        self._margin_cap = {}
        if self._type_name:
            vehicles = np.fromiter(self._type_name, dtype=np.int64, count=len(self._type_name))
            self._type_code[:] = zoneset.vehicle_type_codes("")
            self._type_code[vehicles] = zoneset.vehicle_type_codes(
                np.array(list(self._type_name.values()))
            )
        else:
            self._type_code[:] = zoneset.vehicle_type_codes("")

    # ------------------------------------------------------------------------------- state --

    def zones_of(self, vehicle: int) -> tuple[str, ...]:
        """Ids of the zones the vehicle is confirmed to be in (for vehicle_state / the live map)."""
        return tuple(self.zoneset.ids[z] for z in self._zones.get(vehicle, ()))

    def export_state(self, vehicles: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """JSON-able state per vehicle (all known vehicles by default), for vehicle_state."""
        if vehicles is None:
            vehicles = np.flatnonzero(self._t >= 0).tolist()
        return {
            int(v): self._export_one(int(v))
            for v in vehicles
            if int(v) < len(self._t) and self._t[int(v)] >= 0
        }

    def restore(
        self, states: Mapping[int, Mapping[str, Any]], last_time_ms: Mapping[int, int] | None = None
    ) -> None:
        """Resume from exported states (after a restart). Zone ids unknown to the current zone set
        are treated like zones removed by swap().

        A state is re-exported (TrackResult.states) only when it changes, so its "t" can be older
        than the vehicle's last processed sample; pass that time (vehicle_state's last sample time,
        committed with the same batch) as last_time_ms so that late samples stay ignored.
        """
        if not states:
            return
        self._grow(max(int(v) for v in states) + 1)
        pos = self.zoneset.position
        for v, st in states.items():
            v = int(v)
            if st.get("v") != STATE_FORMAT:
                raise ValueError(f"vehicle {v}: unknown geofence state format {st.get('v')!r}")
            self._t[v] = max(int(st["t"]), int((last_time_ms or {}).get(v, -1)))
            ids = st.get("zones", [])
            self._set_zones(v, tuple(sorted(pos[i] for i in ids if i in pos)))
            gone = [i for i in ids if i not in pos]
            if gone:
                self._gone[v] = gone
            else:
                self._gone.pop(v, None)
            pend = {pos[i]: int(c) for i, c in (st.get("pending") or {}).items() if i in pos}
            if pend:
                self._pending[v] = pend
            else:
                self._pending.pop(v, None)
            self._speeding[v] = self._episode_code(st.get("speeding"))
            self._riding[v] = self._episode_code(st.get("ride_through"))
            cap = st.get("cap")
            self._cap[v] = np.nan if cap is None else float(cap)
            self._cap_known[v] = True

    # ----------------------------------------------------------------------------- process --

    def process(
        self, batch: Any, *, vehicle_type: Sequence[str] | np.ndarray | None = None
    ) -> TrackResult:
        """Evaluate a TelemetryBatch (or anything with vehicle, time_ms, lat, lon, speed_kmh and
        flags arrays). vehicle_type per sample overrides set_vehicle_types()."""
        return self.process_arrays(
            batch.vehicle,
            batch.time_ms,
            batch.lat,
            batch.lon,
            batch.speed_kmh,
            getattr(batch, "flags", None),
            vehicle_type=vehicle_type,
        )

    def process_arrays(
        self, vehicle, time_ms, lat, lon, speed_kmh=None, flags=None, *, vehicle_type=None
    ) -> TrackResult:
        vehicle = np.asarray(vehicle, dtype=np.int64)
        time_ms = np.asarray(time_ms, dtype=np.int64)
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        speed = (
            np.full(len(vehicle), np.nan)
            if speed_kmh is None
            else np.asarray(speed_kmh, dtype=np.float64)
        )
        usable = np.isfinite(lat) & np.isfinite(lon)
        if flags is not None:
            usable &= (np.asarray(flags) & FLAG_IMPLAUSIBLE_JUMP) == 0
        rows = np.flatnonzero(usable)
        result = TrackResult()
        if not len(rows):
            return result
        rows = rows[np.lexsort((time_ms[rows], vehicle[rows]))]
        # Duplicates (vehicle, time): the first row stands (the store keeps one of them too).
        dup = np.zeros(len(rows), dtype=bool)
        dup[1:] = (vehicle[rows[1:]] == vehicle[rows[:-1]]) & (
            time_ms[rows[1:]] == time_ms[rows[:-1]]
        )
        rows = rows[~dup]
        self._grow(int(vehicle[rows].max()) + 1)
        fresh = time_ms[rows] > self._t[vehicle[rows]]
        result.stale = int((~fresh).sum() + dup.sum())
        rows = rows[fresh]
        if not len(rows):
            return result
        codes = (
            self._type_code[vehicle[rows]]
            if vehicle_type is None
            else self.zoneset.vehicle_type_codes(np.asarray(vehicle_type)[rows])
        )
        s = _Samples(vehicle[rows], time_ms[rows], lat[rows], lon[rows], speed[rows], codes)
        result.used = len(rows)
        self._run(s, result)
        return result

    # ---------------------------------------------------------------------------- internals --

    def _run(self, s: _Samples, result: TrackResult) -> None:
        zs = self.zoneset
        n = len(s.vehicle)
        raw = zs.index.locate(s.lat, s.lon)
        if zs.has_time_windows:
            keep = zs.active(raw.zone.astype(np.int64), s.time_ms[raw.point])
            raw = Membership.from_pairs(n, raw.point[keep], raw.zone[keep])

        first = np.ones(n, dtype=bool)
        first[1:] = s.vehicle[1:] != s.vehicle[:-1]
        last = np.ones(n, dtype=bool)
        last[:-1] = first[1:]
        unit = np.cumsum(first) - 1  # vehicle number within the batch, per sample
        vehicles = s.vehicle[first]
        new = self._t[vehicles] < 0

        # Confirmed zones at the start of the batch, as sorted keys unit * Z + zone. A vehicle never
        # seen before starts where its first fix is.
        n_zones = max(len(zs), 1)
        starts = np.flatnonzero(first)
        for u in np.flatnonzero(new).tolist():
            self._set_zones(int(vehicles[u]), tuple(sorted(raw.zones_of(int(starts[u])).tolist())))
        if self._zones:
            st_lists = [self._zones.get(v, ()) for v in vehicles.tolist()]
            st_count = np.fromiter(map(len, st_lists), dtype=np.int64, count=len(st_lists))
            st_zone = np.fromiter(
                (z for x in st_lists for z in x), dtype=np.int64, count=int(st_count.sum())
            )
        else:  # no vehicle in any zone (no zones, or all outside them): no loop over vehicles
            st_count = np.zeros(len(vehicles), dtype=np.int64)
            st_zone = np.empty(0, dtype=np.int64)
        st_unit = np.repeat(np.arange(len(vehicles)), st_count)
        st_keys = st_unit * n_zones + st_zone  # sorted: units ascending, zones sorted within
        was_op_first = (
            np.bincount(st_unit[zs.is_operating_area[st_zone]], minlength=len(vehicles)) > 0
        )

        raw_point = raw.point
        raw_keys = unit[raw_point] * n_zones + raw.zone
        pos = np.searchsorted(st_keys, raw_keys)
        found = pos < len(st_keys)
        found[found] = st_keys[pos[found]] == raw_keys[found]
        agree = (np.bincount(raw_point[found], minlength=n) == raw.counts) & (
            raw.counts == st_count[unit]
        )
        busy = np.zeros(len(vehicles), dtype=bool)
        busy[unit[~agree]] = True
        if self._pending or self._gone:
            busy |= np.isin(vehicles, np.fromiter([*self._pending, *self._gone], dtype=np.int64))

        # The hysteresis state machine, only for busy vehicles.
        busy_sample = busy[unit]
        distances = self._margin_distances(
            s, raw, busy, busy_sample, found, unit, starts, st_unit, st_zone, n_zones
        )
        conf_point = [raw_point[~busy_sample[raw_point]]]
        conf_zone = [raw.zone[~busy_sample[raw_point]]]
        for u in np.flatnonzero(busy).tolist():
            a = int(starts[u])
            b = int(starts[u + 1]) if u + 1 < len(starts) else n
            pts, zns = self._hysteresis(int(vehicles[u]), s, raw, a, b, distances, result)
            conf_point.append(pts)
            conf_zone.append(zns)
        confirmed = Membership.from_pairs(n, np.concatenate(conf_point), np.concatenate(conf_zone))
        speeding_before = self._speeding[vehicles]
        riding_before = self._riding[vehicles]

        rules = zs.resolve(confirmed, s.code, s.time_ms)
        self._left_operating_area(s, confirmed, first, was_op_first, result)
        self._episodes(s, rules, first, last, unit, vehicles, result)
        self._speed_caps(s, rules, first, last, unit, vehicles, new, result)

        last_rows = np.flatnonzero(last)
        self._t[vehicles] = s.time_ms[last_rows]
        result.events.sort(key=lambda e: (e.vehicle, e.time_ms, _EVENT_ORDER[e.type]))
        result.speed_caps.sort(key=lambda c: (c.vehicle, c.time_ms))
        changed = (
            busy
            | new
            | (speeding_before != self._speeding[vehicles])
            | (riding_before != self._riding[vehicles])
        )
        if result.speed_caps:
            changed |= np.isin(vehicles, [c.vehicle for c in result.speed_caps])
        result.states = {v: self._export_one(v) for v in vehicles[changed].tolist()}

    def _margin_distances(
        self, s, raw, busy, busy_sample, found, unit, starts, st_unit, st_zone, n_zones
    ) -> dict[tuple[int, int], float]:
        """Distance to the boundary for the (fix, zone) pairs the hysteresis will most likely ask
        about: busy fixes vs. their vehicle's zones at the start of the batch, in one vectorised
        call. Pairs that arise only after a change within the batch are computed on demand."""
        if self.hysteresis.margin_m <= 0 or not busy.any():
            return {}
        raw_point = raw.point
        enter = busy_sample[raw_point] & ~found
        pair_i, pair_z = [raw_point[enter]], [raw.zone[enter].astype(np.int64)]
        keep = busy[st_unit]
        n_samples = np.diff(np.append(starts, len(s.vehicle)))
        owner, sample = _expand(starts[st_unit[keep]], n_samples[st_unit[keep]])
        zone = st_zone[keep][owner]
        raw_keys = np.sort(raw_point * n_zones + raw.zone)
        keys = sample * n_zones + zone
        pos = np.minimum(np.searchsorted(raw_keys, keys), max(len(raw_keys) - 1, 0))
        missing = raw_keys[pos] != keys if len(raw_keys) else np.ones(len(keys), dtype=bool)
        pair_i.append(sample[missing])
        pair_z.append(zone[missing])
        i, z = np.concatenate(pair_i), np.concatenate(pair_z)
        if not len(i):
            return {}
        d = self.zoneset.index.distance_to_boundary_m(z, s.lat[i], s.lon[i])
        return dict(zip(zip(i.tolist(), z.tolist()), d.tolist()))

    def _hysteresis(
        self,
        v: int,
        s: _Samples,
        raw: Membership,
        a: int,
        b: int,
        distances: dict[tuple[int, int], float],
        result: TrackResult,
    ) -> tuple[np.ndarray, np.ndarray]:
        hy = self.hysteresis
        cur = set(self._zones.get(v, ()))
        pend = self._pending.pop(v, {})
        gone = self._gone.pop(v, [])
        pts: list[int] = []
        zns: list[int] = []
        for i in range(a, b):
            here = set(raw.zones_of(i).tolist())
            changes = here ^ cur
            for z in [z for z in pend if z not in changes]:
                del pend[z]
            entered, exited = [], []
            for z in sorted(changes):
                entering = z in here
                if not self._beyond_margin(z, s, i, distances):
                    pend.pop(z, None)
                    continue
                count = pend.get(z, 0) + 1
                if count < hy.fixes:
                    pend[z] = count
                    continue
                pend.pop(z, None)
                (cur.add if entering else cur.discard)(z)
                (entered if entering else exited).append(z)
            t = int(s.time_ms[i])
            if exited or gone:
                zones = [self._zone_ref(z) for z in exited]
                zones += [{"id": zid, "reason": "zone_removed"} for zid in gone]
                result.events.append(GeofenceEvent(v, t, ZONE_EXIT, self._where(s, i, zones=zones)))
                gone = []
            if entered:
                zones = [self._zone_ref(z) for z in entered]
                result.events.append(
                    GeofenceEvent(v, t, ZONE_ENTER, self._where(s, i, zones=zones))
                )
            pts.extend([i] * len(cur))
            zns.extend(sorted(cur))
        self._set_zones(v, tuple(sorted(cur)))
        if pend:
            self._pending[v] = pend
        return np.array(pts, dtype=np.int64), np.array(zns, dtype=np.int32)

    def _beyond_margin(
        self, z: int, s: _Samples, i: int, distances: dict[tuple[int, int], float]
    ) -> bool:
        """Is fix i at least the (capped) margin away from zone z's boundary, on its side?"""
        zs = self.zoneset
        if zs.has_time_windows and not zs.active(np.array([z]), s.time_ms[i : i + 1])[0]:
            return True  # a zone outside its time window is far away from everyone
        margin = min(self.hysteresis.margin_m, self._cap_for(z))
        if margin <= 0:
            return True
        d = distances.get((i, z))
        if d is None:
            d = zs.index.distance_to_boundary_m(np.array([z]), s.lat[i : i + 1], s.lon[i : i + 1])[
                0
            ]
        return bool(d >= margin)

    def _cap_for(self, z: int) -> float:
        cap = self._margin_cap.get(z)
        if cap is None:
            zone = self.zoneset.zones[z]
            if zone.is_circle:
                cap = zone.geometry.radius_m / 2
            else:
                # Half the inscribed radius, in a local metric frame around the zone.
                shape = zone.shape
                c = shape.centroid
                kx = M_PER_DEG * math.cos(math.radians(c.y))
                metric = shapely.transform(shape, lambda xy: (xy - (c.x, c.y)) * (kx, M_PER_DEG))
                cap = shapely.length(shapely.maximum_inscribed_circle(metric, 0.1)) / 2
            self._margin_cap[z] = cap = float(cap)
        return cap

    def _left_operating_area(self, s, confirmed, first, was_op_first, result) -> None:
        zs = self.zoneset
        if not zs.is_operating_area.any():
            return
        n = len(s.vehicle)
        op_pairs = zs.is_operating_area[confirmed.zone]
        in_op = np.bincount(confirmed.point[op_pairs], minlength=n) > 0
        before = np.empty(n, dtype=bool)
        before[1:] = in_op[:-1]
        before[first] = was_op_first  # for a vehicle placed just now: where its first fix is
        for i in np.flatnonzero(before & ~in_op).tolist():
            v = int(s.vehicle[i])
            prev = confirmed.zones_of(i - 1).tolist() if not first[i] else []
            left = [self._zone_ref(z) for z in prev if zs.is_operating_area[z]]
            result.events.append(
                GeofenceEvent(
                    v, int(s.time_ms[i]), LEFT_OPERATING_AREA, self._where(s, i, zones=left)
                )
            )

    def _episodes(self, s, rules, first, last, unit, vehicles, result) -> None:
        pol = self.violations
        speed = s.speed
        limit = rules.maximum_speed_kph
        limited = ~np.isnan(limit)
        speeding_zone = np.where(limited, rules.speed_zone, _NO_EPISODE).astype(np.int32)
        with np.errstate(invalid="ignore"):
            on = limited & (speed > limit + pol.speed_tolerance_kmh)
            off = ~limited | (speed <= limit)
        starts = self._schmitt(on, off, speeding_zone, first, last, unit, vehicles, self._speeding)
        for i in starts.tolist():
            z = int(speeding_zone[i])
            detail = self._where(
                s,
                i,
                zone=self._zone_id(z),
                maximum_speed_kph=float(limit[i]),
                speed_kmh=float(speed[i]),
            )
            result.events.append(
                GeofenceEvent(int(s.vehicle[i]), int(s.time_ms[i]), SPEEDING_IN_ZONE, detail)
            )

        forbidden = ~rules.ride_through_allowed
        riding_zone = np.where(forbidden, rules.zone, _NO_EPISODE).astype(np.int32)
        with np.errstate(invalid="ignore"):
            on = forbidden & (speed > pol.riding_speed_kmh)
            off = ~forbidden | (speed <= pol.stopped_speed_kmh)
        starts = self._schmitt(on, off, riding_zone, first, last, unit, vehicles, self._riding)
        for i in starts.tolist():
            z = int(riding_zone[i])
            detail = self._where(s, i, zone=self._zone_id(z), speed_kmh=float(speed[i]))
            result.events.append(
                GeofenceEvent(int(s.vehicle[i]), int(s.time_ms[i]), RIDE_THROUGH_FORBIDDEN, detail)
            )

    @staticmethod
    def _schmitt(on, off, zone, first, last, unit, vehicles, stored) -> np.ndarray:
        """Episodes with two thresholds, vectorised: state = 1 if on, 0 if off or the governing
        zone changed, else the previous state. Updates `stored` (episode code per vehicle) and
        returns the samples where an episode starts."""
        n = len(on)
        if not on.any() and off.all():
            # Nothing starts or holds an episode anywhere (no limit or rule applies): each
            # vehicle's episode ends, as the general path below would find.
            stored[vehicles] = _NO_EPISODE
            return np.empty(0, dtype=np.int64)
        prior = stored[vehicles][unit]
        same = np.empty(n, dtype=bool)
        same[1:] = zone[1:] == zone[:-1]
        same[first] = (prior[first] != _NO_EPISODE) & (zone[first] == prior[first])
        value = np.where(first, on | (~off & same), on)
        decisive = first | on | off | ~same
        state = value[np.maximum.accumulate(np.where(decisive, np.arange(n), 0))]
        before = np.empty(n, dtype=bool)
        before[1:] = state[:-1]
        before = np.where(first, same, before & same)
        stored[vehicles] = np.where(state[last], zone[last], _NO_EPISODE)
        return np.flatnonzero(state & ~before)

    def _speed_caps(self, s, rules, first, last, unit, vehicles, new, result) -> None:
        cap = rules.maximum_speed_kph
        prev = np.empty(len(cap))
        prev[1:] = cap[:-1]
        prev[first] = self._cap[vehicles]
        known = np.ones(len(cap), dtype=bool)
        known[first] = self._cap_known[vehicles]
        same = (cap == prev) | (np.isnan(cap) & np.isnan(prev))
        # A vehicle seen for the first time gets a cap only if there is one to apply.
        changed = np.where(known, ~same, ~np.isnan(cap))
        for i in np.flatnonzero(changed).tolist():
            c = float(cap[i])
            result.speed_caps.append(
                SpeedCapChange(
                    int(s.vehicle[i]),
                    int(s.time_ms[i]),
                    None if math.isnan(c) else c,
                    self._zone_id(int(rules.speed_zone[i])) if not math.isnan(c) else None,
                )
            )
        last_rows = np.flatnonzero(last)
        self._cap[vehicles] = cap[last_rows]
        self._cap_known[vehicles] = True

    # ------------------------------------------------------------------------------ helpers --

    def _grow(self, size: int) -> None:
        if size <= len(self._t):
            return
        size = max(size, 2 * len(self._t), 1024)
        extra = size - len(self._t)
        self._t = np.concatenate([self._t, np.full(extra, -1, dtype=np.int64)])
        self._speeding = np.concatenate([self._speeding, np.full(extra, _NO_EPISODE, np.int32)])
        self._riding = np.concatenate([self._riding, np.full(extra, _NO_EPISODE, np.int32)])
        self._cap = np.concatenate([self._cap, np.full(extra, np.nan)])
        self._cap_known = np.concatenate([self._cap_known, np.zeros(extra, dtype=bool)])
        other = self.zoneset.vehicle_type_codes("")
        self._type_code = np.concatenate([self._type_code, np.full(extra, other, np.int64)])

    def _set_zones(self, v: int, zones: tuple[int, ...]) -> None:
        if zones:
            self._zones[v] = zones
        else:
            self._zones.pop(v, None)

    def _zone_id(self, z: int) -> str | None:
        return self.zoneset.ids[z] if z >= 0 else None

    def _zone_ref(self, z: int) -> dict[str, Any]:
        zone = self.zoneset.zones[z]
        return {"id": zone.id, "kind": zone.kind.value}

    def _where(self, s: _Samples, i: int, **detail: Any) -> dict[str, Any]:
        detail.update(lat=float(s.lat[i]), lon=float(s.lon[i]), zone_set=self.zoneset.version)
        return detail

    def _episode_code(self, episode: Mapping[str, Any] | None) -> int:
        if episode is None:
            return _NO_EPISODE
        zid = episode.get("zone")
        if zid is None:
            return _GLOBAL
        return self.zoneset.position.get(zid, _NO_EPISODE)

    def _episode_state(self, code: int) -> dict[str, Any] | None:
        if code == _NO_EPISODE:
            return None
        return {"zone": self._zone_id(code)}

    def _export_one(self, v: int) -> dict[str, Any]:
        ids = self.zoneset.ids
        cap = float(self._cap[v])
        return {
            "v": STATE_FORMAT,
            "t": int(self._t[v]),
            "zones": [ids[z] for z in self._zones.get(v, ())] + self._gone.get(v, []),
            "pending": {ids[z]: c for z, c in sorted(self._pending.get(v, {}).items())},
            "speeding": self._episode_state(int(self._speeding[v])),
            "ride_through": self._episode_state(int(self._riding[v])),
            "cap": None if math.isnan(cap) else cap,
        }


@dataclass(slots=True)
class _Samples:
    """The batch's usable samples, sorted by (vehicle, time)."""

    vehicle: np.ndarray
    time_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed: np.ndarray
    code: np.ndarray
