"""Pack history: swaps, charge throughput (EFC) and usable capacity (SoH_C), from Coulomb
counting over SoC windows, or from distance per unit of pack energy where only SoC is reported.
"""

from __future__ import annotations

import numpy as np

from battery._batch import SortedSamples, VehicleParams
from battery._groups import decayed_sums, run_tails
from battery._state import VehicleArrays
from battery.config import BatteryPolicy
from battery.events import PACK_SWAPPED, BatteryEvent


def update_capacity(
    st: VehicleArrays, b: SortedSamples, par: VehicleParams, p: BatteryPolicy
) -> list[BatteryEvent]:
    """Swaps, throughput and capacity windows of a batch; returns the pack_swapped events.

    Coulomb windows (Einhorn: C = ∫I dt / ΔSoC): a window opens at a sample with a SoC and
    closes at the first later one whose SoC differs by window_pct, where the next one opens. It
    counts if current was reported over all of it without a gap and the capacity it implies is
    plausible (capacity_ratio of nominal); windows combine as least squares through the origin
    (charge in against SoC change) with exponential forgetting over the SoC moved.

    SoC only (no current): discharge windows without charging or gaps give km per unit of pack
    energy used while driving (through the OCV curve); its ratio to the vehicle's early-life
    baseline (its first baseline_pct of such windows, kept across swaps) is the SoH. This assumes
    the vehicle's energy per km stays what it was and the baseline pack was at nominal capacity.

    A SoC change faster than charging or driving can make (jump_pct, max_soc_rate_pct_per_h)
    re-opens the window there; up by swap_jump_pct on a swappable type it is a pack swap, which
    starts a new history: capacity, throughput and resistance start again from the prior.
    """
    g, veh = b.g, b.veh
    q = st.q[veh][g.g] + b.group_cumsum(b.dq)
    # SoC-only: the pack energy (as a fraction of a full pack, through the OCV curve) used in
    # driving intervals, so that standby drain while parked does not count against distance.
    with np.errstate(invalid="ignore"):
        de = par.by_type(b.type_idx, b.soc_before, "energy_fraction") - par.by_type(
            b.type_idx, b.soc, "energy_fraction"
        )
    de = np.where(b.driving & ~b.jump & np.isfinite(de), de, 0.0)
    ed = st.ed[veh][g.g] + b.group_cumsum(de)
    swapped = b.n_swaps > 0
    _throughput(st, b, swapped)

    windows = _close_windows(st, b, q, ed, p)
    _fold_windows(st, b, p, windows, q, ed, swapped)
    st.q[veh] = q[g.ends]
    st.ed[veh] = ed[g.ends]
    st.pack_seq[veh] += b.n_swaps
    st.health_armed[veh] |= swapped

    events = []
    if swapped.any():
        for k in np.flatnonzero(b.swap).tolist():
            v = int(b.v[k])
            events.append(
                BatteryEvent(
                    v,
                    int(b.t[k]),
                    PACK_SWAPPED,
                    {
                        "soc_before_pct": round(float(b.soc_before[k]), 2),
                        "soc_pct": round(float(b.soc[k]), 2),
                        "pack_seq": int(st.pack_seq[v] - b.n_swaps[g.g[k]] + b.hseg[k]),
                    },
                )
            )
    return events


