"""Energy per km while driving, separated from loads that run by the hour, and the range it
leaves with the energy still in the pack.
"""

from __future__ import annotations

import numpy as np

from battery._batch import SortedSamples
from battery._groups import decayed_sums
from battery._state import VehicleArrays
from battery.config import BatteryPolicy

_MAX_KMH = 300.0  # an interval implying more is an odometer glitch, not driving


def update_energy(st: VehicleArrays, b: SortedSamples, p: BatteryPolicy) -> None:
    """Fit each driving interval's energy at the pack terminals as a·km + b·hours (least squares,
    exponential forgetting over energy_memory_km): a is the vehicle's energy per km, b the load
    that runs whatever the distance (HVAC, lights, DC/DC, the TCU). Range (BatteryCore) is the
    energy the pack holds (capacity × the OCV integral up to the SoC) over a: time-proportional
    loads are left out, like a trip computer's distance-to-empty at steady speed."""
    g, veh = b.g, b.veh
    prev_odo = g.prev(b.odo, st.prev_odo[veh])
    km = (b.odo - prev_odo) / 1000.0
    hours = np.where(b.e_ok, b.dt, 0.0) / 3600.0
    # Both ends driving, and not much longer than the interval before: an interval in which a
    # trip began, or that spans a lost sample, pairs the energy of the sample's own step with
    # distance from before it (and such pairs are not random: they bias the split between
    # distance and time).
    was_driving = g.prev(b.driving, st.drv[veh])
    prev_dt = g.prev(b.dt, st.prev_dt[veh])
    with np.errstate(invalid="ignore"):
        ok = (
            b.driving
            & was_driving
            & b.e_ok
            & ~(b.dt > 1.5 * prev_dt)
            & (km >= 0)
            & (km <= _MAX_KMH * hours)
        )
    idx = np.flatnonzero(ok)
    if not len(idx):
        return
    d, h, y, grp = km[idx], hours[idx], b.dwh[idx], g.g[idx]
    sums, _ = decayed_sums(
        grp,
        g.m,
        d / p.energy_memory_km,
        [d * d, d * h, h * h, d * y, h * y],
        [st.e_dd[veh], st.e_dt[veh], st.e_tt[veh], st.e_dy[veh], st.e_ty[veh]],
    )
    st.e_dd[veh], st.e_dt[veh], st.e_tt[veh], st.e_dy[veh], st.e_ty[veh] = sums
    st.e_km[veh] += np.bincount(grp, d, g.m)


def energy_per_km(st: VehicleArrays, vehicles: np.ndarray, p: BatteryPolicy) -> np.ndarray:
    """Wh per km at the pack terminals (NaN until min_energy_km of driving with enough variety
    of speed to tell distance from time)."""
    dd, dt, tt = st.e_dd[vehicles], st.e_dt[vehicles], st.e_tt[vehicles]
    det = dd * tt - dt * dt
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (tt * st.e_dy[vehicles] - dt * st.e_ty[vehicles]) / det
        ok = (st.e_km[vehicles] >= p.min_energy_km) & (det > 1e-3 * dd * tt) & (a > 0)
    return np.where(ok, a, np.nan)
