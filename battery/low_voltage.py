"""The cars' 12 V battery (VSS Vehicle.LowVoltageBattery): resting voltage, drain while parked
and the time until it can no longer be relied on to crank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from battery._batch import SortedSamples
from battery._groups import decayed_sums, run_heads, run_tails
from battery._state import VehicleArrays
from battery.config import BatteryPolicy

_Y0 = 12.3  # voltages enter the fit relative to this, for numerics
_SUMS = ("n", "sh", "shh", "se", "see", "she", "sy", "shy", "sey", "syy")


def update_low_voltage(st: VehicleArrays, b: SortedSamples, p: BatteryPolicy) -> None:
    """A parked episode runs from ignition off to ignition on (or a silence longer than
    aux_episode_gap_s). Its samples from aux_settle_s on are fitted as
    V(h) = V0 - s·h + A·exp(-h/tau): a steady drain s (V per hour) plus the surface charge left
    by driving, decaying with aux_surface_tau_s. Closed episodes' drains are averaged with
    inverse-variance weights and exponential forgetting over time (aux_estimate adds the open
    one). Drain current = s × aux_nominal_ah / (aux_full_v - aux_empty_v): the resting voltage
    is taken as linear in state of charge from 11.8 V (0 %) to 12.6 V (100 %), 12.0 V being
    about 25 % (DOMAIN.md 6). Time to threshold = (resting voltage - aux_threshold_v) / s.

    The drain is "known" once its standard error is below aux_max_rel_error of it: a healthy
    car's sleep draw (5-12 mA, ~0.1 mV an hour against ~10 mV of noise) takes days of parking
    to measure, a fault (hundreds of mA) hours."""
    g, veh, t = b.g, b.veh, b.t
    parked = b.ign_eff == 0
    was = g.prev(parked, st.x_on[veh])
    long_gap = ~(b.dt <= p.aux_episode_gap_s)
    new_ep = parked & (~was | long_gap)
    closes = was & (~parked | long_gap)

    # Episodes of each vehicle's run: ordinal 0 is the one carried in (if any), each start adds
    # one; ep is the flat episode number of every sample.
    ordinal = b.group_cumsum(new_ep.astype(np.int64))
    n_ord = ordinal[g.ends] + 1
    base = np.cumsum(n_ord) - n_ord
    n_ep = int(n_ord.sum())
    ep = base[g.g] + ordinal
    ep_grp = np.repeat(np.arange(g.m), n_ord)
    carried = (np.arange(n_ep) == base[ep_grp]) & st.x_on[veh][ep_grp]
    t0 = np.full(n_ep, -1, dtype=np.int64)
    t0[ep[new_ep]] = t[new_ep]
    t0[carried] = st.x_t0[veh][ep_grp[carried]]

    since = t - t0[ep]
    use = parked & np.isfinite(b.aux) & (since >= p.aux_settle_s * 1000.0)
    k = np.flatnonzero(use)
    h = since[k] / 3.6e6
    e = np.exp(-h / (p.aux_surface_tau_s / 3600.0))
    y = b.aux[k] - _Y0
    epk = ep[k]
    sums = {
        name: np.bincount(epk, x, n_ep).astype(np.float64)
        for name, x in zip(
            _SUMS, (np.ones(len(k)), h, h * h, e, e * e, h * e, y, h * y, e * y, y * y)
        )
    }
    h0 = np.full(n_ep, np.nan)
    h1 = np.full(n_ep, np.nan)
    if len(k):
        firsts, lasts = run_heads(epk), run_tails(epk)
        h0[epk[firsts]] = h[firsts]
        h1[epk[lasts]] = h[lasts]
    c_ep, c_grp = np.flatnonzero(carried), ep_grp[carried]
    for name in _SUMS:
        sums[name][c_ep] += getattr(st, "x_" + name)[veh][c_grp]
    old_h0, old_h1 = st.x_h0[veh][c_grp], st.x_h1[veh][c_grp]
    h0[c_ep] = np.where(np.isfinite(old_h0), old_h0, h0[c_ep])
    h1[c_ep] = np.where(np.isfinite(h1[c_ep]), h1[c_ep], old_h1)

    # Episodes that ended in the batch: fit, then fold their drains in time order.
    kc = np.flatnonzero(closes)
    closed = ep[kc] - new_ep[kc]
    if len(closed):
        fit = fit_episodes({n: sums[n][closed] for n in _SUMS}, h0[closed], h1[closed], p)
        ok = fit.valid
        c, kc = closed[ok], kc[ok]
        cg = ep_grp[c]
        if len(c):
            heads = run_heads(cg)
            prev_t = np.empty(len(kc), dtype=t.dtype)
            prev_t[1:] = t[kc][:-1]
            prev_t[heads] = st.d_t[veh][cg[heads]]
            delta = np.where(prev_t >= 0, (t[kc] - prev_t) / 1000.0 / p.aux_memory_s, 0.0)
            var = fit.var_slope[ok]
            (st.d_w[veh], st.d_ws[veh]), _ = decayed_sums(
                cg, g.m, delta, [1.0 / var, fit.slope[ok] / var], [st.d_w[veh], st.d_ws[veh]]
            )
            last = run_tails(cg)
            lv = veh[cg[last]]
            st.d_t[lv] = t[kc][last]
            st.rest_v[lv] = fit.rest_v[ok][last]
            st.rest_t[lv] = (t0[c] + fit.h1[ok] * 3.6e6).astype(np.int64)[last]

    # The open episode of each vehicle (its last one, if it is parked at the end).
    open_now = parked[g.ends]
    last_ep = base + n_ord - 1
    st.x_on[veh] = open_now
    st.x_t0[veh] = np.where(open_now, t0[last_ep], -1)
    for name in _SUMS:
        getattr(st, "x_" + name)[veh] = np.where(open_now, sums[name][last_ep], 0.0)
    st.x_h0[veh] = np.where(open_now, h0[last_ep], np.nan)
    st.x_h1[veh] = np.where(open_now, h1[last_ep], np.nan)


@dataclass(slots=True)
class EpisodeFit:
    valid: np.ndarray
    slope: np.ndarray  # drain, V per hour (positive: the voltage falls)
    var_slope: np.ndarray
    v0: np.ndarray  # resting voltage at the episode's start (h = 0), V
    h1: np.ndarray  # hours from the start to the last sample used
    rest_v: np.ndarray  # resting voltage at h1, V


def fit_episodes(
    s: dict[str, np.ndarray], h0: np.ndarray, h1: np.ndarray, p: BatteryPolicy
) -> EpisodeFit:
    n = s["n"]
    with np.errstate(invalid="ignore"):
        valid = (n >= p.aux_min_samples) & (h1 - h0 >= p.aux_min_span_s / 3600.0)
    m = len(n)
    slope, var, v0 = np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan)
    idx = np.flatnonzero(valid)
    if len(idx):
        c = {k: x[idx] for k, x in s.items()}
        ridge = 1e-6 * c["n"]  # no surface term where the data cannot tell one (long parked)
        mat = np.stack(
            [
                np.stack([c["n"], c["sh"], c["se"]], -1),
                np.stack([c["sh"], c["shh"], c["she"]], -1),
                np.stack([c["se"], c["she"], c["see"] + ridge], -1),
            ],
            -2,
        )
        rhs = np.stack([c["sy"], c["shy"], c["sey"]], -1)
        good = np.abs(np.linalg.det(mat)) > 0
        mat[~good] = np.eye(3)
        inv = np.linalg.inv(mat)
        beta = np.einsum("kij,kj->ki", inv, rhs)
        rss = c["syy"] - np.einsum("ki,ki->k", beta, rhs)
        s2 = np.maximum(rss / np.maximum(c["n"] - 3, 1), p.aux_noise_floor_v**2)
        slope[idx] = -beta[:, 1]
        var[idx] = s2 * inv[:, 1, 1]
        v0[idx] = beta[:, 0] + _Y0
        ok = good & (var[idx] > 0)
        valid[idx[~ok]] = False
    rest = v0 - slope * h1
    return EpisodeFit(valid, slope, var, v0, h1, rest)


@dataclass(slots=True)
class AuxEstimate:
    parked: np.ndarray
    rest_v: np.ndarray
    drain_v_per_h: np.ndarray
    drain_se: np.ndarray
    drain_ma: np.ndarray
    drain_known: np.ndarray
    hours_to_threshold: np.ndarray
    fit_valid: np.ndarray


def aux_estimate(
    st: VehicleArrays, vehicles: np.ndarray, t_now: np.ndarray, p: BatteryPolicy
) -> AuxEstimate:
    """Resting voltage now, drain and time to threshold for the given vehicles at t_now."""
    parked = st.x_on[vehicles]
    fit = fit_episodes(
        {n: getattr(st, "x_" + n)[vehicles] for n in _SUMS}, st.x_h0[vehicles], st.x_h1[vehicles], p
    )
    fit.valid &= parked
    h_now = (t_now - st.x_t0[vehicles]) / 3.6e6
    rest_now = fit.v0 - fit.slope * h_now
    d_t = st.d_t[vehicles]
    fade = np.where(d_t >= 0, np.exp(-np.maximum(t_now - d_t, 0) / 1000.0 / p.aux_memory_s), 1.0)
    w = st.d_w[vehicles] * fade
    ws = st.d_ws[vehicles] * fade
    open_w = np.where(fit.valid, 1.0 / np.where(fit.valid, fit.var_slope, 1.0), 0.0)
    w = w + open_w
    ws = ws + np.where(fit.valid, fit.slope, 0.0) * open_w
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(w > 0, ws / w, np.nan)
        se = np.where(w > 0, 1.0 / np.sqrt(w), np.nan)
        known = (s > 0) & (se <= p.aux_max_rel_error * s)
    ma_per_v_h = p.aux_nominal_ah / (p.aux_full_v - p.aux_empty_v) * 1000.0
    rest_v = np.where(fit.valid, rest_now, st.rest_v[vehicles])
    with np.errstate(invalid="ignore", divide="ignore"):
        hours = np.where(
            rest_now <= p.aux_threshold_v,
            0.0,
            np.where(known, (rest_now - p.aux_threshold_v) / s, np.nan),
        )
    hours = np.where(fit.valid, hours, np.nan)
    return AuxEstimate(
        parked, rest_v, s, se, np.where(known, s * ma_per_v_h, np.nan), known, hours, fit.valid
    )
