"""The comparison itself: fleetgate's observations of a shadow batch beside the legacy
platform's, metric by metric (docs/migration.md, "What validate compares"), per vehicle and in
aggregate, in array operations over the whole sample (no loop over vehicles or samples)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from parity.observations import UNKNOWN, Observations, Rides, TimeKeys, rides_from_observations
from parity.thresholds import DEFAULT_THRESHOLDS, GO_LIVE_MIN_PERCENT, Band, Thresholds
from telemetry.earth import haversine_m

COLOURS = ("green", "yellow", "red")
METRICS = ("coverage", "position", "state", "presence", "latency", "gaps", "usage")
STATE_FLAGS = ("locked", "ignition", "immobilised")


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: its value (NaN: nothing to compare), colour and the figures behind it."""

    name: str
    value: float
    colour: str
    detail: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"value": _num(self.value), "colour": self.colour, **self.detail}


@dataclass(frozen=True, slots=True)
class VehicleParity:
    vehicle: int
    colour: str
    legacy_samples: int
    fleetgate_samples: int
    coverage: float
    position_p95_m: float
    state_agreement: float
    one_sided_gaps: int
    rides: int
    rides_billed_alike: int
    present: tuple[bool, bool]  # (fleetgate, legacy) heard from within presence_s of the end

    def to_json(self) -> dict:
        return {
            "vehicle": self.vehicle,
            "colour": self.colour,
            "legacy_samples": self.legacy_samples,
            "fleetgate_samples": self.fleetgate_samples,
            "coverage": _num(self.coverage),
            "position_p95_m": _num(self.position_p95_m),
            "state_agreement": _num(self.state_agreement),
            "one_sided_gaps": self.one_sided_gaps,
            "rides": self.rides,
            "rides_billed_alike": self.rides_billed_alike,
            "present": {"fleetgate": self.present[0], "legacy": self.present[1]},
        }


@dataclass(frozen=True, slots=True)
class ParityReport:
    metrics: dict[str, Metric]
    vehicles: list[VehicleParity]
    percent: float
    below_minimum: bool
    days: float  # from the batch's start to the newest compared sample (see _days_covered)
    newest_ms: int | None
    thresholds: Thresholds

    @property
    def overall(self) -> str:
        return max((m.colour for m in self.metrics.values()), key=COLOURS.index, default="red")

    @property
    def passed(self) -> bool:
        """Every metric green (the go-live rules' "no issues"); the share and the days are the
        gate's to judge."""
        return all(m.colour == "green" for m in self.metrics.values())

    def colours(self) -> dict[str, str]:
        return {name: m.colour for name, m in self.metrics.items()}

    def notes(self) -> list[str]:
        out = []
        if self.below_minimum:
            out.append(
                f"the batch is {self.percent:g} % of the fleet, below the go-live minimum of "
                f"{GO_LIVE_MIN_PERCENT:g} %"
            )
        for m in self.metrics.values():
            if math.isnan(m.value):
                out.append(f"{m.name}: nothing to compare")
        return out

    def to_json(self) -> dict:
        return {
            "overall": self.overall,
            "passed": self.passed,
            "percent": self.percent,
            "below_minimum": self.below_minimum,
            "minimum_percent": GO_LIVE_MIN_PERCENT,
            "days": round(self.days, 4),
            "newest_sample": self.newest_ms,
            "notes": self.notes(),
            "metrics": {name: m.to_json() for name, m in self.metrics.items()},
            "vehicles": [v.to_json() for v in self.vehicles],
            "thresholds": self.thresholds.to_json(),
        }


