"""Parallel-run validation benchmark: `fleetgate migrate validate`'s comparison (the parity core)
over a whole shadow batch, beside a plain-Python baseline of the same comparison in the same run.

Both sides of a batch are generated: every vehicle reports every --interval seconds for --days
days, rides of a few minutes now and then; the legacy side is the same samples with a little GPS
noise and 0.5 % of them lost. The numpy core computes all seven metrics and every vehicle's
figures; the baseline (per vehicle, per sample, with bisect) computes coverage, position
percentiles, state agreement and the legacy rides only, and runs on --baseline-vehicles of the
vehicles (its time is given per sample, and scaled to the whole batch).
Run: .venv/bin/python -m benchmarks.parity [--vehicles 1000] [--days 14] [--interval 300]
"""

from __future__ import annotations

import argparse
import bisect
import math

import numpy as np

from benchmarks._runner import (
    bench_parser,
    best_in_turn,
    cpu_seconds,
    loadavg,
    machine,
    run_benchmark,
)
from parity import Observations, compare, rides_from_observations
from telemetry.earth import M_PER_DEG, haversine_m

T0 = 1_780_000_000_000


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=1000, help="vehicles in the shadow batch")
    p.add_argument("--days", type=float, default=14.0, help="days of the parallel run")
    p.add_argument("--interval", type=float, default=300.0, help="seconds between two samples")
    p.add_argument(
        "--baseline-vehicles", type=int, default=50, help="vehicles the plain-Python baseline runs"
    )
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each, best kept")
    return p


