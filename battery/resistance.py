"""Internal resistance from voltage sag across current steps, R = -(ΔV - ΔOCV) / ΔI, kept as a
decaying histogram of pair estimates per vehicle whose interquartile mean is the estimate.
"""

from __future__ import annotations

import numpy as np

from battery._batch import SortedSamples, VehicleParams
from battery._state import R_BINS, R_HI_OHM, R_LO_OHM, VehicleArrays
from battery.config import BatteryPolicy

_LOG_LO, _LOG_HI = np.log(R_LO_OHM), np.log(R_HI_OHM)


def update_resistance(
    st: VehicleArrays, b: SortedSamples, par: VehicleParams, p: BatteryPolicy
) -> None:
    """Pairs are consecutive samples at most pair_max_dt_s apart whose current differs by
    pair_min_step_c. The OCV shift between them (the SoC moved) is taken out with the type's OCV
    curve: left in, it biases the ratio (arXiv 2505.06410). Relaxation voltages are not modelled,
    so for real packs R is the DC resistance at the sampling interval's time scale. The
    histogram is robust to glitches and gives the same estimate however samples were batched."""
    g, veh = b.g, b.veh
    pv = g.prev(b.pv, st.prev_v[veh])
    pi = g.prev(b.i, st.prev_i[veh])
    ps = g.prev(b.soc, st.prev_soc[veh])
    di = b.i - pi
    with np.errstate(invalid="ignore"):
        ok = (
            (b.dt <= p.pair_max_dt_s)
            & (np.abs(di) >= p.pair_min_step_c * b.nominal_ah)
            & np.isfinite(b.pv + pv + b.soc + ps)
            & ~b.jump
            & b.current_pack
        )
    swapped = b.n_swaps > 0
    idx = np.flatnonzero(ok)
    r = np.empty(0)
    if len(idx):
        t_idx = b.type_idx[idx]
        docv = b.nominal_v[idx] * (
            par.by_type(t_idx, b.soc[idx], "relative") - par.by_type(t_idx, ps[idx], "relative")
        )
        r = -((b.pv[idx] - pv[idx]) - docv) / di[idx]
        good = (r > R_LO_OHM) & (r < R_HI_OHM)
        idx, r = idx[good], r[good]
    if not len(idx) and not swapped.any():
        return
    grp = g.g[idx]
    # Sequentially each pair fades the histogram by exp(-1/memory) and adds itself: so a pair
    # enters with the fade of the pairs after it, and the old histogram with all of them.
    n_pairs = np.bincount(grp, minlength=g.m)
    rows = np.flatnonzero(swapped | (n_pairs > 0))
    head = np.ones(len(idx), dtype=bool)
    head[1:] = grp[1:] != grp[:-1]
    pos = np.arange(len(idx))
    rank = pos - pos[head][np.cumsum(head) - 1]
    w = np.exp(-(n_pairs[grp] - 1 - rank) / p.resistance_memory_pairs)
    fade = np.where(swapped, 0.0, np.exp(-n_pairs / p.resistance_memory_pairs))
    v_rows = veh[rows]
    st.r_w[v_rows] *= fade[rows, None]
    st.r_wl[v_rows] *= fade[rows, None]
    bins = np.clip(
        ((np.log(r) - _LOG_LO) / (_LOG_HI - _LOG_LO) * R_BINS).astype(np.int64), 0, R_BINS - 1
    )
    np.add.at(st.r_w, (veh[grp], bins), w)
    np.add.at(st.r_wl, (veh[grp], bins), w * np.log(r))
    st.r_n[v_rows] = st.r_w[v_rows].sum(axis=1)
    st.r_ohm[v_rows] = _interquartile_mean(st.r_w[v_rows], st.r_wl[v_rows])


def _interquartile_mean(w: np.ndarray, wl: np.ndarray) -> np.ndarray:
    """exp of the mean log R over the middle half of each histogram's mass."""
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1:]
    lo, hi = 0.25 * total, 0.75 * total
    share = np.clip(np.minimum(cum, hi) - np.maximum(cum - w, lo), 0.0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_log = np.where(w > 0, wl / np.where(w > 0, w, 1.0), 0.0)
        out = np.exp((share * mean_log).sum(axis=1) / share.sum(axis=1))
    return np.where(total[:, 0] > 0, out, np.nan)


def resistance_estimate(st: VehicleArrays, vehicles: np.ndarray, p: BatteryPolicy) -> np.ndarray:
    return np.where(st.r_n[vehicles] >= p.min_pairs, st.r_ohm[vehicles], np.nan)
