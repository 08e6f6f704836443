"""Battery-core benchmark: BatteryCore.update against a straightforward per-vehicle pandas /
Python implementation of the same update, on the same batch and state, in one run.

A simulated fleet (half e-bikes, half cars) is warmed up through the core; both then take the
same timed batch (default 100,000 samples across 10,000 vehicles) from the same exported state,
and their estimates and events are compared. Prints one JSON object.
Run: .venv/bin/python -m benchmarks.battery [--vehicles 10000] [--samples 100000]
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import dataclass

import numpy as np

from battery import (
    ABNORMAL_PARKED_DRAIN,
    AUX_BATTERY_AT_RISK,
    BATTERY_HEALTH_LOW,
    BATTERY_LOW,
    CHARGING_END,
    CHARGING_FAULT,
    CHARGING_START,
    DEFAULT_TYPES,
    PACK_SWAPPED,
    BatteryCore,
    BatteryEvent,
    BatteryPolicy,
    BatteryType,
)
from battery._state import R_BINS, R_HI_OHM, R_LO_OHM
from benchmarks._runner import bench_parser, loadavg, machine, run_benchmark
from telemetry.batch import TelemetryBatch

NAN = float("nan")
_Y0 = 12.3
_SUMS = ("n", "sh", "shh", "se", "see", "she", "sy", "shy", "sey", "syy")
COMPARED = (
    "soc_pct",
    "range_m",
    "soh_pct",
    "capacity_ah",
    "resistance_ohm",
    "efc",
    "energy_wh_per_km",
    "aux_rest_v",
    "aux_drain_ma",
    "aux_hours_to_threshold",
)


def _fin(x: float) -> bool:
    return x == x and x not in (math.inf, -math.inf)


@dataclass(slots=True)
class _Sample:
    """One sample as ReferenceBattery reads it: its values and what follows from them and the
    vehicle's state before it (the core computes the same as columns)."""

    t: int
    soc: float
    i: float  # pack current, A (negative: charging)
    pv: float  # pack voltage
    aux: float  # 12 V battery voltage
    odo: float
    ign: int  # -1: not reported
    lock: int
    nominal_ah: float
    nominal_v: float
    dt: float  # s since the vehicle's previous sample (NaN: none)
    gap: bool  # too long since it to integrate the current
    cur_bad: bool
    dq: float  # Ah drawn since the previous sample
    e_ok: bool  # energy countable
    dwh: float  # Wh drawn since the previous sample
    chg_eff: int  # charging flag, as reported or inferred
    charging: bool
    ign_eff: int
    soc_known: bool
    jump: bool  # a SoC discontinuity
    driving: bool


