"""Charging sessions (start, end, charge and energy put in) and charging faults, one event per
session: the SoC has not reached a new high for charge_fault_after_s below charge_full_pct.
"""

from __future__ import annotations

import numpy as np

from battery._batch import SortedSamples
from battery._groups import Groups, run_heads
from battery._state import VehicleArrays
from battery.config import BatteryPolicy
from battery.events import CHARGING_END, CHARGING_FAULT, CHARGING_START, BatteryEvent


def update_charging(st: VehicleArrays, b: SortedSamples, p: BatteryPolicy) -> list[BatteryEvent]:
    """A session runs while charging is reported (without the flag: while current clearly flows
    into the pack). Returns charging_start, charging_end (with duration, SoC, charge and energy
    put in at the terminals) and charging_fault (charger, cable or BMS not delivering)."""
    g, veh, t = b.g, b.veh, b.t
    on = b.charging
    was = g.prev(on, st.s_on[veh])
    start = on & ~was
    end = ~on & was
    # Segments: a vehicle's run cut at each session start; a segment holds at most one session
    # (carried over from the state when the run's first segment does not begin with a start).
    head = g.first | start
    seg = np.cumsum(head) - 1
    # No session starts in the batch (the common case): the segments are the vehicles' runs.
    sg = Groups(seg) if start.any() else g
    n_seg = sg.m
    seg_grp = g.g[sg.starts]
    carried = ~start[sg.starts] & st.s_on[veh][seg_grp]
    new = start[sg.starts]

    soc_ff = b.soc_ff
    t0 = np.where(carried, st.s_t0[veh][seg_grp], np.where(new, t[sg.starts], -1))
    # The SoC the session started from: the last one known before its first charging sample
    # (whose interval is already counted), else that sample's own.
    at_start = np.where(np.isfinite(b.soc_before), b.soc_before, soc_ff)
    soc0 = np.where(carried, st.s_soc0[veh][seg_grp], np.where(new, at_start[sg.starts], np.nan))
    wh = np.where(carried, st.s_wh[veh][seg_grp], 0.0) + np.bincount(
        seg, np.where(on, -b.dwh, 0.0), n_seg
    )
    ah = np.where(carried, st.s_ah[veh][seg_grp], 0.0) + np.bincount(
        seg, np.where(on, b.dq, 0.0), n_seg
    )

    # Progress: a new SoC high within the session (the start itself counts as progress).
    # Running maxima per segment through one accumulate: segment offsets keep them apart,
    # -1 stands for "no SoC yet".
    val = np.where(on & b.soc_known & ~start, b.soc, -1.0)
    val[start] = np.where(np.isfinite(soc_ff[start]), soc_ff[start], -1.0)
    off = seg * 1000.0
    acc = np.maximum.accumulate(val + off) - off
    s_max = st.s_max[veh][seg_grp]  # a SoC or NaN, never infinite
    carry_max = np.where(carried & ~np.isnan(s_max), s_max, -1.0)
    before = sg.prev(acc, carry_max)
    before = np.maximum(before, carry_max[seg])
    progress = start | (on & b.soc_known & (b.soc > before))
    carry_prog = np.where(carried, st.s_prog_t[veh][seg_grp], -1)
    prog_t = sg.ffill(t, progress, carry_prog)
    with np.errstate(invalid="ignore"):
        stalled = (
            on & (t - prog_t >= p.charge_fault_after_s * 1000.0) & (soc_ff < p.charge_full_pct)
        )
    stalled &= ~(carried & st.s_fault[veh][seg_grp])[seg]
    sk = np.flatnonzero(stalled)
    first_fault = sk[run_heads(seg[sk])] if len(sk) else sk

    events = []
    for k in np.flatnonzero(start).tolist():
        events.append(
            BatteryEvent(int(b.v[k]), int(t[k]), CHARGING_START, {"soc_pct": _r(at_start[k])})
        )
    for k in first_fault.tolist():
        events.append(
            BatteryEvent(
                int(b.v[k]),
                int(t[k]),
                CHARGING_FAULT,
                {"soc_pct": _r(soc_ff[k]), "stalled_s": round(float(t[k] - prog_t[k]) / 1000.0, 1)},
            )
        )
    for k in np.flatnonzero(end).tolist():
        s = seg[k]
        events.append(
            BatteryEvent(
                int(b.v[k]),
                int(t[k]),
                CHARGING_END,
                {
                    "soc_start_pct": _r(soc0[s]),
                    "soc_pct": _r(soc_ff[k]),
                    "duration_s": round(float(t[k] - t0[s]) / 1000.0, 1) if t0[s] >= 0 else None,
                    "energy_wh": round(float(wh[s]), 2),
                    "charge_ah": round(float(ah[s]), 3),
                },
            )
        )

    # The state: the last segment's session if it is still on.
    ls = seg[g.ends]
    still = on[g.ends]
    faulted = np.zeros(n_seg, dtype=bool)
    faulted[seg[first_fault]] = True
    faulted |= carried & st.s_fault[veh][seg_grp]
    st.s_on[veh] = still
    st.s_t0[veh] = np.where(still, t0[ls], -1)
    st.s_soc0[veh] = np.where(still, soc0[ls], np.nan)
    st.s_wh[veh] = np.where(still, wh[ls], 0.0)
    st.s_ah[veh] = np.where(still, ah[ls], 0.0)
    last_max = np.maximum(acc[g.ends], carry_max[ls])
    st.s_max[veh] = np.where(still & (last_max >= 0), last_max, np.nan)
    st.s_prog_t[veh] = np.where(still, prog_t[g.ends], -1)
    st.s_fault[veh] = still & faulted[ls]
    return events


def _r(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 2)