def _throughput(st: VehicleArrays, b: SortedSamples, swapped: np.ndarray) -> None:
    """Ah throughput of the current pack (for EFC). Driving and charging intervals count with
    their magnitude; while idle (parked, not charging) the charge is netted over the whole idle
    spell first, so that a current sensor's noise around zero does not count as cycling while
    the pack's real standby drain still does."""
    g, veh = b.g, b.veh
    active = b.driving | b.charging
    # Segments start at a vehicle's first sample, a swap or an active sample; each holds the
    # idle spell after its head, which ends at the next active head.
    head = g.first | b.swap | active
    seg = np.cumsum(head) - 1
    heads = np.flatnonzero(head)
    net = np.bincount(seg, np.where(active, 0.0, b.dq), len(heads))
    current = b.current_pack
    carry = st.idle_q[veh]
    s0 = seg[g.starts]
    head_swap, head_active = b.swap[g.starts], active[g.starts]
    joins = ~head_swap & ~head_active
    net[s0] += np.where(joins, carry, 0.0)
    closes_at_head = ~head_swap & head_active & ~swapped
    nxt = np.zeros(len(heads), dtype=heads.dtype)
    nxt[:-1] = heads[1:]
    closed = ~run_tails(g.g[heads]) & active[nxt] & ~b.swap[nxt]
    closed &= current[heads]
    add = (
        g.sum(np.abs(b.dq), where=active & current)
        + np.bincount(g.g[heads[closed]], np.abs(net[closed]), g.m)
        + np.where(closes_at_head, np.abs(carry), 0.0)
    )
    st.thru[veh] = np.where(swapped, 0.0, st.thru[veh]) + add
    st.idle_q[veh] = net[seg[g.ends]]