class ReferenceBattery:
    """The same update as BatteryCore, written the obvious way: pandas sorts and groups the
    batch by vehicle, then plain Python walks each vehicle's samples one by one over a dict of
    state (the core's exported format)."""

    def __init__(
        self,
        types: dict[str, BatteryType],
        policy: BatteryPolicy,
        vehicle_types: dict[int, str],
        states: dict[int, dict],
    ) -> None:
        self.types = types
        self.p = policy
        self.vehicle_types = vehicle_types
        self.states = {}
        for v, st in states.items():
            s = dict(st)
            s["hist"] = {b: [w, wl] for b, w, wl in zip(st["r_bins"], st["r_w"], st["r_wl"])}
            for k, val in s.items():
                if val is None:
                    s[k] = NAN
            self.states[int(v)] = s

    def _new_state(self) -> dict:
        from battery._state import FIELDS

        s = {name: default for name, (_, default) in FIELDS.items()}
        s["hist"] = {}
        return s

    def update(self, df) -> tuple[list[BatteryEvent], dict[int, dict]]:
        events: list[BatteryEvent] = []
        estimates: dict[int, dict] = {}
        df = df.sort_values(["vehicle", "time_ms"], kind="stable")
        df = df.drop_duplicates(["vehicle", "time_ms"], keep="first")
        for v, rows in df.groupby("vehicle", sort=True):
            v = int(v)
            s = self.states.get(v)
            if s is None:
                s = self.states[v] = self._new_state()
            tp = self.types.get(self.vehicle_types.get(v, ""))
            touched = {"pairs": False, "marked": False, "any": False}
            for r in rows.itertuples(index=False):
                if r.time_ms <= s["t"]:
                    continue
                touched["any"] = True
                self._sample(v, s, tp, r, events, touched)
            if not touched["any"]:
                continue
            if touched["pairs"]:
                s["r_n"] = sum(w for w, _ in s["hist"].values())
                s["r_ohm"] = _iqm(s["hist"])
            est = self._estimate(s, tp)
            self._vehicle_alerts(v, s, est, events)
            step = int(self.p.history_interval_s * 1000)
            est["history_due"] = (
                s["h_t"] < 0 or s["t"] // step > s["h_t"] // step or touched["marked"]
            )
            if est["history_due"]:
                s["h_t"] = s["t"]
            estimates[v] = est
        events.sort(key=lambda e: (e.time_ms, e.vehicle, e.type))
        return events, estimates

    # -- one sample ----------------------------------------------------------------------------

    def _sample(self, v, s, tp, r, events, touched) -> None:
        """One sample of vehicle v into its state s, step by step in the core's order."""
        x = self._read(s, tp, r)
        self._pack_swap(v, s, tp, x, events, touched)
        self._throughput(s, tp, x)
        self._soc_window(s, tp, x)
        self._energy_per_km(s, x)
        self._resistance(s, tp, x, touched)
        if x.charging:
            self._charging(v, s, x, events, touched)
        elif s["s_on"]:
            self._charging_end(v, s, x, events, touched)
        self._low_soc(v, s, tp, x, events)
        self._parked_episode(s, x)
        self._carry(s, x)

    def _read(self, s, tp, r) -> _Sample:
        """The sample's values, and what follows from them and the state before it."""
        p = self.p
        t, soc, i, pv = int(r.time_ms), float(r.soc_pct), float(r.pack_a), float(r.pack_v)
        ign, lock, chg = int(r.ignition), int(r.locked), int(r.charging)
        nominal_ah = tp.nominal_ah if tp else NAN
        dt = (t - s["t"]) / 1000.0 if s["t"] >= 0 else NAN
        gap = not (dt <= p.max_gap_s)
        cur_bad = not _fin(i)
        int_ok = not gap and not cur_bad
        v_eff = pv if _fin(pv) else s["v_last"]
        e_ok = int_ok and _fin(v_eff)
        chg_eff = self._charging_flag(s, chg, i, p.charging_current_c * nominal_ah)
        charging = chg_eff == 1
        return _Sample(
            t=t,
            soc=soc,
            i=i,
            pv=pv,
            aux=float(r.aux_v),
            odo=float(r.odometer_m),
            ign=ign,
            lock=lock,
            nominal_ah=nominal_ah,
            nominal_v=tp.nominal_v if tp else NAN,
            dt=dt,
            gap=gap,
            cur_bad=cur_bad,
            dq=-i * dt / 3600.0 if int_ok else 0.0,
            e_ok=e_ok,
            dwh=v_eff * i * dt / 3600.0 if e_ok else 0.0,
            chg_eff=chg_eff,
            charging=charging,
            ign_eff=ign if ign >= 0 else s["ign"],
            soc_known=_fin(soc),
            jump=self._soc_jump(s, tp, t, soc),
            driving=not charging and (ign == 1 or (ign == -1 and lock == 0)),
        )

    @staticmethod
    def _charging_flag(s, chg: int, i: float, i_chg: float) -> int:
        """Charging as reported, else from a charging current, else as before."""
        if chg >= 0:
            return chg
        if _fin(i) and _fin(i_chg):
            return 1 if i < -i_chg else 0
        return s["chg"]

    def _soc_jump(self, s, tp, t: int, soc: float) -> bool:
        """A SoC step faster than the battery type can charge or discharge."""
        if not (_fin(soc) and _fin(s["soc"])):
            return False
        d = soc - s["soc"]
        hours = (t - s["t_soc"]) / 3.6e6
        max_rate = tp.max_soc_rate_pct_per_h if tp else 100.0
        return abs(d) >= self.p.jump_pct and abs(d) > max_rate * hours

    def _pack_swap(self, v, s, tp, x: _Sample, events, touched) -> None:
        """A SoC jump upwards on a swappable pack: a new pack, whose history starts afresh."""
        if not (x.jump and x.soc - s["soc"] >= self.p.swap_jump_pct and tp and tp.swappable):
            return
        s["thru"] = 0.0
        s["idle_q"] = 0.0
        for k in ("c_num", "c_den", "c_ev", "k_num", "k_den", "k_ev"):
            s[k] = 0.0
        s["hist"] = {}
        touched["pairs"] = True
        s["health_armed"] = True
        s["pack_seq"] += 1
        touched["marked"] = True
        events.append(
            BatteryEvent(
                v,
                x.t,
                PACK_SWAPPED,
                {
                    "soc_before_pct": round(s["soc"], 2),
                    "soc_pct": round(x.soc, 2),
                    "pack_seq": s["pack_seq"],
                },
            )
        )

    def _throughput(self, s, tp, x: _Sample) -> None:
        """Charge counted, energy driven by SoC, and the charge throughput for cycles."""
        s["q"] += x.dq
        if x.driving and x.soc_known and _fin(s["soc"]) and not x.jump and tp:
            s["ed"] += float(tp.ocv.energy_fraction(s["soc"]) - tp.ocv.energy_fraction(x.soc))
        if x.driving or x.charging:
            s["thru"] += abs(s["idle_q"]) + abs(x.dq)
            s["idle_q"] = 0.0
        else:
            s["idle_q"] += x.dq

    def _soc_window(self, s, tp, x: _Sample) -> None:
        """Coulomb / SoC-only windows: one closes (and the next opens) every window_pct of SoC."""
        if _fin(s["a_soc"]):
            s["a_bad"] = s["a_bad"] or x.gap or x.cur_bad
            s["a_gap"] = s["a_gap"] or x.gap
            s["a_chg"] = s["a_chg"] or x.charging
        if not x.soc_known:
            return
        if x.jump or not _fin(s["a_soc"]):
            self._anchor(s, x.soc, x.odo)
        elif abs(x.soc - s["a_soc"]) >= self.p.window_pct:
            self._close_window(s, tp, x.soc, x.odo)
            self._anchor(s, x.soc, x.odo)

    def _energy_per_km(self, s, x: _Sample) -> None:
        """The regression sums of energy per km, over steady driving only."""
        km = (x.odo - s["prev_odo"]) / 1000.0
        hours = x.dt / 3600.0 if x.e_ok else 0.0
        steady = x.driving and s["drv"] and x.e_ok and not x.dt > 1.5 * s["prev_dt"]
        if not (steady and km >= 0 and km <= 300.0 * hours):
            return
        f = math.exp(-km / self.p.energy_memory_km)
        for k, term in (
            ("e_dd", km * km),
            ("e_dt", km * hours),
            ("e_tt", hours * hours),
            ("e_dy", km * x.dwh),
            ("e_ty", hours * x.dwh),
        ):
            s[k] = s[k] * f + term
        s["e_km"] += km

    def _resistance(self, s, tp, x: _Sample, touched) -> None:
        """A current step between two close samples: one resistance estimate into the histogram."""
        p = self.p
        ppv, pps = s["prev_v"], s["prev_soc"]
        di = x.i - s["prev_i"]
        if not (
            x.dt <= p.pair_max_dt_s
            and abs(di) >= p.pair_min_step_c * x.nominal_ah
            and _fin(x.pv)
            and _fin(ppv)
            and x.soc_known
            and _fin(pps)
            and not x.jump
        ):
            return
        docv = x.nominal_v * (float(tp.ocv.relative(x.soc)) - float(tp.ocv.relative(pps)))
        rr = -((x.pv - ppv) - docv) / di
        if not R_LO_OHM < rr < R_HI_OHM:
            return
        f = math.exp(-1.0 / p.resistance_memory_pairs)
        for cell in s["hist"].values():
            cell[0] *= f
            cell[1] *= f
        b = int(
            (math.log(rr) - math.log(R_LO_OHM)) / (math.log(R_HI_OHM) - math.log(R_LO_OHM)) * R_BINS
        )
        cell = s["hist"].setdefault(min(max(b, 0), R_BINS - 1), [0.0, 0.0])
        cell[0] += 1.0
        cell[1] += math.log(rr)
        touched["pairs"] = True

    def _charging(self, v, s, x: _Sample, events, touched) -> None:
        """A charging sample: the session starts or goes on; a stalled one is a fault."""
        p = self.p
        soc_ff = x.soc if x.soc_known else s["soc"]
        if not s["s_on"]:
            soc0 = s["soc"] if _fin(s["soc"]) else soc_ff
            s.update(
                s_on=True,
                s_t0=x.t,
                s_soc0=soc0,
                s_wh=0.0,
                s_ah=0.0,
                s_max=soc_ff,
                s_prog_t=x.t,
                s_fault=False,
            )
            touched["marked"] = True
            events.append(BatteryEvent(v, x.t, CHARGING_START, {"soc_pct": _r(soc0)}))
        elif x.soc_known and (not _fin(s["s_max"]) or x.soc > s["s_max"]):
            s["s_max"] = x.soc
            s["s_prog_t"] = x.t
        s["s_wh"] += -x.dwh
        s["s_ah"] += x.dq
        stalled_ms = x.t - s["s_prog_t"]
        if (
            not s["s_fault"]
            and stalled_ms >= p.charge_fault_after_s * 1000.0
            and soc_ff < p.charge_full_pct
        ):
            s["s_fault"] = True
            events.append(
                BatteryEvent(
                    v,
                    x.t,
                    CHARGING_FAULT,
                    {"soc_pct": _r(soc_ff), "stalled_s": round(stalled_ms / 1000.0, 1)},
                )
            )

    def _charging_end(self, v, s, x: _Sample, events, touched) -> None:
        """The first sample not charging ends the session."""
        touched["marked"] = True
        events.append(
            BatteryEvent(
                v,
                x.t,
                CHARGING_END,
                {
                    "soc_start_pct": _r(s["s_soc0"]),
                    "soc_pct": _r(x.soc if x.soc_known else s["soc"]),
                    "duration_s": round((x.t - s["s_t0"]) / 1000.0, 1) if s["s_t0"] >= 0 else None,
                    "energy_wh": round(s["s_wh"], 2),
                    "charge_ah": round(s["s_ah"], 3),
                },
            )
        )
        s.update(
            s_on=False,
            s_t0=-1,
            s_soc0=NAN,
            s_wh=0.0,
            s_ah=0.0,
            s_max=NAN,
            s_prog_t=-1,
            s_fault=False,
        )

    def _low_soc(self, v, s, tp, x: _Sample, events) -> None:
        """Below the type's low SoC: one event, re-armed low_soc_rearm_pp above it."""
        if not x.soc_known:
            return
        low = tp.low_soc_pct if tp else 20.0
        if x.soc < low:
            if s["low_armed"]:
                events.append(
                    BatteryEvent(
                        v,
                        x.t,
                        BATTERY_LOW,
                        {"soc_pct": round(x.soc, 2), "threshold_pct": float(low)},
                    )
                )
            s["low_armed"] = False
        elif x.soc >= low + self.p.low_soc_rearm_pp:
            s["low_armed"] = True

    def _parked_episode(self, s, x: _Sample) -> None:
        """12 V parked episodes: the rest-voltage fit's sums while parked (after settling)."""
        p = self.p
        parked = x.ign_eff == 0
        long_gap = not (x.dt <= p.aux_episode_gap_s)
        if s["x_on"] and (not parked or long_gap):
            self._close_episode(s, x.t)
        if parked and (not s["x_on"] or long_gap):
            s["x_on"] = True
            s["x_t0"] = x.t
            for k in _SUMS:
                s["x_" + k] = 0.0
            s["x_h0"] = s["x_h1"] = NAN
        since = x.t - s["x_t0"]
        if not (parked and _fin(x.aux) and since >= p.aux_settle_s * 1000.0):
            return
        h = since / 3.6e6
        e = math.exp(-h / (p.aux_surface_tau_s / 3600.0))
        y = x.aux - _Y0
        for k, term in zip(_SUMS, (1.0, h, h * h, e, e * e, h * e, y, h * y, e * y, y * y)):
            s["x_" + k] += term
        if not _fin(s["x_h0"]):
            s["x_h0"] = h
        s["x_h1"] = h

    @staticmethod
    def _carry(s, x: _Sample) -> None:
        """What the next sample compares itself with."""
        s["t"] = x.t
        if x.soc_known:
            s["soc"], s["t_soc"] = x.soc, x.t
        if _fin(x.pv):
            s["v_last"] = x.pv
        s["prev_v"], s["prev_i"], s["prev_soc"], s["prev_odo"] = x.pv, x.i, x.soc, x.odo
        s["chg"], s["ign"] = x.chg_eff, x.ign_eff
        s["drv"] = x.driving
        s["prev_dt"] = x.dt

    def _anchor(self, s, soc, odo) -> None:
        s.update(
            a_soc=soc, a_q=s["q"], a_odo=odo, a_ed=s["ed"], a_bad=False, a_gap=False, a_chg=False
        )

    def _close_window(self, s, tp, soc, odo) -> None:
        p = self.p
        ds = soc - s["a_soc"]
        f = math.exp(-abs(ds) / p.capacity_memory_pct)
        nominal_ah = tp.nominal_ah if tp else NAN
        ratio = (s["q"] - s["a_q"]) / (ds / 100.0) / nominal_ah
        lo, hi = p.capacity_ratio
        if not s["a_bad"] and not (ratio < lo or ratio > hi):
            x = ds / 100.0
            s["c_num"] = s["c_num"] * f + (s["q"] - s["a_q"]) * x
            s["c_den"] = s["c_den"] * f + x * x
            s["c_ev"] += abs(ds)
        km = (odo - s["a_odo"]) / 1000.0
        de = s["ed"] - s["a_ed"]
        if not s["a_gap"] and not s["a_chg"] and ds < 0 and km >= 0 and de > 0:
            s["k_num"] = s["k_num"] * f + km * de
            s["k_den"] = s["k_den"] * f + de * de
            s["k_ev"] += abs(ds)
            if s["kb_ev"] < p.baseline_pct:
                s["kb_num"] += km * de
                s["kb_den"] += de * de
                s["kb_ev"] += abs(ds)

    def _close_episode(self, s, t) -> None:
        p = self.p
        fit = _fit({k: s["x_" + k] for k in _SUMS}, s["x_h0"], s["x_h1"], p)
        if fit is not None:
            slope, var, v0 = fit
            if s["d_t"] >= 0:
                f = math.exp(-(t - s["d_t"]) / 1000.0 / p.aux_memory_s)
                s["d_w"] *= f
                s["d_ws"] *= f
            s["d_w"] += 1.0 / var
            s["d_ws"] += slope / var
            s["d_t"] = t
            s["rest_v"] = v0 - slope * s["x_h1"]
            s["rest_t"] = int(s["x_t0"] + s["x_h1"] * 3.6e6)
        s["x_on"] = False
        s["x_t0"] = -1
        for k in _SUMS:
            s["x_" + k] = 0.0
        s["x_h0"] = s["x_h1"] = NAN

    # -- per vehicle, after its samples -----------------------------------------------------

    def _estimate(self, s, tp) -> dict:
        p = self.p
        nominal_ah = tp.nominal_ah if tp else NAN
        cap = NAN
        if s["c_ev"] >= p.min_evidence_pct and s["c_den"] > 0:
            cap = s["c_num"] / s["c_den"]
        elif (
            s["k_ev"] >= p.min_evidence_pct
            and s["k_den"] > 0
            and s["kb_ev"] >= p.baseline_pct
            and s["kb_den"] > 0
            and tp
        ):
            cap = (s["k_num"] / s["k_den"]) / (s["kb_num"] / s["kb_den"]) * nominal_ah
        soh = 100.0 * cap / nominal_ah
        dd, dtt, tt = s["e_dd"], s["e_dt"], s["e_tt"]
        det = dd * tt - dtt * dtt
        per_km = NAN
        if det != 0:
            a = (tt * s["e_dy"] - dtt * s["e_ty"]) / det
            if s["e_km"] >= p.min_energy_km and det > 1e-3 * dd * tt and a > 0:
                per_km = a
        soc = s["soc"]
        range_m = NAN
        if tp and _fin(soc):
            frac = float(tp.ocv.energy_fraction(soc))
            if _fin(cap) and _fin(per_km):
                range_m = (
                    cap * tp.nominal_v * tp.ocv.full_energy_per_ah_v() * frac / per_km * 1000.0
                )
            elif s["k_ev"] >= p.min_evidence_pct and s["k_den"] > 0:
                range_m = frac * s["k_num"] / s["k_den"] * 1000.0
        aux = self._aux(s)
        return {
            "soc_pct": soc,
            "range_m": range_m,
            "soh_pct": soh,
            "capacity_ah": cap,
            "resistance_ohm": s["r_ohm"] if s["r_n"] >= p.min_pairs else NAN,
            "efc": (s["thru"] + abs(s["idle_q"])) / (2.0 * nominal_ah),
            "energy_wh_per_km": per_km,
            "aux_rest_v": aux["rest_v"],
            "aux_drain_ma": aux["drain_ma"],
            "aux_hours_to_threshold": aux["hours"],
            "charging": s["chg"],
            "pack_seq": s["pack_seq"],
            "time_ms": s["t"],
            "_aux": aux,
        }

    def _aux(self, s) -> dict:
        p = self.p
        fit = _fit({k: s["x_" + k] for k in _SUMS}, s["x_h0"], s["x_h1"], p) if s["x_on"] else None
        w, ws = s["d_w"], s["d_ws"]
        if s["d_t"] >= 0:
            f = math.exp(-max(s["t"] - s["d_t"], 0) / 1000.0 / p.aux_memory_s)
            w, ws = w * f, ws * f
        rest_now = NAN
        if fit is not None:
            slope, var, v0 = fit
            rest_now = v0 - slope * (s["t"] - s["x_t0"]) / 3.6e6
            w += 1.0 / var
            ws += slope / var
        sl = ws / w if w > 0 else NAN
        se = 1.0 / math.sqrt(w) if w > 0 else NAN
        known = sl > 0 and se <= p.aux_max_rel_error * sl
        ma_per = p.aux_nominal_ah / (p.aux_full_v - p.aux_empty_v) * 1000.0
        hours = NAN
        if fit is not None:
            if rest_now <= p.aux_threshold_v:
                hours = 0.0
            elif known:
                hours = (rest_now - p.aux_threshold_v) / sl
        return {
            "parked": s["x_on"],
            "valid": fit is not None,
            "rest_v": rest_now if fit is not None else s["rest_v"],
            "drain_ma": sl * ma_per if known else NAN,
            "hours": hours,
            "s": sl,
            "se": se,
        }

    def _vehicle_alerts(self, v, s, est, events) -> None:
        p = self.p
        t = s["t"]
        soh = est["soh_pct"]

        def episode(key, fire, rearm) -> bool:
            raised = fire and s[key]
            s[key] = False if fire else (True if rearm else s[key])
            return raised

        if episode(
            "health_armed", soh < p.health_low_pct, soh >= p.health_low_pct + p.health_rearm_pp
        ):
            events.append(
                BatteryEvent(
                    v,
                    t,
                    BATTERY_HEALTH_LOW,
                    {"soh_pct": round(soh, 2), "threshold_pct": p.health_low_pct},
                )
            )
        a = est["_aux"]
        hours = a["hours"]
        fire = a["valid"] and (a["rest_v"] <= p.aux_threshold_v or hours < p.aux_risk_hours)
        rearm = (not a["parked"]) or (
            a["valid"] and a["rest_v"] > p.aux_threshold_v and not hours < 1.5 * p.aux_risk_hours
        )
        if episode("risk_armed", fire, rearm):
            events.append(
                BatteryEvent(
                    v,
                    t,
                    AUX_BATTERY_AT_RISK,
                    {
                        "aux_rest_v": round(a["rest_v"], 3),
                        "aux_hours_to_threshold": round(hours, 1) if _fin(hours) else None,
                        "threshold_v": p.aux_threshold_v,
                    },
                )
            )
        ma_per = p.aux_nominal_ah / (p.aux_full_v - p.aux_empty_v) * 1000.0
        z = p.abnormal_drain_z
        fire = (
            a["se"] <= p.abnormal_drain_max_rel_error * a["s"]
            and (a["s"] - z * a["se"]) * ma_per > p.abnormal_drain_ma
        )
        rearm = (a["s"] + z * a["se"]) * ma_per < 0.6 * p.abnormal_drain_ma
        if episode("drain_armed", fire, rearm):
            events.append(
                BatteryEvent(
                    v,
                    t,
                    ABNORMAL_PARKED_DRAIN,
                    {
                        "aux_drain_ma": round(a["s"] * ma_per, 1),
                        "threshold_ma": p.abnormal_drain_ma,
                    },
                )
            )


