"""A ride's figures from its stored samples: what billing is given, measured the same way
whoever asks and whenever (never from a query's window).

Distance: the vehicle's odometer where it reports one at both ends of the ride (the vehicle's own
measure, immune to GPS); else the sum of the great-circle steps between the ride's plausible
fixes. Fixes the plausibility filter flagged are left out, and so is a spike of up to three
fixes (the steps into and out of it imply an impossible speed while the fixes around it agree
with each other); a step that still implies an impossible speed counts as a gap. A gap (no fix
for longer than gap_s, or an impossible step) is bridged by the odometer where it is reported at
both sides, else by the straight line, which is a lower bound. Energy is the integral of pack
voltage times current (positive = discharging), over intervals no longer than gap_s; without
current, the state of charge used times the nominal energy of the type's pack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP
from telemetry.earth import haversine_m

_MAX_SPIKE_PASSES = 8  # spikes next to spikes: each pass removes one layer
_MAX_SPIKE_FIXES = 3  # a longer run away from the track is a gap, not a spike


@dataclass(frozen=True, slots=True)
class RidePolicy:
    """max_speed_kmh: no step of the vehicle's type is faster; gap_s: longer without a fix (or a
    power reading) is a gap; pack_wh: the nominal energy of the type's pack (battery core)."""

    max_speed_kmh: float = 80.0
    gap_s: float = 60.0
    pack_wh: float | None = None  # the type's nominal pack energy: energy from SoC without current


@dataclass(frozen=True, slots=True)
class RideSamples:
    """One vehicle's stored samples within a ride, in time order (NaN: not reported)."""

    time_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed_kmh: np.ndarray
    soc_pct: np.ndarray
    pack_v: np.ndarray
    pack_a: np.ndarray
    odometer_m: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.time_ms)


@dataclass(frozen=True, slots=True)
class RideFigures:
    distance_m: float
    distance_source: str | None  # "odometer" | "fixes" | "fixes+odometer"; None: no data
    gps_distance_m: float
    duration_s: float
    energy_wh: float | None
    energy_source: str | None  # "pack_power" (V × I), "soc" (SoC used × nominal pack), None
    soc_start_pct: float | None
    soc_end_pct: float | None
    max_speed_kmh: float | None
    fixes_used: int
    fixes_rejected: int
    start: tuple[float, float] | None  # first plausible fix
    end: tuple[float, float] | None  # last plausible fix
    route: np.ndarray  # row numbers of the fixes used, in time order


def measure_ride(
    samples: RideSamples, started_ms: int, ended_ms: int, policy: RidePolicy = RidePolicy()
) -> RideFigures:
    """The figures of the ride [started_ms, ended_ms] from its samples (see the module)."""
    route = _plausible_fixes(samples, policy.max_speed_kmh)
    lat, lon, t = samples.lat[route], samples.lon[route], samples.time_ms[route]
    steps = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]) if len(route) > 1 else np.empty(0)
    dt_s = np.diff(t) / 1000.0
    with np.errstate(divide="ignore", invalid="ignore"):
        impossible = steps / np.maximum(dt_s, 1e-3) * 3.6 > policy.max_speed_kmh
    gap = impossible | (dt_s > policy.gap_s)
    gps_distance = float(steps[~impossible].sum())
    fix_distance, bridged = _bridge_gaps(samples, route, steps, gap, policy)
    distance, source = fix_distance, ("fixes+odometer" if bridged else "fixes")
    odometer = _odometer_distance(samples, (ended_ms - started_ms) / 1000.0, policy)
    if odometer is not None:
        distance, source = odometer, "odometer"
    elif not len(route):
        source = None
    usable = (samples.flags & FLAG_IMPLAUSIBLE_JUMP) == 0
    speed = samples.speed_kmh[usable & np.isfinite(samples.speed_kmh)]
    soc = samples.soc_pct[np.isfinite(samples.soc_pct)]
    fixes = int((np.isfinite(samples.lat) & np.isfinite(samples.lon)).sum())
    return RideFigures(
        distance_m=round(float(distance), 1),
        distance_source=source,
        gps_distance_m=round(gps_distance, 1),
        duration_s=(ended_ms - started_ms) / 1000.0,
        **_energy(samples, soc, policy),
        soc_start_pct=float(soc[0]) if len(soc) else None,
        soc_end_pct=float(soc[-1]) if len(soc) else None,
        max_speed_kmh=float(speed.max()) if len(speed) else None,
        fixes_used=len(route),
        fixes_rejected=fixes - len(route),
        start=(float(lat[0]), float(lon[0])) if len(route) else None,
        end=(float(lat[-1]), float(lon[-1])) if len(route) else None,
        route=route,
    )


def _plausible_fixes(s: RideSamples, max_speed_kmh: float) -> np.ndarray:
    """Rows of the fixes to measure with: with a position, not flagged, not part of a spike."""
    rows = np.flatnonzero(
        np.isfinite(s.lat) & np.isfinite(s.lon) & ((s.flags & FLAG_IMPLAUSIBLE_JUMP) == 0)
    )
    for _ in range(_MAX_SPIKE_PASSES):
        if len(rows) < 3:
            break
        spike = _spikes(s, rows, max_speed_kmh)
        if not spike.any():
            break
        rows = rows[~spike]
    return rows