def sides(vehicles: int, days: float, interval: float, seed: int = 1):
    """(fleetgate's columns, the legacy platform's) of a batch (see the module)."""
    rng = np.random.default_rng(seed)
    n = int(days * 86400 / interval)
    v = np.repeat(np.arange(1, vehicles + 1, dtype=np.int64), n)
    k = np.tile(np.arange(n, dtype=np.int64), vehicles)
    t = T0 + (k * interval * 1000).astype(np.int64)
    # rides: 3 samples unlocked out of every 40, shifted per vehicle
    phase = (k + v * 7) % 40
    riding = phase < 3
    north = np.cumsum(np.where(riding, 300.0, 0.0).reshape(vehicles, n), axis=1).ravel()
    lat = 52.3 + (v % 100) * 1e-3 + north / M_PER_DEG
    lon = 13.2 + (v // 100) * 1e-3 + np.zeros(len(v))
    soc = 90.0 - (k % 500) * 0.1
    fleet = dict(
        vehicle=v,
        time_ms=t,
        received_ms=t + 400,
        lat=lat,
        lon=lon,
        soc_pct=soc,
        odometer_m=np.full(len(v), np.nan),
        locked=(~riding).astype(np.int8),
        ignition=riding.astype(np.int8),
        immobilised=np.zeros(len(v), np.int8),
    )
    keep = rng.random(len(v)) >= 0.005
    legacy = {name: col[keep] for name, col in fleet.items()}
    legacy["lat"] = legacy["lat"] + rng.normal(0, 2, keep.sum()) / M_PER_DEG
    legacy["received_ms"] = legacy["received_ms"] - 200
    return Observations(**fleet), Observations(**legacy)


def with_numpy(fleet: Observations, legacy: Observations, vehicles: np.ndarray):
    rides = rides_from_observations(fleet)
    return compare(vehicles, fleet, legacy, rides, percent=10, started_ms=T0)


def baseline(fleet: Observations, legacy: Observations, vehicles: int, window_ms: int = 30_000):
    """The same comparison's heart in plain Python: per vehicle, each legacy sample's nearest
    fleetgate sample by bisect; coverage, position p50/p95, state agreement, legacy rides."""
    by_vehicle = _by_vehicle(fleet, legacy, vehicles)
    covered = total = same = compared = 0
    distances: list[float] = []
    rides = 0
    for d in by_vehicle.values():
        f = sorted(d["f"])
        ft = [s[0] for s in f]
        prev, riding = None, False
        for s in sorted(d["l"]):
            total += 1
            best = _nearest(ft, s[0])
            if best is not None and abs(ft[best] - s[0]) <= window_ms:
                covered += 1
                if ft[best] == s[0]:
                    other = f[best]
                    distances.append(float(haversine_m(s[1], s[2], other[1], other[2])))
                    compared += 2
                    same += (s[3] == other[3]) + (abs(s[4] - other[4]) <= 2.0)
            if prev is not None and prev[3] == 1 and s[3] == 0:
                riding = True
            elif prev is not None and prev[3] == 0 and s[3] == 1 and riding:
                rides, riding = rides + 1, False  # a ride counts once it has ended
            prev = s
    distances.sort()

    def pct(q: float) -> float:
        return distances[max(0, math.ceil(q / 100 * len(distances)) - 1)] if distances else 0.0

    return {
        "coverage": covered / total,
        "p50": pct(50),
        "p95": pct(95),
        "state": same / compared,
        "rides": rides,
    }


def _by_vehicle(fleet: Observations, legacy: Observations, vehicles: int) -> dict:
    """vehicle -> {"f": fleetgate's samples, "l": the legacy ones}, as tuples (t, lat, lon,
    locked, soc) of the first `vehicles` vehicles."""
    by_vehicle: dict[int, dict[str, list]] = {}
    for side, obs in (("f", fleet), ("l", legacy)):
        cols = [obs.vehicle.tolist(), obs.time_ms.tolist(), obs.lat.tolist(), obs.lon.tolist()]
        cols += [obs.locked.tolist(), obs.soc_pct.tolist()]
        for vv, tt, la, lo, lk, soc in zip(*cols, strict=True):
            if vv <= vehicles:
                d = by_vehicle.setdefault(vv, {"f": [], "l": []})
                d[side].append((tt, la, lo, lk, soc))
    return by_vehicle


def _nearest(times: list[int], t: int) -> int | None:
    i = bisect.bisect_left(times, t)
    if i == len(times):
        return i - 1 if i else None
    return i - 1 if i and t - times[i - 1] < times[i] - t else i


def bench(args: argparse.Namespace) -> dict:
    fleet, legacy = sides(args.vehicles, args.days, args.interval)
    ids = np.arange(1, args.vehicles + 1)
    sub = args.baseline_vehicles
    # the baseline's vehicles, and the numpy core on them too for a like-for-like pair
    f_sub = fleet.take(np.flatnonzero(fleet.vehicle <= sub))
    l_sub = legacy.take(np.flatnonzero(legacy.vehicle <= sub))
    cpu: dict[str, float] = {}

    def on_cpu(name: str, fn):
        """fn, its least CPU time kept in cpu[name]: on a loaded machine the wall clock says
        more about the neighbours than about the code."""

        def run():
            c0 = cpu_seconds()
            out = fn()
            cpu[name] = min(cpu.get(name, math.inf), cpu_seconds() - c0)
            return out

        return run

    (t_np, t_np_sub, t_base), (report, report_sub, base) = best_in_turn(
        [
            on_cpu("numpy", lambda: with_numpy(fleet, legacy, ids)),
            on_cpu("numpy_sub", lambda: with_numpy(f_sub, l_sub, ids[:sub])),
            on_cpu("python", lambda: baseline(f_sub, l_sub, sub)),
        ],
        args.repeat,
    )
    samples = len(fleet) + len(legacy)
    samples_sub = len(f_sub) + len(l_sub)
    m = report.metrics
    return {
        "benchmark": "parity",
        "machine": machine(numpy=np.__version__),
        "loadavg": loadavg(),
        "vehicles": args.vehicles,
        "days": args.days,
        "interval_s": args.interval,
        "samples_both_sides": samples,
        "numpy": {
            "seconds": round(t_np, 3),
            "cpu_seconds": round(cpu["numpy"], 3),
            "samples_per_s": round(samples / t_np),
            "colours": report.colours(),
            "coverage": round(m["coverage"].value, 5),
            "position_p95_m": m["position"].detail["p95_m"],
            "rides_legacy": m["usage"].detail["rides_legacy"],
        },
        "baseline_vehicles": sub,
        "numpy_on_baseline_vehicles": {
            "seconds": round(t_np_sub, 4),
            "cpu_seconds": round(cpu["numpy_sub"], 4),
            "samples_per_s": round(samples_sub / t_np_sub),
            "coverage": round(report_sub.metrics["coverage"].detail["legacy_covered"], 5),
        },
        "plain_python": {
            "seconds": round(t_base, 3),
            "cpu_seconds": round(cpu["python"], 3),
            "samples_per_s": round(samples_sub / t_base),
            "whole_batch_seconds_scaled": round(t_base * samples / samples_sub, 1),
            "coverage": round(base["coverage"], 5),
            "position_p95_m": round(base["p95"], 2),
            "rides_legacy": base["rides"],
        },
        # the same vehicles, the same samples: numpy core beside the baseline
        "speedup_like_for_like": round(t_base / t_np_sub, 1),
        "speedup_like_for_like_cpu": round(cpu["python"] / cpu["numpy_sub"], 1),
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