def compare(
    vehicles: np.ndarray,
    fleetgate: Observations,
    legacy: Observations,
    fleetgate_rides: Rides,
    *,
    percent: float,
    started_ms: int,
    until_ms: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    legacy_rides: Rides | None = None,
) -> ParityReport:
    """The batch's vehicles as both sides saw them from started_ms to until_ms (now, or the
    batch's end). fleetgate_rides are fleetgate's ended trips; the legacy platform's rides are
    derived from its observations unless given."""
    th = thresholds
    ids = np.unique(np.asarray(vehicles, np.int64))
    n = len(ids)
    if legacy_rides is None:
        legacy_rides = rides_from_observations(legacy, th.gap_s)
    f_rows, fv = _in_batch(fleetgate, ids)
    l_rows, lv = _in_batch(legacy, ids)
    keys = TimeKeys(
        fleetgate.time_ms,
        legacy.time_ms,
        fleetgate_rides.started_ms,
        legacy_rides.started_ms,
        margin_ms=int(th.longest_window_s() * 1000) + 86_400_000,  # no window spans two vehicles
    )
    f, fv, fk = _sorted(fleetgate, f_rows, fv, keys)
    lg, lv, lk = _sorted(legacy, l_rows, lv, keys)
    ms = lambda s: int(round(s * 1000))  # noqa: E731

    # coverage, both ways
    j_lf, d_lf = _nearest(lk, fk)
    _, d_fl = _nearest(fk, lk)
    cov_l, cov_f = d_lf <= ms(th.match_s), d_fl <= ms(th.match_s)
    coverage = min(_share(cov_l), _share(cov_f))
    v_cov = np.fmin(_ratio(lv, cov_l, n), _ratio(fv, cov_f, n))
    metrics = {
        "coverage": Metric(
            "coverage",
            coverage,
            th.coverage.colour(coverage),
            {
                "legacy_covered": _num(_share(cov_l)),
                "fleetgate_covered": _num(_share(cov_f)),
                "legacy_samples": len(lk),
                "fleetgate_samples": len(fk),
                "window_s": th.match_s,
            },
        )
    }

    # pairs: a fleetgate sample and a legacy one of the same moment
    pl = np.flatnonzero(d_lf <= ms(th.pair_s))
    pf = j_lf[pl]
    pv = lv[pl]
    fixes = (
        np.isfinite(lg.lat[pl])
        & np.isfinite(lg.lon[pl])
        & np.isfinite(f.lat[pf])
        & np.isfinite(f.lon[pf])
    )
    dist = haversine_m(lg.lat[pl][fixes], lg.lon[pl][fixes], f.lat[pf][fixes], f.lon[pf][fixes])
    p50, p95 = _percentile(dist, 50), _percentile(dist, 95)
    pos_colour = _worst(th.position_p50_m.colour(p50), th.position_p95_m.colour(p95))
    v_p95 = _group_percentile(pv[fixes], dist, n, 95)
    metrics["position"] = Metric(
        "position",
        p95,
        pos_colour,
        {
            "p50_m": _num(p50, 2),
            "p95_m": _num(p95, 2),
            "max_m": _num(float(dist.max()) if len(dist) else math.nan, 2),
            "pairs": int(fixes.sum()),
        },
    )

    # state: locked, ignition, immobilised alike; SoC within soc_pp
    per_field, agree_v, count_v = {}, np.zeros(n), np.zeros(n)
    for name in STATE_FLAGS:
        a, b = getattr(lg, name)[pl], getattr(f, name)[pf]
        both = (a != UNKNOWN) & (b != UNKNOWN)
        same = both & (a == b)
        per_field[name] = (_share(same[both]), int(both.sum()))
        agree_v += np.bincount(pv[same], minlength=n)
        count_v += np.bincount(pv[both], minlength=n)
    a, b = lg.soc_pct[pl], f.soc_pct[pf]
    both = np.isfinite(a) & np.isfinite(b)
    same = both & (np.abs(a - b) <= th.soc_pp + 1e-9)
    per_field["soc_pct"] = (_share(same[both]), int(both.sum()))
    agree_v += np.bincount(pv[same], minlength=n)
    count_v += np.bincount(pv[both], minlength=n)
    shares = [s for s, c in per_field.values() if c]
    state = min(shares) if shares else math.nan
    metrics["state"] = Metric(
        "state",
        state,
        th.state.colour(state),
        {
            "fields": {k: {"agreement": _num(s), "pairs": c} for k, (s, c) in per_field.items()},
            "soc_within_pp": th.soc_pp,
        },
    )
    v_state = np.where(count_v > 0, agree_v / np.maximum(count_v, 1), np.nan)

    # presence: heard from by each side within presence_s of the newest compared sample
    newest = max([int(x.max()) for x in (f.time_ms, lg.time_ms) if len(x)], default=None)
    f_last, l_last = _last_per_vehicle(fv, f.time_ms, n), _last_per_vehicle(lv, lg.time_ms, n)
    if newest is None:
        f_here = l_here = np.zeros(n, bool)
        presence = math.nan
    else:
        f_here = f_last >= newest - ms(th.presence_s)
        l_here = l_last >= newest - ms(th.presence_s)
        presence = _share(f_here == l_here) if n else math.nan
    metrics["presence"] = Metric(
        "presence",
        presence,
        th.presence.colour(presence),
        {
            "present_both": int((f_here & l_here).sum()),
            "fleetgate_only": [int(v) for v in ids[f_here & ~l_here]],
            "legacy_only": [int(v) for v in ids[l_here & ~f_here]],
            "never_seen_by_fleetgate": [int(v) for v in ids[f_last < 0]],
            "never_seen_by_legacy": [int(v) for v in ids[l_last < 0]],
            "window_s": th.presence_s,
        },
    )

    # latency: how much later fleetgate received a sample than the legacy platform did
    known = (lg.received_ms[pl] >= 0) & (f.received_ms[pf] >= 0)
    behind_s = (f.received_ms[pf][known] - lg.received_ms[pl][known]) / 1000.0
    own = f.received_ms >= 0
    own_s = (f.received_ms[own] - f.time_ms[own]) / 1000.0
    lat95 = _percentile(behind_s, 95)
    metrics["latency"] = Metric(
        "latency",
        lat95,
        th.latency_p95_s.colour(lat95),
        {
            "behind_legacy_p50_s": _num(_percentile(behind_s, 50), 3),
            "behind_legacy_p95_s": _num(lat95, 3),
            "fleetgate_p95_s": _num(_percentile(own_s, 95), 3),
            "pairs": int(known.sum()),
        },
    )

    # gaps one side has and the other does not
    gap_f = _one_sided_gaps(fk, fv, f.time_ms, lk, keys, ms(th.gap_s), ms(th.match_s), n)
    gap_l = _one_sided_gaps(lk, lv, lg.time_ms, fk, keys, ms(th.gap_s), ms(th.match_s), n)
    v_gaps = gap_f + gap_l
    gaps = _share(v_gaps > 0) if n else math.nan
    metrics["gaps"] = Metric(
        "gaps",
        gaps,
        th.one_sided_gaps.colour(gaps),
        {
            "fleetgate_only": int(gap_f.sum()),
            "legacy_only": int(gap_l.sum()),
            "vehicles_with_one": int((v_gaps > 0).sum()),
            "gap_s": th.gap_s,
        },
    )

    # usage parity per ride: billed minutes and distance alike
    usage, v_rides, v_alike = _usage(fleetgate_rides, legacy_rides, ids, keys, th)
    metrics["usage"] = usage

    colour = _vehicle_colours(th, v_cov, v_p95, v_state, v_rides, v_alike)
    per_vehicle = [
        VehicleParity(
            vehicle=int(ids[i]),
            colour=colour[i],
            legacy_samples=int(c_l),
            fleetgate_samples=int(c_f),
            coverage=float(v_cov[i]),
            position_p95_m=float(v_p95[i]),
            state_agreement=float(v_state[i]),
            one_sided_gaps=int(v_gaps[i]),
            rides=int(v_rides[i]),
            rides_billed_alike=int(v_alike[i]),
            present=(bool(f_here[i]), bool(l_here[i])),
        )
        for i, (c_l, c_f) in enumerate(
            zip(np.bincount(lv, minlength=n), np.bincount(fv, minlength=n), strict=True)
        )
    ]
    days = _days_covered(newest, started_ms, until_ms, ms(th.presence_s))
    return ParityReport(
        metrics=metrics,
        vehicles=per_vehicle,
        percent=float(percent),
        below_minimum=percent < GO_LIVE_MIN_PERCENT,
        days=days,
        newest_ms=newest,
        thresholds=th,
    )