def _fit(c: dict, h0: float, h1: float, p: BatteryPolicy):
    if not (c["n"] >= p.aux_min_samples and h1 - h0 >= p.aux_min_span_s / 3600.0):
        return None
    m = np.array(
        [
            [c["n"], c["sh"], c["se"]],
            [c["sh"], c["shh"], c["she"]],
            [c["se"], c["she"], c["see"] + 1e-6 * c["n"]],
        ]
    )
    if not abs(np.linalg.det(m)) > 0:
        return None
    inv = np.linalg.inv(m)
    rhs = np.array([c["sy"], c["shy"], c["sey"]])
    beta = inv @ rhs
    rss = c["syy"] - float(beta @ rhs)
    s2 = max(rss / max(c["n"] - 3, 1), p.aux_noise_floor_v**2)
    var = s2 * inv[1, 1]
    if not var > 0:
        return None
    return -float(beta[1]), float(var), float(beta[0]) + _Y0


def _iqm(hist: dict) -> float:
    bins = sorted(b for b, (w, _) in hist.items() if w > 0)
    total = sum(hist[b][0] for b in bins)
    if total <= 0:
        return NAN
    lo, hi = 0.25 * total, 0.75 * total
    cum = 0.0
    acc = share_sum = 0.0
    for b in bins:
        w, wl = hist[b]
        share = max(min(cum + w, hi) - max(cum, lo), 0.0)
        cum += w
        acc += share * wl / w
        share_sum += share
    return math.exp(acc / share_sum)


