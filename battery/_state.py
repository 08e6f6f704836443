"""Per-vehicle state of the battery core: one numpy array per field, indexed by vehicle id and
grown on demand, and its JSON-able export (one dict per vehicle) for vehicle_state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

STATE_FORMAT = 1
R_BINS = 64  # resistance histogram: log-spaced bins ...
R_LO_OHM, R_HI_OHM = 2e-3, 5.0  # ... over this range (one bin: ×1.13)
_F, _I, _B, _T = np.float64, np.int64, np.bool_, np.int8
NAN = float("nan")

# name: (dtype, value of a vehicle never seen). Times are ms since the epoch, -1 = none.
FIELDS: dict[str, tuple[type, Any]] = {
    # the newest processed sample, and the last known values carried across batches
    "t": (_I, -1),
    "soc": (_F, NAN),
    "t_soc": (_I, -1),  # newest reported SoC and its time
    "v_last": (_F, NAN),  # newest reported pack voltage
    "prev_v": (_F, NAN),
    "prev_i": (_F, NAN),  # the previous sample's raw values
    "prev_soc": (_F, NAN),
    "prev_odo": (_F, NAN),
    "chg": (_T, -1),
    "ign": (_T, -1),  # charging / ignition as last known
    "drv": (_B, False),  # the previous sample was driving
    "prev_dt": (_F, NAN),  # the previous interval, s
    # pack history (reset by a swap): charge counter, Coulomb window, capacity fit
    "pack_seq": (_I, 0),
    "q": (_F, 0.0),  # charge into the pack, Ah, running total
    "thru": (_F, 0.0),  # |Ah| throughput since the history began
    "idle_q": (_F, 0.0),  # net charge of the idle spell under way
    "ed": (_F, 0.0),  # pack energy (fraction) used driving, total
    "a_soc": (_F, NAN),
    "a_q": (_F, 0.0),
    "a_odo": (_F, NAN),  # the open window's anchor
    "a_ed": (_F, 0.0),
    "a_bad": (_B, False),
    "a_gap": (_B, False),
    "a_chg": (_B, False),
    "c_num": (_F, 0.0),
    "c_den": (_F, 0.0),
    "c_ev": (_F, 0.0),
    "k_num": (_F, 0.0),
    "k_den": (_F, 0.0),
    "k_ev": (_F, 0.0),  # SoC-only: km per energy
    "kb_num": (_F, 0.0),
    "kb_den": (_F, 0.0),
    "kb_ev": (_F, 0.0),  # ... its baseline
    "health_armed": (_B, True),
    # energy per km: least squares of interval energy on distance and duration
    "e_dd": (_F, 0.0),
    "e_dt": (_F, 0.0),
    "e_tt": (_F, 0.0),
    "e_dy": (_F, 0.0),
    "e_ty": (_F, 0.0),
    "e_km": (_F, 0.0),
    # resistance (plus the R_BINS histogram arrays), cached estimate
    "r_ohm": (_F, NAN),
    "r_n": (_F, 0.0),
    # charging session
    "s_on": (_B, False),
    "s_t0": (_I, -1),
    "s_soc0": (_F, NAN),
    "s_wh": (_F, 0.0),
    "s_ah": (_F, 0.0),
    "s_max": (_F, NAN),
    "s_prog_t": (_I, -1),
    "s_fault": (_B, False),
    "low_armed": (_B, True),
    # 12 V: the open parked episode's regression sums on [1, h, exp(-h/tau)]
    "x_on": (_B, False),
    "x_t0": (_I, -1),
    "x_n": (_F, 0.0),
    "x_h0": (_F, NAN),
    "x_h1": (_F, NAN),
    "x_sh": (_F, 0.0),
    "x_shh": (_F, 0.0),
    "x_se": (_F, 0.0),
    "x_see": (_F, 0.0),
    "x_she": (_F, 0.0),
    "x_sy": (_F, 0.0),
    "x_shy": (_F, 0.0),
    "x_sey": (_F, 0.0),
    "x_syy": (_F, 0.0),
    # ... past episodes' drain slopes (V/h), inverse-variance weighted, and the last rest V
    "d_w": (_F, 0.0),
    "d_ws": (_F, 0.0),
    "d_t": (_I, -1),
    "rest_v": (_F, NAN),
    "rest_t": (_I, -1),
    "risk_armed": (_B, True),
    "drain_armed": (_B, True),
    # history rows
    "h_t": (_I, -1),
}


class VehicleArrays:
    """The fields above as arrays of one row per vehicle id, plus the resistance histograms."""

    def __init__(self) -> None:
        self.size = 0
        for name, (dtype, _) in FIELDS.items():
            setattr(self, name, np.empty(0, dtype=dtype))
        self.r_w = np.zeros((0, R_BINS))  # decayed count of pair estimates per bin
        self.r_wl = np.zeros((0, R_BINS))  # ... and of their log(R)

    def grow(self, size: int) -> None:
        if size <= self.size:
            return
        size = max(size, 2 * self.size, 1024)
        extra = size - self.size
        for name, (dtype, default) in FIELDS.items():
            setattr(
                self,
                name,
                np.concatenate([getattr(self, name), np.full(extra, default, dtype=dtype)]),
            )
        self.r_w = np.vstack([self.r_w, np.zeros((extra, R_BINS))])
        self.r_wl = np.vstack([self.r_wl, np.zeros((extra, R_BINS))])
        self.size = size

    def known(self) -> np.ndarray:
        return np.flatnonzero(self.t >= 0)

    def export(self, vehicles: Iterable[int]) -> dict[int, dict[str, Any]]:
        """JSON-able state per vehicle (floats as floats, NaN as None)."""
        idx = np.fromiter(vehicles, dtype=np.int64)
        inside = (idx >= 0) & (idx < self.size)
        idx = idx[inside][self.t[idx[inside]] >= 0]
        if not len(idx):
            return {}
        cols = {}
        for name, (dtype, _) in FIELDS.items():
            values = getattr(self, name)[idx]
            if dtype is _F and np.isnan(values).any():
                cols[name] = [None if x != x else x for x in values.tolist()]
            else:  # tolist() gives Python floats, ints and bools alike
                cols[name] = values.tolist()
        # The non-empty bins of every vehicle's histograms in one pass: nonzero() goes row by
        # row, bins ascending within a row, as flatnonzero() of each row would.
        rows, bins = np.nonzero(self.r_w[idx])
        w, wl = self.r_w[idx[rows], bins].tolist(), self.r_wl[idx[rows], bins].tolist()
        cuts = np.searchsorted(rows, np.arange(len(idx) + 1)).tolist()
        bins = bins.tolist()
        names = list(cols)
        out = {}
        for k, (v, row) in enumerate(zip(idx.tolist(), zip(*cols.values()))):
            state = dict(zip(names, row))
            state["format"] = STATE_FORMAT
            a, b = cuts[k], cuts[k + 1]
            state["r_bins"], state["r_w"], state["r_wl"] = bins[a:b], w[a:b], wl[a:b]
            out[v] = state
        return out

    def restore(self, states: Mapping[int, Mapping[str, Any]]) -> None:
        if not states:
            return
        self.grow(max(int(v) for v in states) + 1)
        for v, st in states.items():
            v = int(v)
            if st.get("format") != STATE_FORMAT:
                raise ValueError(f"vehicle {v}: unknown battery state format {st.get('format')!r}")
            for name, (_dtype, default) in FIELDS.items():
                value = st.get(name, default)
                getattr(self, name)[v] = NAN if value is None else value  # None: NaN exported
            self.r_w[v] = 0.0
            self.r_wl[v] = 0.0
            bins = np.asarray(st.get("r_bins", []), dtype=np.intp)
            self.r_w[v, bins] = st.get("r_w", [])
            self.r_wl[v, bins] = st.get("r_wl", [])