def _days_covered(newest: int | None, started_ms: int, until_ms: int | None, recent_ms: int):
    """Days from the start to the newest compared sample; to until_ms when that sample is within
    recent_ms of it (both sides still reporting at the end: a batch of 14 days that ran to its
    end covered 14 days, not 14 days less one reporting interval)."""
    if newest is None:
        return 0.0
    end = until_ms if until_ms is not None and newest >= until_ms - recent_ms else newest
    return max(0.0, (end - started_ms) / 86_400_000)


def _usage(fr: Rides, lr: Rides, ids: np.ndarray, keys: TimeKeys, th: Thresholds):
    n = len(ids)
    fr_in, fr_v = _rides_in_batch(fr, ids)
    lr_in, lr_v = _rides_in_batch(lr, ids)
    fk = keys.of(fr_v, fr_in.started_ms)
    order = np.argsort(fk, kind="stable")
    fr_in = Rides(*(getattr(fr_in, s)[order] for s in Rides.__slots__))
    fr_v, fk = fr_v[order], fk[order]
    lk = keys.of(lr_v, lr_in.started_ms)
    j, d = _nearest(lk, fk)
    matched = np.flatnonzero(d <= int(th.ride_match_s * 1000))
    fj = j[matched]
    # one fleetgate ride answers one legacy ride at most
    if len(fj):
        first = np.ones(len(fj), bool)
        first[1:] = fj[1:] != fj[:-1]
        matched, fj = matched[first], fj[first]
    dur_l = (lr_in.ended_ms[matched] - lr_in.started_ms[matched]) / 1000.0
    dur_f = (fr_in.ended_ms[fj] - fr_in.started_ms[fj]) / 1000.0
    min_l, min_f = np.ceil(dur_l / 60.0 - 1e-9), np.ceil(dur_f / 60.0 - 1e-9)
    dl, df = lr_in.distance_m[matched], fr_in.distance_m[fj]
    tol = np.maximum(th.ride_distance_pct / 100.0 * np.fmax(dl, df), th.ride_distance_m)
    dist_ok = (np.abs(dl - df) <= tol) | (np.isnan(dl) & np.isnan(df))
    minutes_ok = min_l == min_f
    alike = dist_ok & minutes_ok
    unmatched_f = len(fr_in) - len(fj)
    unmatched_l = len(lr_in) - len(matched)
    total = len(matched) + unmatched_f + unmatched_l
    value = int(alike.sum()) / total if total else math.nan
    v_rides = (
        np.bincount(lr_v[matched], minlength=n)
        + _unmatched_per_vehicle(fr_v, fj, n)
        + _unmatched_per_vehicle(lr_v, matched, n)
    )
    v_alike = np.bincount(lr_v[matched][alike], minlength=n)
    metric = Metric(
        "usage",
        value,
        th.usage.colour(value),
        {
            "rides_fleetgate": len(fr_in),
            "rides_legacy": len(lr_in),
            "matched": len(matched),
            "unmatched_fleetgate": unmatched_f,
            "unmatched_legacy": unmatched_l,
            "billed_minutes_changed": int((~minutes_ok).sum()),
            "distance_disagreements": int((~dist_ok).sum()),
            "billed_minutes_fleetgate": int(min_f.sum()),
            "billed_minutes_legacy": int(min_l.sum()),
            "distance_m_fleetgate": _num(float(np.nansum(df)), 1),
            "distance_m_legacy": _num(float(np.nansum(dl)), 1),
        },
    )
    return metric, v_rides, v_alike