def _r(x: float) -> float | None:
    return round(x, 2) if _fin(x) else None


# ---------------------------------------------------------------------------------- running ---


def batch_frame(batch: TelemetryBatch):
    import pandas as pd

    return pd.DataFrame(batch.columns())


def compare(core_est, ref_est: dict[int, dict], rtol: float = 1e-6) -> dict:
    """Key estimates of both implementations: how many values differ beyond rtol (NaN must
    match NaN)."""
    mismatches: dict[str, int] = {}
    cols = core_est.columns()
    pos = {int(v): j for j, v in enumerate(cols["vehicle"].tolist())}
    missing = set(pos) ^ set(ref_est)
    for name in COMPARED:
        a = cols[name]
        b = np.array(
            [ref_est[int(v)][name] if int(v) in ref_est else NAN for v in cols["vehicle"].tolist()],
            dtype=np.float64,
        )
        bad = ~(
            (np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=rtol, atol=1e-9, equal_nan=False)
        )
        if bad.any():
            mismatches[name] = int(bad.sum())
    return {"vehicles": len(pos), "vehicles_only_in_one": len(missing), "mismatches": mismatches}


def simulated_fleet(n_vehicles: int, seed: int = 1):
    from firmware_sim.model import CAR, EBIKE, VEHICLE_TYPES, AuxSpec, FleetModel

    kinds = np.where(np.arange(n_vehicles) % 2 == 0, EBIKE, CAR)
    model = FleetModel(kinds, seed=seed, ageing_speedup=50.0, aux=AuxSpec(fault_share=0.1))
    names = [VEHICLE_TYPES[k] for k in kinds]
    return model, names


