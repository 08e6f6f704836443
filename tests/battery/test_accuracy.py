"""The battery core against the simulator's ground truth: a mixed fleet (e-bikes swapping packs,
cars charging in place, some cars with a 12 V drain fault) over three simulated weeks of sped-up
ageing, then the cars parked for four days. No services; one simulation feeds every check."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from battery import (
    ABNORMAL_PARKED_DRAIN,
    AUX_BATTERY_AT_RISK,
    BATTERY_HEALTH_LOW,
    PACK_SWAPPED,
    BatteryCore,
    BatteryPolicy,
)
from firmware_sim.model import (
    CAR,
    DAY_MS,
    EBIKE,
    EBIKE_SPEC,
    PARKED,
    VEHICLE_TYPES,
    AuxSpec,
    FleetModel,
)
from telemetry.batch import TelemetryBatch
from tests.sim_samples import as_batch

START = 1_764_547_200_000
SPEEDUP = 50.0  # three weeks age the packs like three years
HOUR_STEPS = 60  # one sample a minute, one batch an hour


class Run:
    """The simulation and the core fed with it, with truth snapshots at the check points."""

    def __init__(self, seed: int = 21, n_ebikes: int = 25, n_cars: int = 25) -> None:
        kinds = [EBIKE] * n_ebikes + [CAR] * n_cars
        self.model = FleetModel(
            kinds, seed=seed, start_ms=START, ageing_speedup=SPEEDUP, aux=AuxSpec(fault_share=0.3)
        )
        self.core = BatteryCore()
        self.core.set_vehicle_types(np.arange(len(kinds)), [VEHICLE_TYPES[k] for k in kinds])
        self.events = []
        self.efc0 = self.model.efc().copy()
        # Truth of the 12 V time to threshold at the end of every hour (for the alerts).
        self.aux_ttt_h: list[np.ndarray] = []

    def hours(self, n: int, keep_cars_parked: bool = False) -> None:
        m = self.model
        cars = m.kind == CAR
        for _ in range(n):
            if keep_cars_parked:
                m.phase_end_ms[cars & (m.phase == PARKED)] = np.iinfo(np.int64).max
            batch = TelemetryBatch.concat([as_batch(m.step(60.0)) for _ in range(HOUR_STEPS)])
            self.events.extend(self.core.update(batch).events)
            self.aux_ttt_h.append(m.aux_time_to_threshold_s() / 3600.0)


@pytest.fixture(scope="module")
def run() -> dict:
    r = Run()
    r.hours(21 * 24)
    weeks = {
        "truth": r.model.truth(),
        "est": r.core.estimates(np.arange(r.model.n)),
        "swaps": list(r.model.swaps),
        "t_ms": r.model.t_ms,
    }
    r.hours(4 * 24, keep_cars_parked=True)
    parked = {"truth": r.model.truth(), "est": r.core.estimates(np.arange(r.model.n))}
    return {"run": r, "weeks": weeks, "parked": parked}


def _recently_swapped(swaps, vehicle: int, t_ms: int, hours: float) -> bool:
    return any(s.vehicle == vehicle and t_ms - s.t_ms <= hours * 3_600_000 for s in swaps)


def test_soh_is_within_3_points_of_the_true_capacity_fade(run):
    truth, est = run["weeks"]["truth"], run["weeks"]["est"]
    true_soh = truth["soh"] * 100.0
    assert (true_soh.max() - true_soh.min()) > 10, "the fleet's packs differ in health"
    known = np.isfinite(est.soh_pct)
    err = est.soh_pct[known] - true_soh[known]
    assert np.abs(err).max() <= 3.0, err
    # Unknown only for an e-bike whose new pack has not yet moved one window of SoC.
    unknown = np.flatnonzero(~known)
    assert len(unknown) <= 0.2 * len(est)
    for v in unknown.tolist():
        assert truth["kind"][v] == EBIKE
        assert _recently_swapped(run["weeks"]["swaps"], v, run["weeks"]["t_ms"], 12.0)
        assert np.isnan(est.capacity_ah[v]) and np.isnan(est.range_m[v])


def test_range_is_within_10_percent_of_the_energy_left_at_the_true_consumption(run):
    truth, est = run["weeks"]["truth"], run["weeks"]["est"]
    known = np.isfinite(est.range_m)
    assert known.sum() >= 0.8 * len(est)
    rel = est.range_m[known] / truth["range_m"][known] - 1.0
    assert np.abs(rel).max() <= 0.10, rel
    # Range is unknown exactly where capacity is (every vehicle has driven enough).
    assert (known == np.isfinite(est.soh_pct)).all()
    per_km = est.energy_wh_per_km / truth["wh_per_km"] - 1.0
    assert np.abs(per_km).max() <= 0.05


def test_every_pack_swap_is_detected_at_its_time_and_nothing_else_is_one(run):
    r = run["run"]
    swaps = run["weeks"]["swaps"]
    assert len(swaps) > 100
    detected = sorted((e.vehicle, e.time_ms) for e in r.events if e.type == PACK_SWAPPED)
    truth = sorted((s.vehicle, s.t_ms) for s in r.model.swaps)
    assert detected == truth
    assert (
        run["parked"]["est"].pack_seq
        == np.bincount([s.vehicle for s in r.model.swaps], minlength=r.model.n)
    ).all()


def test_resistance_and_cycles_follow_the_truth(run):
    truth, est = run["weeks"]["truth"], run["weeks"]["est"]
    known = np.isfinite(est.resistance_ohm)
    assert known.sum() >= 0.8 * len(est)
    rel = est.resistance_ohm[known] / truth["resistance_ohm"][known] - 1.0
    assert np.abs(rel).max() <= 0.10, rel
    # EFC counts the throughput seen since the history began; the simulator ages packs faster.
    r = run["run"]
    kept = np.array([not any(s.vehicle == v for s in r.model.swaps) for v in range(r.model.n)])
    assert kept.sum() >= 20
    seen = (truth["efc"] - r.efc0) / SPEEDUP
    np.testing.assert_allclose(est.efc[kept], seen[kept], rtol=0.01)


def test_12v_time_to_threshold_is_within_20_percent_or_honestly_unknown(run):
    truth, est = run["parked"]["truth"], run["parked"]["est"]
    cars = np.flatnonzero(truth["kind"] == CAR)
    assert (truth["phase"][cars] == PARKED).all()
    faulty = truth["aux_faulty"][cars]
    assert 3 <= faulty.sum() < len(cars)
    ttt_true = truth["aux_time_to_threshold_s"][cars] / 3600.0
    ttt = est.aux_hours_to_threshold[cars]
    known = np.isfinite(ttt)
    assert known[faulty].all(), "a drain fault is measured within the parking"
    assert known.sum() >= len(cars) // 2
    both_zero = (ttt == 0) & (ttt_true == 0)
    rel = np.where(both_zero, 0.0, ttt / ttt_true - 1.0)
    assert np.abs(rel[known]).max() <= 0.20, rel
    # A healthy car's sleep draw is too small to measure in days: unknown, and far from risk.
    policy = BatteryPolicy()
    assert (ttt_true[~known] > 20 * policy.aux_risk_hours).all()
    np.testing.assert_allclose(est.aux_rest_v[cars], truth["aux_rest_v"][cars], atol=0.02)
    ebikes = truth["kind"] == EBIKE
    assert np.isnan(est.aux_hours_to_threshold[ebikes]).all()


def test_drain_faults_raise_one_alert_each_and_healthy_cars_none(run):
    r, truth = run["run"], run["parked"]["truth"]
    alerts = Counter(e.vehicle for e in r.events if e.type == ABNORMAL_PARKED_DRAIN)
    faulty = set(np.flatnonzero(truth["aux_faulty"]).tolist())
    assert set(alerts) == faulty and set(alerts.values()) == {1}


def test_health_alerts_come_at_most_once_per_pack_and_only_for_worn_packs(run):
    r = run["run"]
    swaps_of: dict[int, list[int]] = {}
    for sw in r.model.swaps:
        swaps_of.setdefault(sw.vehicle, []).append(sw.t_ms)
    alerts = [e for e in r.events if e.type == BATTERY_HEALTH_LOW]
    assert alerts, "sped-up ageing wears some packs below 80 %"
    per_pack = Counter(
        (e.vehicle, sum(t <= e.time_ms for t in swaps_of.get(e.vehicle, []))) for e in alerts
    )
    assert set(per_pack.values()) == {1}
    assert all(e.detail["soh_pct"] <= 80.0 for e in alerts)  # (rounded to 0.01)


def test_12v_at_risk_alerts_come_once_per_parking_when_the_car_is_close_to_the_threshold(run):
    r = run["run"]
    policy = BatteryPolicy()
    hour_of = {}
    alerts = [e for e in r.events if e.type == AUX_BATTERY_AT_RISK]
    assert alerts, "faulty cars parked for days come close to the threshold"
    for e in alerts:
        h = -(-(e.time_ms - START) // 3_600_000) - 1  # the batch (hour) that raised it
        true_h = r.aux_ttt_h[h][e.vehicle]
        assert true_h <= 1.2 * policy.aux_risk_hours, (e, true_h)
        hour_of.setdefault(e.vehicle, []).append(h)
    # The final parking: at most one alert per car, and every car that came within the risk
    # window (by the truth, with a margin for the estimate) got one.
    park_start = 21 * 24
    final = Counter(v for v, hs in hour_of.items() for h in hs if h >= park_start)
    assert set(final.values()) <= {1}
    ttt_end = r.aux_ttt_h[-1]
    at_risk = {int(v) for v in np.flatnonzero(ttt_end < 0.8 * policy.aux_risk_hours)}
    assert at_risk <= set(final)


def test_the_run_covers_weeks(run):
    assert run["run"].model.t_ms - START == 25 * DAY_MS


def test_soc_only_vehicles_get_soh_and_range_from_distance_per_energy():
    """E-bike locks that report only SoC and odometer: SoH is the trend of distance per unit of
    pack energy against the vehicle's early-life baseline (new packs here, so the baseline's
    assumed nominal capacity holds). Per-step consumption noise (wind, riders) and 50x fade make
    this path looser than Coulomb counting."""
    spec = replace(
        EBIKE_SPEC,
        swap_share=0.0,
        initial_efc=(0.0, 0.0),
        initial_age_days=(0.0, 0.0),
        capacity_spread=(1.0, 1.0),
    )
    m = FleetModel([EBIKE] * 12, seed=2, start_ms=START, ageing_speedup=SPEEDUP, ebike=spec)
    core = BatteryCore()
    core.set_vehicle_types(np.arange(m.n), ["ebike"] * m.n)
    for _ in range(14 * 24):
        batch = TelemetryBatch.concat([as_batch(m.step(60.0)) for _ in range(HOUR_STEPS)])
        batch.pack_a[:] = np.nan
        batch.pack_v[:] = np.nan
        core.update(batch)
    est = core.estimates(np.arange(m.n))
    true_soh = m.soh() * 100.0
    assert (true_soh < 90).all(), "two sped-up weeks fade every pack by more than 10 points"
    assert np.abs(est.soh_pct - true_soh).max() <= 8.0
    assert np.abs(est.range_m / m.range_m() - 1.0).max() <= 0.10
    assert np.isnan(est.resistance_ohm).all() and np.isnan(est.energy_wh_per_km).all()