def _unmatched_per_vehicle(v: np.ndarray, matched_rows: np.ndarray, n: int) -> np.ndarray:
    left = np.ones(len(v), bool)
    left[matched_rows] = False
    return np.bincount(v[left], minlength=n)


def _vehicle_colours(th, cov, p95, state, rides, alike) -> list[str]:
    def grade(band: Band, values: np.ndarray) -> np.ndarray:
        g = values >= band.green if band.higher else values <= band.green
        y = values >= band.yellow if band.higher else values <= band.yellow
        # NaN (nothing to compare for this vehicle) grades green: the aggregate says yellow
        return np.where(np.isnan(values) | g, 0, np.where(y, 1, 2))

    with np.errstate(invalid="ignore", divide="ignore"):
        usage = np.where(rides > 0, alike / np.maximum(rides, 1), np.nan)
    worst = np.maximum.reduce(
        [
            grade(th.coverage, cov),
            grade(th.position_p95_m, p95),
            grade(th.state, state),
            grade(th.usage, usage),
        ]
    )
    return [COLOURS[int(w)] for w in worst]


def _in_batch(obs: Observations, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the batch's vehicles, and each row's vehicle index into ids."""
    idx = np.searchsorted(ids, obs.vehicle)
    ok = idx < len(ids)
    ok[ok] = ids[idx[ok]] == obs.vehicle[ok]
    return np.flatnonzero(ok), idx[ok]


def _rides_in_batch(r: Rides, ids: np.ndarray) -> tuple[Rides, np.ndarray]:
    idx = np.searchsorted(ids, r.vehicle)
    ok = idx < len(ids)
    ok[ok] = ids[idx[ok]] == r.vehicle[ok]
    return Rides(*(getattr(r, s)[ok] for s in Rides.__slots__)), idx[ok]


def _sorted(obs: Observations, rows: np.ndarray, vidx: np.ndarray, keys: TimeKeys):
    """The batch's rows of obs in (vehicle, time) order (taken once), their vehicle indexes and
    keys."""
    k = keys.of(vidx, obs.time_ms[rows])
    order = np.argsort(k, kind="stable")
    return obs.take(rows[order]), vidx[order], k[order]


def _nearest(q: np.ndarray, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key of q, the row of the nearest of sorted_keys and its distance (inf: none)."""
    if not len(sorted_keys) or not len(q):
        return np.zeros(len(q), np.int64), np.full(len(q), np.inf)
    pos = np.searchsorted(sorted_keys, q)
    left = np.clip(pos - 1, 0, len(sorted_keys) - 1)
    right = np.clip(pos, 0, len(sorted_keys) - 1)
    dl = np.abs(q - sorted_keys[left]).astype(np.float64)
    dr = np.abs(sorted_keys[right] - q).astype(np.float64)
    use_right = dr < dl
    return np.where(use_right, right, left), np.where(use_right, dr, dl)


def _one_sided_gaps(k, v, t, other_k, keys, gap_ms, match_ms, n) -> np.ndarray:
    """Per vehicle, the gaps (longer than gap_ms between two samples) in which the other side
    heard from the vehicle (a sample more than match_ms inside the gap)."""
    if len(k) < 2:
        return np.zeros(n, np.int64)
    inside = (v[1:] == v[:-1]) & (t[1:] - t[:-1] > gap_ms)
    a = np.flatnonzero(inside)
    lo = np.searchsorted(other_k, k[a] + match_ms, "right")
    hi = np.searchsorted(other_k, k[a + 1] - match_ms, "left")
    return np.bincount(v[a][hi > lo], minlength=n)


def _last_per_vehicle(v: np.ndarray, t: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1, np.int64)
    np.maximum.at(out, v, t)
    return out


def _ratio(v: np.ndarray, hit: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(v, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.bincount(v[hit], minlength=n) / np.maximum(total, 1), np.nan)


def _group_percentile(v: np.ndarray, x: np.ndarray, n: int, q: float) -> np.ndarray:
    """Per group 0..n-1, the nearest-rank q-th percentile of x (NaN: an empty group)."""
    out = np.full(n, np.nan)
    if not len(x):
        return out
    order = np.argsort(x, kind="stable")
    order = order[np.argsort(v[order], kind="stable")]  # by group, then by value
    counts = np.bincount(v, minlength=n)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    has = counts > 0
    rank = start[has] + np.ceil(q / 100.0 * counts[has]).astype(np.int64) - 1
    out[has] = x[order][np.maximum(rank, start[has])]
    return out


def _share(hit: np.ndarray) -> float:
    return float(hit.mean()) if len(hit) else math.nan


def _percentile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else math.nan


def _worst(*colours: str) -> str:
    return max(colours, key=COLOURS.index)


def _num(x: float, digits: int = 5) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), digits)


