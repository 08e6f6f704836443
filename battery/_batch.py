"""A batch as the estimators see it: the fresh samples sorted by (vehicle, time), with what every
estimator needs per sample (interval, charge moved, energy, charging, SoC jumps) derived once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from battery._groups import Groups
from battery._state import VehicleArrays
from battery.config import BatteryPolicy, BatteryType
from telemetry.batch import UNKNOWN, TelemetryBatch


class VehicleParams:
    """Each vehicle's pack parameters from its type, by vehicle id (NaN: type unknown)."""

    def __init__(self, types: Sequence[BatteryType]) -> None:
        self.types = list(types)
        self.size = 0
        self.type_idx = np.empty(0, dtype=np.int64)
        self.nominal_ah = np.empty(0)
        self.nominal_v = np.empty(0)
        self.low_soc = np.empty(0)
        self.swappable = np.empty(0, dtype=bool)
        self.max_rate = np.empty(0)

    def grow(self, size: int) -> None:
        if size <= self.size:
            return
        size = max(size, 2 * self.size, 1024)
        extra = size - self.size
        self.type_idx = np.concatenate([self.type_idx, np.full(extra, -1, dtype=np.int64)])
        self.nominal_ah = np.concatenate([self.nominal_ah, np.full(extra, np.nan)])
        self.nominal_v = np.concatenate([self.nominal_v, np.full(extra, np.nan)])
        # Untyped vehicles still get SoC alerts and discontinuity checks at generic levels.
        self.low_soc = np.concatenate([self.low_soc, np.full(extra, 20.0)])
        self.swappable = np.concatenate([self.swappable, np.zeros(extra, dtype=bool)])
        self.max_rate = np.concatenate([self.max_rate, np.full(extra, 100.0)])
        self.size = size

    def assign(self, vehicles: np.ndarray, type_idx: np.ndarray) -> None:
        self.grow(int(vehicles.max()) + 1)
        self.type_idx[vehicles] = type_idx
        for name, attr, untyped in (
            ("nominal_ah", "nominal_ah", np.nan),
            ("nominal_v", "nominal_v", np.nan),
            ("low_soc", "low_soc_pct", 20.0),
            ("swappable", "swappable", False),
            ("max_rate", "max_soc_rate_pct_per_h", 100.0),
        ):
            # Index -1 (no type) takes the last row: what grow() gives an untyped vehicle.
            table = np.array([getattr(t, attr) for t in self.types] + [untyped])
            getattr(self, name)[vehicles] = table[type_idx]

    def by_type(self, type_idx: np.ndarray, soc: np.ndarray, what: str) -> np.ndarray:
        """An OCV-curve function ("relative" or "energy_fraction") of each item's type; NaN for
        items of no type."""
        if self.types and all(t.ocv is self.types[0].ocv for t in self.types):
            # One curve for every type (the fleet's packs are all NMC): one pass, no mask per
            # type; the curve is elementwise, so the items of a type get what they would alone.
            return np.where(type_idx >= 0, getattr(self.types[0].ocv, what)(soc), np.nan)
        out = np.full(len(soc), np.nan)
        for k, t in enumerate(self.types):
            m = type_idx == k
            if m.any():
                out[m] = getattr(t.ocv, what)(soc[m])
        return out

    def full_energy(self, type_idx: np.ndarray) -> np.ndarray:
        """Wh per Ah and per nominal volt at 100 % SoC, by type."""
        table = np.array([t.ocv.full_energy_per_ah_v() for t in self.types] + [np.nan])
        return table[type_idx]