class _Windows:
    """Windows closed in the batch, one entry each, in no particular order until sorted."""

    def __init__(self) -> None:
        self.k: list[np.ndarray] = []
        self.cols: dict[str, list[np.ndarray]] = {
            n: [] for n in ("a_soc", "a_q", "a_odo", "a_ed", "bad", "gap", "chg")
        }

    def add(self, k: np.ndarray, **cols: np.ndarray) -> None:
        self.k.append(k)
        for n, x in cols.items():
            self.cols[n].append(x)

    def sorted(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not self.k:
            return np.empty(0, dtype=np.int64), {
                n: np.empty(0, dtype=bool if n in ("bad", "gap", "chg") else np.float64)
                for n in self.cols
            }
        k = np.concatenate(self.k)
        order = np.argsort(k, kind="stable")
        return k[order], {n: np.concatenate(x)[order] for n, x in self.cols.items()}


def _close_windows(
    st: VehicleArrays, b: SortedSamples, q: np.ndarray, ed: np.ndarray, p: BatteryPolicy
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Find every window closing in the batch and leave each vehicle's open window in st."""
    g, veh, soc, sk = b.g, b.veh, b.soc, b.soc_known
    # Counters of what spoils a window, per vehicle run (inclusive): a window (anchor, close]
    # is spoilt when the counter moved between its anchor and its close.
    cb = b.group_cumsum((b.gap | b.cur_bad).astype(np.int64))
    cg = b.group_cumsum(b.gap.astype(np.int64))
    cc = b.group_cumsum(b.charging.astype(np.int64))

    # Segments: a vehicle's run, cut at each SoC jump (the jump re-opens the window there).
    head = g.first | b.jump
    seg = np.cumsum(head) - 1
    n_seg = int(seg[-1]) + 1
    seg_start = np.flatnonzero(head)
    seg_group = g.g[seg_start]
    carried = ~b.jump[seg_start] & np.isfinite(st.a_soc[veh][seg_group])
    # Anchor of each segment: the state's open window, the jump sample, or (no window open
    # yet) the segment's first sample with a SoC.
    pos = np.where(b.jump[seg_start], seg_start, -2)
    need = ~carried & (pos == -2)
    if need.any():
        known_idx = np.flatnonzero(sk)
        first_known = np.full(n_seg, -2)
        ks = seg[known_idx]
        firsts = np.ones(len(ks), dtype=bool)
        firsts[1:] = ks[1:] != ks[:-1]
        first_known[ks[firsts]] = known_idx[firsts]
        pos = np.where(need, first_known, pos)
    pos = np.where(carried, -1, pos)
    sv = st.a_soc[veh][seg_group]
    anchor = {
        "soc": np.where(carried, sv, np.nan),
        "q": np.where(carried, st.a_q[veh][seg_group], np.nan),
        "odo": np.where(carried, st.a_odo[veh][seg_group], np.nan),
        "ed": np.where(carried, st.a_ed[veh][seg_group], np.nan),
        "cb": np.zeros(n_seg, dtype=np.int64),
        "cg": np.zeros(n_seg, dtype=np.int64),
        "cc": np.zeros(n_seg, dtype=np.int64),
        "bad": carried & st.a_bad[veh][seg_group],
        "gap": carried & st.a_gap[veh][seg_group],
        "chg": carried & st.a_chg[veh][seg_group],
    }
    values = {"soc": soc, "q": q, "odo": b.odo, "ed": ed, "cb": cb, "cg": cg, "cc": cc}
    _set_anchor(anchor, np.flatnonzero(pos >= 0), pos[pos >= 0], values)

    windows = _Windows()
    cand = np.flatnonzero(sk)
    active = pos != -2
    thr = p.window_pct
    while len(cand):
        cs = seg[cand]
        cand = cand[active[cs] & (cand > pos[cs])]
        if not len(cand):
            break
        cs = seg[cand]
        hit = np.abs(soc[cand] - anchor["soc"][cs]) >= thr
        ch = cand[hit]
        if not len(ch):
            break
        hs = seg[ch]
        firsts = np.ones(len(ch), dtype=bool)
        firsts[1:] = hs[1:] != hs[:-1]
        k, s = ch[firsts], hs[firsts]
        windows.add(
            k,
            a_soc=anchor["soc"][s],
            a_q=anchor["q"][s],
            a_odo=anchor["odo"][s],
            a_ed=anchor["ed"][s],
            bad=anchor["bad"][s] | (cb[k] > anchor["cb"][s]),
            gap=anchor["gap"][s] | (cg[k] > anchor["cg"][s]),
            chg=anchor["chg"][s] | (cc[k] > anchor["cc"][s]),
        )
        _set_anchor(anchor, s, k, values)
        pos[s] = k
        active = np.zeros(n_seg, dtype=bool)
        active[s] = True

    # The open window of each vehicle is its last segment's.
    last_seg = seg[g.ends]
    e = g.ends
    has = pos[last_seg] != -2
    st.a_soc[veh] = np.where(has, anchor["soc"][last_seg], np.nan)
    st.a_q[veh] = np.where(has, anchor["q"][last_seg], 0.0)
    st.a_odo[veh] = np.where(has, anchor["odo"][last_seg], np.nan)
    st.a_ed[veh] = np.where(has, anchor["ed"][last_seg], 0.0)
    st.a_bad[veh] = has & (anchor["bad"][last_seg] | (cb[e] > anchor["cb"][last_seg]))
    st.a_gap[veh] = has & (anchor["gap"][last_seg] | (cg[e] > anchor["cg"][last_seg]))
    st.a_chg[veh] = has & (anchor["chg"][last_seg] | (cc[e] > anchor["cc"][last_seg]))
    return windows.sorted()


def _set_anchor(
    anchor: dict[str, np.ndarray], s: np.ndarray, k: np.ndarray, values: dict[str, np.ndarray]
) -> None:
    """Open the windows of segments s at samples k."""
    for name, x in values.items():
        anchor[name][s] = x[k]
    anchor["bad"][s] = anchor["gap"][s] = anchor["chg"][s] = False


def _fold_windows(
    st: VehicleArrays,
    b: SortedSamples,
    p: BatteryPolicy,
    windows: tuple[np.ndarray, dict[str, np.ndarray]],
    q: np.ndarray,
    ed: np.ndarray,
    swapped: np.ndarray,
) -> None:
    g, veh = b.g, b.veh
    k, w = windows
    grp = g.g[k]
    ds = b.soc[k] - w["a_soc"]
    mem = p.capacity_memory_pct
    keep = ~swapped  # a swap in the batch: the current pack's sums start from zero

    # Coulomb windows of the current pack: charge in (Ah) against SoC change (fraction). A
    # window implying a capacity far from nominal hides something (an unseen swap, a BMS reset)
    # and is dropped.
    dq = q[k] - w["a_q"]
    lo, hi = p.capacity_ratio
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = dq / (ds / 100.0) / b.nominal_ah[k]
    cw = b.current_pack[k] & ~w["bad"] & ~((ratio < lo) | (ratio > hi))
    x = ds[cw] / 100.0
    (st.c_num[veh], st.c_den[veh]), _ = decayed_sums(
        grp[cw],
        g.m,
        np.abs(ds[cw]) / mem,
        [dq[cw] * x, x * x],
        [st.c_num[veh] * keep, st.c_den[veh] * keep],
    )
    st.c_ev[veh] = st.c_ev[veh] * keep + np.bincount(grp[cw], np.abs(ds[cw]), g.m)

    # SoC-only: discharge windows without charging or gaps, km per unit of pack energy.
    km = (b.odo[k] - w["a_odo"]) / 1000.0
    de = ed[k] - w["a_ed"]
    with np.errstate(invalid="ignore"):
        usable = ~w["gap"] & ~w["chg"] & (ds < 0) & (km >= 0) & (de > 0)
    kw = usable & b.current_pack[k]
    (st.k_num[veh], st.k_den[veh]), _ = decayed_sums(
        grp[kw],
        g.m,
        np.abs(ds[kw]) / mem,
        [km[kw] * de[kw], de[kw] ** 2],
        [st.k_num[veh] * keep, st.k_den[veh] * keep],
    )
    st.k_ev[veh] = st.k_ev[veh] * keep + np.bincount(grp[kw], np.abs(ds[kw]), g.m)

    # The baseline: the vehicle's first baseline_pct of such windows, whatever the pack.
    if usable.any():
        ub = np.flatnonzero(usable)
        ug = grp[ub]
        moved = np.abs(ds[ub])
        cs = np.cumsum(moved)
        head = np.ones(len(ub), dtype=bool)
        head[1:] = ug[1:] != ug[:-1]
        before = cs - moved - (cs - moved)[np.flatnonzero(head)][np.cumsum(head) - 1]
        take = st.kb_ev[veh][ug] + before < p.baseline_pct
        tb = ub[take]
        st.kb_num[veh] += np.bincount(grp[tb], km[tb] * de[tb], g.m)
        st.kb_den[veh] += np.bincount(grp[tb], de[tb] ** 2, g.m)
        st.kb_ev[veh] += np.bincount(grp[tb], np.abs(ds[tb]), g.m)


def capacity_estimate(
    st: VehicleArrays, vehicles: np.ndarray, nominal_ah: np.ndarray, p: BatteryPolicy
) -> np.ndarray:
    """Usable capacity (Ah) from Coulomb windows, else from the SoC-only trend; NaN while the
    evidence is short of min_evidence_pct (or, SoC-only, the baseline is not complete)."""
    c_ok = (st.c_ev[vehicles] >= p.min_evidence_pct) & (st.c_den[vehicles] > 0)
    k_ok = (
        (st.k_ev[vehicles] >= p.min_evidence_pct)
        & (st.k_den[vehicles] > 0)
        & (st.kb_ev[vehicles] >= p.baseline_pct)
        & (st.kb_den[vehicles] > 0)
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        coulomb = st.c_num[vehicles] / st.c_den[vehicles]
        trend = (
            (st.k_num[vehicles] / st.k_den[vehicles])
            / (st.kb_num[vehicles] / st.kb_den[vehicles])
            * nominal_ah
        )
    return np.where(c_ok, coulomb, np.where(k_ok, trend, np.nan))


def km_per_energy(st: VehicleArrays, vehicles: np.ndarray, p: BatteryPolicy) -> np.ndarray:
    """SoC-only: km per full pack of energy, NaN while evidence is short."""
    ok = (st.k_ev[vehicles] >= p.min_evidence_pct) & (st.k_den[vehicles] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, st.k_num[vehicles] / st.k_den[vehicles], np.nan)
