"""The thresholds a parallel run is judged by (docs/migration.md, "Thresholds"): per metric a
green and a yellow bound; beyond yellow is red. Defaults are the go-live rules' reading of "no
issues"; an operator may tighten or loosen any of them (`--threshold NAME=VALUE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

GO_LIVE_MIN_PERCENT = 10.0  # the share of the fleet a parallel run needs before go-live
GO_LIVE_MIN_DAYS = 14.0
MAX_WINDOW_S = 30 * 86400.0  # a window (match_s, gap_s, ...) longer than a month compares nothing
MAX_VALUE = 1e6  # any other bound (metres, percent, a band's bound)


@dataclass(frozen=True, slots=True)
class Band:
    """green: the bound a green value keeps; yellow: the bound a yellow one keeps; higher: a
    higher value is better (a share) rather than worse (a distance, a delay)."""

    green: float
    yellow: float
    higher: bool

    def colour(self, value: float) -> str:
        if math.isnan(value):
            return "yellow"  # nothing to compare is no evidence either way
        if self.higher:
            return "green" if value >= self.green else "yellow" if value >= self.yellow else "red"
        return "green" if value <= self.green else "yellow" if value <= self.yellow else "red"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Windows (seconds, metres) and the bands of each metric; see docs/migration.md."""

    match_s: float = 30.0  # a legacy sample is covered by a fleetgate sample this close in time
    pair_s: float = 1.0  # two samples this close in time are the same fix (position, state)
    soc_pp: float = 2.0  # SoC readings agree within this many percentage points
    gap_s: float = 300.0  # longer without a sample is a gap
    presence_s: float = 600.0  # heard from this recently before the end of the comparison
    ride_match_s: float = 30.0  # two rides are the same ride if they start this close
    ride_distance_pct: float = 2.0  # a ride's distances agree within this share ...
    ride_distance_m: float = 20.0  # ... or this many metres, whichever is larger
    coverage: Band = Band(0.995, 0.98, higher=True)
    position_p50_m: Band = Band(5.0, 15.0, higher=False)
    position_p95_m: Band = Band(15.0, 30.0, higher=False)
    state: Band = Band(0.995, 0.98, higher=True)
    presence: Band = Band(0.99, 0.95, higher=True)
    latency_p95_s: Band = Band(5.0, 30.0, higher=False)
    one_sided_gaps: Band = Band(0.0, 0.02, higher=False)  # share of vehicles with one
    usage: Band = Band(1.0, 0.99, higher=True)  # share of rides billed alike

    def with_overrides(self, overrides: dict[str, float]) -> Thresholds:
        """These thresholds with NAME=VALUE overrides: a window by its name, a band's bound as
        `coverage.green`; an unknown name or a bad value raises ValueError saying which."""
        changes: dict[str, object] = {}
        known = {f.name: f for f in fields(self)}
        for name, value in overrides.items():
            metric, _, bound = name.partition(".")
            if metric not in known:
                raise ValueError(f"unknown threshold {name!r}; known: {', '.join(self.names())}")
            limit = MAX_WINDOW_S if metric.endswith("_s") and not bound else MAX_VALUE
            if (
                not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value <= limit
            ):
                raise ValueError(f"threshold {name}: {value!r} is not a number in [0, {limit:g}]")
            current = changes.get(metric, getattr(self, metric))
            if isinstance(current, Band):
                if bound not in ("green", "yellow"):
                    raise ValueError(f"threshold {name}: say {metric}.green or {metric}.yellow")
                changes[metric] = replace(current, **{bound: float(value)})
            elif bound:
                raise ValueError(f"unknown threshold {name!r}; known: {', '.join(self.names())}")
            else:
                changes[metric] = float(value)
        for metric, band in changes.items():
            if isinstance(band, Band) and (
                band.green < band.yellow if band.higher else band.green > band.yellow
            ):
                raise ValueError(f"threshold {metric}: green must be stricter than yellow")
        return replace(self, **changes)

    def longest_window_s(self) -> float:
        return max(self.match_s, self.pair_s, self.gap_s, self.presence_s, self.ride_match_s)

    def names(self) -> list[str]:
        out = []
        for f in fields(self):
            v = getattr(self, f.name)
            out += [f"{f.name}.green", f"{f.name}.yellow"] if isinstance(v, Band) else [f.name]
        return out

    def to_json(self) -> dict:
        out: dict = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = (
                {"green": v.green, "yellow": v.yellow, "higher_is_better": v.higher}
                if isinstance(v, Band)
                else v
            )
        return out


DEFAULT_THRESHOLDS = Thresholds()