def _spikes(s: RideSamples, rows: np.ndarray, max_speed_kmh: float) -> np.ndarray:
    """A run of up to _MAX_SPIKE_FIXES fixes is a spike when the steps into and out of it imply
    an impossible speed while the fixes around it agree with each other; a first or last fix
    whose only step is impossible while the next step is fine is one too."""
    fast = _too_fast(s, rows[:-1], rows[1:], max_speed_kmh)
    spike = np.zeros(len(rows), dtype=bool)
    spike[0] = fast[0] and not fast[1]
    spike[-1] = fast[-1] and not fast[-2]
    for width in range(1, _MAX_SPIKE_FIXES + 1):
        if len(rows) < width + 2:
            break
        # Run k..k+width-1: step k-1 -> k into it (fast[k-1]), step out fast[k+width-1].
        into, out = fast[: len(rows) - width - 1], fast[width:]
        around = _too_fast(s, rows[: -width - 1], rows[width + 1 :], max_speed_kmh)
        for start in np.flatnonzero(into & out & ~around) + 1:
            spike[start : start + width] = True
        if spike.any():
            break  # the narrowest spikes first: a wider run may be a spike next to a spike
    return spike


def _too_fast(s: RideSamples, a: np.ndarray, b: np.ndarray, max_speed_kmh: float) -> np.ndarray:
    d = haversine_m(s.lat[a], s.lon[a], s.lat[b], s.lon[b])
    dt = np.maximum((s.time_ms[b] - s.time_ms[a]) / 1000.0, 1e-3)
    return d / dt * 3.6 > max_speed_kmh


def _bridge_gaps(
    s: RideSamples, route: np.ndarray, steps: np.ndarray, gap: np.ndarray, policy: RidePolicy
) -> tuple[float, bool]:
    """The fixes' distance with each gap measured by the odometer where it is reported at both
    sides of the gap (the samples nearest to them with a reading), else as the straight step."""
    total = float(steps[~gap].sum())
    if not gap.any():
        return total, False
    odo_rows = np.flatnonzero(np.isfinite(s.odometer_m))
    bridged = False
    for k in np.flatnonzero(gap):
        a, b = route[k], route[k + 1]
        before = odo_rows[odo_rows <= a]
        after = odo_rows[odo_rows >= b]
        straight = (
            0.0
            if _too_fast(s, np.array([a]), np.array([b]), policy.max_speed_kmh)[0]
            else (float(steps[k]))
        )
        if len(before) and len(after):
            i, j = before[-1], after[0]
            delta = float(s.odometer_m[j] - s.odometer_m[i])
            span_s = (s.time_ms[j] - s.time_ms[i]) / 1000.0
            if 0 <= delta <= policy.max_speed_kmh / 3.6 * max(span_s, 1.0):
                total += max(delta, straight)
                bridged = True
                continue
        total += straight
    return total, bridged


def _odometer_distance(s: RideSamples, duration_s: float, policy: RidePolicy) -> float | None:
    """The odometer's advance over the ride, if it is reported near both ends and plausible."""
    rows = np.flatnonzero(np.isfinite(s.odometer_m))
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    # A reading far inside the ride would leave part of it out: only readings within one gap of
    # either end count.
    gap_ms = policy.gap_s * 1000
    if s.time_ms[first] - s.time_ms[0] > gap_ms or s.time_ms[-1] - s.time_ms[last] > gap_ms:
        return None
    delta = float(s.odometer_m[last] - s.odometer_m[first])
    if not 0 <= delta <= policy.max_speed_kmh / 3.6 * max(duration_s, 1.0):
        return None
    return delta


def _energy(s: RideSamples, soc: np.ndarray, policy: RidePolicy) -> dict:
    """energy_wh and energy_source: the pack's power where current is reported, else the state
    of charge used times the nominal pack energy (a ride that charged counts none)."""
    wh = _energy_wh(s, policy.gap_s)
    if wh is not None:
        return {"energy_wh": wh, "energy_source": "pack_power"}
    if policy.pack_wh is not None and len(soc) >= 2:
        used = max(float(soc[0] - soc[-1]), 0.0) / 100.0 * policy.pack_wh
        return {"energy_wh": round(used, 2), "energy_source": "soc"}
    return {"energy_wh": None, "energy_source": None}


def _energy_wh(s: RideSamples, gap_s: float) -> float | None:
    rows = np.flatnonzero(np.isfinite(s.pack_v) & np.isfinite(s.pack_a))
    if len(rows) < 2:
        return None
    power = s.pack_v[rows].astype(np.float64) * s.pack_a[rows].astype(np.float64)
    dt = np.diff(s.time_ms[rows]) / 1000.0
    ok = dt <= gap_s
    joules = (0.5 * (power[:-1] + power[1:]) * dt)[ok].sum()
    return round(float(joules) / 3600.0, 2)