class SortedSamples:
    """Fresh samples of a batch in (vehicle, time) order and the per-sample quantities derived
    from them and from each vehicle's carried state.

    Interval k is (previous sample of the vehicle, sample k]; the current and flags of sample k
    stand for the whole interval (a TCU's mean current since its last report; the simulator
    reports exactly that). An interval longer than max_gap_s, or the first sample ever, is a gap.
    """

    def __init__(
        self,
        batch: TelemetryBatch,
        rows: np.ndarray,
        st: VehicleArrays,
        par: VehicleParams,
        policy: BatteryPolicy,
    ) -> None:
        v = batch.vehicle[rows].astype(np.int64)
        self.v = v
        self.t = t = batch.time_ms[rows].astype(np.int64)
        g = self.g = Groups(v)
        veh = self.veh = g.vehicles
        self.soc = soc = batch.soc_pct[rows].astype(np.float64)
        self.i = i = batch.pack_a[rows].astype(np.float64)
        self.pv = pv = batch.pack_v[rows].astype(np.float64)
        self.aux = batch.aux_v[rows].astype(np.float64)
        self.odo = batch.odometer_m[rows].astype(np.float64)
        self.ign = ign = batch.ignition[rows]
        self.lock = batch.locked[rows]
        chg = batch.charging[rows]
        self.type_idx = par.type_idx[v]
        self.nominal_ah = nominal_ah = par.nominal_ah[v]
        self.nominal_v = par.nominal_v[v]

        prev_t = g.prev(t, st.t[veh])
        self.dt = dt = np.where(prev_t >= 0, (t - prev_t) / 1000.0, np.nan)
        self.gap = gap = ~(dt <= policy.max_gap_s)
        self.cur_bad = cur_bad = ~np.isfinite(i)
        self.int_ok = int_ok = ~gap & ~cur_bad
        dt0 = np.where(int_ok, dt, 0.0)
        # Charge into the pack (Ah, current positive = discharging) and energy out of it (Wh).
        self.dq = np.where(int_ok, -i * dt0 / 3600.0, 0.0)
        self.v_eff = v_eff = g.ffill(pv, np.isfinite(pv), st.v_last[veh])
        self.e_ok = e_ok = int_ok & np.isfinite(v_eff)
        self.dwh = np.where(e_ok, v_eff * np.where(e_ok, i, 0.0) * dt0 / 3600.0, 0.0)

        # Charging: the flag where reported, else a clearly negative current, else as before.
        i_chg = policy.charging_current_c * nominal_ah
        by_current = np.isfinite(i) & np.isfinite(i_chg)
        flagged = chg >= 0
        # No pack type, no threshold: 0 A (np.where costs a quarter of np.nan_to_num here).
        threshold = np.where(np.isnan(i_chg), 0.0, i_chg)
        observed = np.where(flagged, chg, i < -threshold).astype(np.int8)
        self.chg_eff = g.ffill(observed, flagged | by_current, st.chg[veh])
        self.charging = self.chg_eff == 1
        self.ign_eff = g.ffill(ign, ign >= 0, st.ign[veh])
        # Driving: ignition on (cars), else unlocked (e-bikes); never while charging.
        self.driving = ~self.charging & ((ign == 1) | ((ign == UNKNOWN) & (self.lock == 0)))

        # SoC discontinuities: a change no charging or driving can make in the time between
        # two reports. Upwards on a swappable pack it is a swap.
        self.soc_known = sk = np.isfinite(soc)
        self.soc_ff = g.ffill(soc, sk, st.soc[veh])
        soc_before = g.ffill(soc, sk, st.soc[veh], inclusive=False)
        t_before = g.ffill(t, sk, st.t_soc[veh], inclusive=False)
        self.soc_before = soc_before
        dsoc = soc - soc_before
        hours = (t - t_before) / 3.6e6
        with np.errstate(invalid="ignore"):
            self.jump = (
                sk
                & np.isfinite(soc_before)
                & (np.abs(dsoc) >= policy.jump_pct)
                & (np.abs(dsoc) > par.max_rate[v] * hours)
            )
            self.swap = self.jump & (dsoc >= policy.swap_jump_pct) & par.swappable[v]
        # History segment of each sample: swaps so far in the batch (the sample's own included);
        # only the last one's items survive into the state.
        cs = np.cumsum(self.swap)
        self.hseg = cs - (cs[g.starts] - self.swap[g.starts])[g.g]
        self.n_swaps = self.hseg[g.ends]
        self.current_pack = self.hseg == self.n_swaps[g.g]

    def group_cumsum(self, x: np.ndarray) -> np.ndarray:
        """Inclusive running sum of x within each vehicle's run."""
        cs = np.cumsum(x)
        return cs - (cs[self.g.starts] - x[self.g.starts])[self.g.g]