def evidence_detail(report: ParityReport, batch_vehicles: int) -> dict:
    """What a validation leaves as go-live evidence ("parallel_run", passed = every metric
    green): the share, the days covered so far, the colours and the figures behind them."""
    return {
        "percent": report.percent,
        "days": round(report.days, 4),
        "colours": report.colours(),
        "overall": report.overall,
        "below_minimum": report.below_minimum,
        "vehicles": batch_vehicles,
        "newest_sample": report.newest_ms,
        "metrics": {name: m.to_json() for name, m in report.metrics.items()},
    }


def summary(report: ParityReport) -> list[str]:
    """The report as lines for a terminal: one per metric, then the notes."""
    lines = [f"{name:<9} {m.colour:<6}  {_figures(m)}" for name, m in report.metrics.items()]
    lines.append(f"overall   {report.overall}")
    return lines + [f"note: {n}" for n in report.notes()]


def _figures(m: Metric) -> str:  # noqa: C901 - one line per metric
    d = m.detail
    if m.name == "coverage":
        return (
            f"{_pct(m.value)} of samples matched within ±{d['window_s']:g} s (legacy "
            f"{_pct(d['legacy_covered'])}, fleetgate {_pct(d['fleetgate_covered'])})"
        )
    if m.name == "position":
        return f"p50 {_m(d['p50_m'])}, p95 {_m(d['p95_m'])} over {d['pairs']} time-matched fixes"
    if m.name == "state":
        return ", ".join(
            f"{k} {_pct(v['agreement'])} of {v['pairs']}" for k, v in d["fields"].items()
        )
    if m.name == "presence":
        return (
            f"{_pct(m.value)} of vehicles alike ({d['present_both']} heard by both within "
            f"{d['window_s']:g} s of the end)"
        )
    if m.name == "latency":
        return (
            f"fleetgate behind the legacy platform: p95 {_s(d['behind_legacy_p95_s'])} over "
            f"{d['pairs']} samples"
        )
    if m.name == "gaps":
        return (
            f"{d['fleetgate_only']} in fleetgate's samples only, {d['legacy_only']} in the "
            f"legacy platform's only (gap > {d['gap_s']:g} s)"
        )
    return (
        f"{_pct(m.value)} of rides billed alike; {d['matched']} matched of "
        f"{d['rides_fleetgate']} (fleetgate) / {d['rides_legacy']} (legacy), "
        f"{d['billed_minutes_changed']} with other billed minutes, "
        f"{d['distance_disagreements']} with other distances"
    )


def _pct(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.2f} %"


def _m(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} m"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s"
