"""A versioned, immutable set of zones in GBFS precedence order, the index built once for it, and
vectorised rule resolution: which rule governs each located point for its vehicle type and time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np

from geofence.gbfs import zones_from_gbfs, zones_to_gbfs
from geofence.index import Membership, ZoneIndex
from geofence.zones import InvalidZone, Rule, Zone, ZoneKind

_NEVER = np.iinfo(np.int64).max
_NONE = np.int32(np.iinfo(np.int32).max)  # "no zone" while taking minima over zone numbers


@dataclass(frozen=True, slots=True, eq=False)
class EffectiveRules:
    """The GBFS rule in force at each point for its vehicle type (arrays aligned with the points).

    zone        int32    zone whose rule sets the ride_* flags; -1: global rules (or the default)
    speed_zone  int32    zone whose rule sets maximum_speed_kph; -1: global rules or no limit
    maximum_speed_kph float64, NaN where no rule sets a limit
    Where no rule at all applies, everything is allowed and there is no limit.
    """

    zone: np.ndarray
    ride_start_allowed: np.ndarray
    ride_end_allowed: np.ndarray
    ride_through_allowed: np.ndarray
    maximum_speed_kph: np.ndarray
    speed_zone: np.ndarray
    station_parking: np.ndarray


class ZoneSet:
    """Zones in precedence order (priority, then id: the earlier zone wins where zones overlap, as
    the earlier polygon does in a GBFS file), global rules for everywhere else, and a version.

    Immutable: an edit is a new ZoneSet with a new version. Zone ids are stable across versions,
    which is what lets a ZoneTracker swap versions without false enter/exit events. The index is
    built on first use (`index`) and then shared by every batch.
    """

    def __init__(
        self,
        zones: Iterable[Zone],
        *,
        global_rules: Iterable[Rule | Mapping] = (),
        version: int | str = 0,
        cells: int | None = None,
    ) -> None:
        self.zones: tuple[Zone, ...] = tuple(sorted(zones, key=lambda z: (z.priority, z.id)))
        self.global_rules: tuple[Rule, ...] = tuple(
            r if isinstance(r, Rule) else Rule.model_validate(r) for r in global_rules
        )
        self.version = version
        self._cells = cells
        self.ids: tuple[str, ...] = tuple(z.id for z in self.zones)
        self.position: dict[str, int] = {zid: i for i, zid in enumerate(self.ids)}
        if len(self.position) != len(self.ids):
            seen: set[str] = set()
            dup = next(i for i in self.ids if i in seen or seen.add(i))
            raise InvalidZone(f"zone id {dup!r} appears more than once in zone set {version!r}")
        n = len(self.zones)
        self.kinds = np.array([list(ZoneKind).index(z.kind) for z in self.zones], dtype=np.int8)
        self.is_operating_area = np.array(
            [z.kind == ZoneKind.OPERATING_AREA for z in self.zones], dtype=bool
        )
        self._start_ms = np.array(
            [z.start_ms if z.start is not None else -_NEVER for z in self.zones], dtype=np.int64
        ).reshape(n)
        self._end_ms = np.array(
            [z.end_ms if z.end is not None else _NEVER for z in self.zones], dtype=np.int64
        ).reshape(n)
        windowed = (self._start_ms > -_NEVER) | (self._end_ms < _NEVER)
        self.has_time_windows = bool(windowed.any())
        self._rule_tables()

    # ----------------------------------------------------------------------- construction ----

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        *,
        global_rules: Iterable[Rule | Mapping] = (),
        version: int | str = 0,
        cells: int | None = None,
    ) -> ZoneSet:
        """From zones-table rows (id, name, kind, geometry, rules, priority, start, end; geometry
        and rules as JSON text or parsed). Raises InvalidZone naming the zone and the reason."""
        return cls(
            [Zone.from_row(r) for r in rows],
            global_rules=global_rules,
            version=version,
            cells=cells,
        )

    def to_rows(self) -> list[dict[str, Any]]:
        return [z.to_row() for z in self.zones]

    @classmethod
    def from_gbfs(
        cls, document: Mapping[str, Any], *, version: int | str = 0, language: str | None = None
    ) -> ZoneSet:
        """From a GBFS v3 geofencing_zones.json document (see geofence.gbfs)."""
        zones, global_rules = zones_from_gbfs(document, language=language)
        return cls(zones, global_rules=global_rules, version=version)

    def to_gbfs(
        self, *, last_updated: datetime | str | None = None, ttl: int = 60, language: str = "en"
    ) -> dict[str, Any]:
        """A GBFS v3 geofencing_zones.json document (see geofence.gbfs)."""
        return zones_to_gbfs(
            self.zones, self.global_rules, last_updated=last_updated, ttl=ttl, language=language
        )

    @cached_property
    def index(self) -> ZoneIndex:
        return ZoneIndex(self.zones, cells=self._cells)

    def __len__(self) -> int:
        return len(self.zones)

    def __repr__(self) -> str:
        return f"ZoneSet(version={self.version!r}, zones={len(self.zones)})"

    # --------------------------------------------------------------------------- queries ----

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> Membership:
        """Shortcut for self.index.locate(lat, lon)."""
        return self.index.locate(lat, lon)

    def active(self, zone: np.ndarray, time_ms: np.ndarray) -> np.ndarray:
        """Whether zone[i] is in its time window at time_ms[i] (start inclusive, end exclusive)."""
        return (time_ms >= self._start_ms[zone]) & (time_ms < self._end_ms[zone])

    def vehicle_type_codes(self, vehicle_type: str | Sequence[str] | np.ndarray) -> np.ndarray:
        """Vehicle type strings as this zone set's rule-table codes (unknown types share one code:
        only rules without vehicle_type_ids apply to them)."""
        types = np.asarray(vehicle_type)
        if types.dtype.kind in "iu":
            return types.astype(np.int64)
        if types.ndim == 0:
            return np.int64(self._type_code.get(str(types), self._other_type))
        uniq, inverse = np.unique(types.astype(str), return_inverse=True)
        codes = np.array(
            [self._type_code.get(str(t), self._other_type) for t in uniq], dtype=np.int64
        )
        return codes[inverse]

    def resolve(
        self,
        membership: Membership,
        vehicle_type: str | Sequence[str] | np.ndarray,
        time_ms: np.ndarray | int | None = None,
    ) -> EffectiveRules:
        """The governing rule per point, per GBFS v3 "Geofencing Rule Precedence".

        For each field, the first rule that applies to the vehicle type and sets the field wins,
        scanning zones containing the point in precedence order (rules in array order within a
        zone), then global_rules. The ride_* flags are required in every rule, so they come from the
        first applicable rule; maximum_speed_kph and station_parking may come from a later one (the
        spec's own example). Zones outside their time window at time_ms are ignored; time_ms=None
        ignores time windows. vehicle_type: one string, one per point, or vehicle_type_codes().
        """
        n = len(membership)
        codes = self.vehicle_type_codes(vehicle_type)
        zone = membership.zone
        one_type = np.ndim(codes) == 0
        timed = time_ms is not None and self.has_time_windows
        point = membership.point if timed or not one_type else None
        # Which of the three per-field tables has a rule for each (point, zone) pair, as bits.
        if one_type:
            bits = self._has_bits[:, int(codes)][zone]
            codes = np.broadcast_to(codes, (n,))
        else:
            bits = self._has_bits.ravel()[zone.astype(np.int64) * self._n_codes + codes[point]]
        if timed:
            t = np.broadcast_to(np.asarray(time_ms, dtype=np.int64), (n,))
            bits = np.where(self.active(zone, t[point]), bits, 0)

        def governing(table: np.ndarray, bit: int) -> tuple[np.ndarray, np.ndarray]:
            if not len(zone):  # no point in any zone: the global rules govern every point
                rule = table[len(self.zones), codes]
                return np.full(n, -1, dtype=np.int32), np.where(rule >= 0, rule, self._default)
            candidates = np.where(bits & bit, zone, _NONE)
            win = _segment_min(candidates, membership.ptr, _NONE)
            found = win != _NONE
            row = np.where(found, win, len(self.zones))  # last row: global rules
            rule = table[row, codes]
            rule = np.where(rule >= 0, rule, self._default)
            return np.where(found, win, -1).astype(np.int32), rule

        zone_main, rule_main = governing(self._first_rule, 1)
        speed_zone, rule_speed = governing(self._speed_rule, 2)
        _, rule_parking = governing(self._parking_rule, 4)
        speed = self._r_speed[rule_speed]
        return EffectiveRules(
            zone=zone_main,
            ride_start_allowed=self._r_start[rule_main],
            ride_end_allowed=self._r_end[rule_main],
            ride_through_allowed=self._r_through[rule_main],
            maximum_speed_kph=speed,
            speed_zone=np.where(np.isnan(speed), -1, speed_zone).astype(np.int32),
            station_parking=self._r_parking[rule_parking],
        )

    # ---------------------------------------------------------------------------- private ----

    def _rule_tables(self) -> None:
        """Per (zone or global, vehicle-type code): the index of the first applicable rule, of the
        first that sets a speed limit, and of the first that sets station_parking (-1: none)."""
        names = sorted(
            {t for z in self.zones for r in z.rules for t in (r.vehicle_type_ids or ())}
            | {t for r in self.global_rules for t in (r.vehicle_type_ids or ())}
        )
        self.vehicle_types: tuple[str, ...] = tuple(names)
        self._type_code = {t: i for i, t in enumerate(names)}
        self._other_type = len(names)
        self._n_codes = len(names) + 1
        rule_lists = [z.rules for z in self.zones] + [self.global_rules]
        flat: list[Rule] = [r for rules in rule_lists for r in rules]
        shape = (len(rule_lists), self._n_codes)
        first = np.full(shape, -1, dtype=np.int64)
        speed = np.full(shape, -1, dtype=np.int64)
        parking = np.full(shape, -1, dtype=np.int64)
        k = 0
        for row, rules in enumerate(rule_lists):
            for rule in rules:
                for code in range(self._n_codes):
                    name = names[code] if code < len(names) else None
                    applies = rule.vehicle_type_ids is None or (
                        name is not None and name in rule.vehicle_type_ids
                    )
                    if not applies:
                        continue
                    if first[row, code] < 0:
                        first[row, code] = k
                    if speed[row, code] < 0 and rule.maximum_speed_kph is not None:
                        speed[row, code] = k
                    if parking[row, code] < 0 and rule.station_parking is not None:
                        parking[row, code] = k
                k += 1
        self._first_rule, self._speed_rule, self._parking_rule = first, speed, parking
        self._has_bits = ((first >= 0) * 1 + (speed >= 0) * 2 + (parking >= 0) * 4).astype(np.int8)
        # Rule fields as arrays; one extra row at the end is the default (all allowed, no limit).
        self._default = len(flat)
        self._r_start = np.array([r.ride_start_allowed for r in flat] + [True], dtype=bool)
        self._r_end = np.array([r.ride_end_allowed for r in flat] + [True], dtype=bool)
        self._r_through = np.array([r.ride_through_allowed for r in flat] + [True], dtype=bool)
        self._r_speed = np.array(
            [np.nan if r.maximum_speed_kph is None else r.maximum_speed_kph for r in flat]
            + [np.nan],
            dtype=np.float64,
        )
        self._r_parking = np.array([bool(r.station_parking) for r in flat] + [False], dtype=bool)


def _segment_min(values: np.ndarray, ptr: np.ndarray, fill: int) -> np.ndarray:
    """Minimum of each CSR row (fill for empty rows)."""
    n = len(ptr) - 1
    out = np.full(n, fill, dtype=values.dtype)
    counts = np.diff(ptr)
    rows = np.flatnonzero(counts)
    if len(rows):
        out[rows] = np.minimum.reduceat(values, ptr[:-1][rows])
    return out