def run(
    vehicles: int = 10_000,
    samples: int = 100_000,
    warmup_hours: float = 12.0,
    seed: int = 1,
    repeats: int = 5,
) -> dict:
    import pandas as pd

    model, names = simulated_fleet(vehicles, seed)
    core = BatteryCore(DEFAULT_TYPES)
    core.set_vehicle_types(np.arange(vehicles), names)
    # Warm-up through the core, an hour of 60 s samples per batch.
    for _ in range(int(warmup_hours)):
        core.update(TelemetryBatch.concat([model.step(60.0).to_batch() for _ in range(60)]))
    steps = max(1, samples // vehicles)
    batch = TelemetryBatch.concat([model.step(30.0).to_batch() for _ in range(steps)])
    # Rows arrive interleaved from many messages, not sorted: shuffle them.
    batch = batch.take(np.random.default_rng(seed).permutation(len(batch)))
    state = core.export_state()

    # The core, several times from the same state (restored, untimed): best and median.
    times = []
    for _ in range(repeats):
        fresh = BatteryCore(DEFAULT_TYPES)
        fresh.set_vehicle_types(np.arange(vehicles), names)
        fresh.restore(copy.deepcopy(state))
        t0 = time.perf_counter()
        update = fresh.update(batch)
        times.append(time.perf_counter() - t0)
    core_s = min(times)

    ref = ReferenceBattery(DEFAULT_TYPES, core.policy, dict(enumerate(names)), copy.deepcopy(state))
    t0 = time.perf_counter()
    df = batch_frame(batch)
    ref_events, ref_est = ref.update(df)
    ref_s = time.perf_counter() - t0

    cmp = compare(update.estimates, ref_est)
    core_ev = sorted((e.vehicle, e.time_ms, e.type) for e in update.events)
    ref_ev = sorted((e.vehicle, e.time_ms, e.type) for e in ref_events)
    return {
        "samples": len(batch),
        "vehicles": vehicles,
        "used": update.used,
        "warmup_hours": warmup_hours,
        "batch_span_s": steps * 30,
        "core_s": round(core_s, 4),
        "core_s_median": round(float(np.median(times)), 4),
        "core_us_per_sample": round(core_s / len(batch) * 1e6, 3),
        "baseline_s": round(ref_s, 3),
        "baseline_us_per_sample": round(ref_s / len(batch) * 1e6, 2),
        "ratio": round(ref_s / core_s, 1),
        "same_estimates": not cmp["mismatches"] and not cmp["vehicles_only_in_one"],
        "compare": cmp,
        "events": len(core_ev),
        "same_events": core_ev == ref_ev,
        "history_rows": len(update.history),
        "machine": machine(numpy=np.__version__, pandas=pd.__version__, loadavg_1_5_15=loadavg()),
    }


def bench(args: argparse.Namespace) -> dict:
    return run(args.vehicles, args.samples, args.warmup_hours, args.seed, args.repeats)


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=10_000, help="simulated vehicles")
    p.add_argument("--samples", type=int, default=100_000, help="samples in the timed batch")
    p.add_argument(
        "--warmup-hours", type=float, default=12.0, help="hours of samples through the core first"
    )
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    p.add_argument("--repeats", type=int, default=5, help="core runs (best and median reported)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
