"""The parity core on hand-made sides: identical observations are green throughout, and each
kind of disagreement turns its own metric, and only it, yellow or red."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity import DEFAULT_THRESHOLDS, Observations, compare, rides_from_observations
from telemetry.earth import M_PER_DEG

T0 = 1_780_000_000_000
STEP_MS = 45_000  # further apart than the ±30 s coverage window: every sample counts


def fleet(vehicles=20, samples=100, ride_every=10):
    """Every vehicle: a sample every 45 s, unlocked for rides of 5 samples every ride_every."""
    v = np.repeat(np.arange(1, vehicles + 1), samples)
    k = np.tile(np.arange(samples), vehicles)
    t = T0 + k * STEP_MS
    riding = (k % ride_every >= 2) & (k % ride_every < 7)
    lat = 52.5 + v * 1e-3 + np.where(riding, k * 1e-4, 0) + np.cumsum(riding) * 0
    lon = 13.4 + k * 1e-5
    return dict(
        vehicle=v,
        time_ms=t,
        received_ms=t + 300,
        lat=lat,
        lon=lon,
        soc_pct=80.0 - k * 0.1,
        odometer_m=None,
        locked=~riding,
        ignition=riding,
        immobilised=np.zeros(len(v), bool),
    )


def run(f: dict, lg: dict | None = None, percent=10.0, **kw):
    lg = dict(f) if lg is None else lg
    fo, lo = Observations.of(**f), Observations.of(**lg)
    rides = rides_from_observations(fo)
    return compare(np.unique(f["vehicle"]), fo, lo, rides, percent=percent, started_ms=T0, **kw)


def drop(cols: dict, rows) -> dict:
    keep = np.ones(len(cols["vehicle"]), bool)
    keep[rows] = False
    return {k: (None if v is None else np.asarray(v)[keep]) for k, v in cols.items()}


def test_the_same_observations_on_both_sides_are_green_throughout():
    report = run(fleet())
    assert report.colours() == dict.fromkeys(report.colours(), "green")
    assert report.passed and report.overall == "green" and not report.below_minimum
    usage = report.metrics["usage"].detail
    assert usage["rides_fleetgate"] == usage["rides_legacy"] == usage["matched"] == 20 * 10
    assert report.metrics["position"].detail["p95_m"] == 0.0
    assert {v.colour for v in report.vehicles} == {"green"}
    assert report.days == pytest.approx(99 * STEP_MS / 86_400_000)


def test_one_percent_fewer_samples_on_one_side_turns_coverage_yellow():
    f = fleet()
    k = np.arange(len(f["vehicle"]))
    # 1 % of the samples, none at a ride's start or end
    not_edge = np.flatnonzero(np.tile(np.arange(100) % 10, 20) == 9)
    lg = drop(f, np.random.default_rng(1).choice(not_edge, len(k) // 100, replace=False))
    report = run(f, lg)
    assert report.metrics["coverage"].colour == "yellow"
    assert report.metrics["coverage"].value == pytest.approx(0.99)
    assert report.metrics["coverage"].detail["legacy_covered"] == 1.0
    assert report.metrics["position"].colour == "green"
    assert report.metrics["usage"].colour == "green"
    assert report.overall == "yellow" and not report.passed


def test_positions_shifted_by_50_m_turn_position_agreement_red_and_nothing_else():
    f = fleet()
    lg = dict(f, lat=np.asarray(f["lat"]) + 50.0 / M_PER_DEG)
    report = run(f, lg)
    assert report.metrics["position"].colour == "red"
    assert report.metrics["position"].detail["p50_m"] == pytest.approx(50.0, abs=0.1)
    assert report.metrics["coverage"].colour == "green"
    assert report.metrics["state"].colour == "green"
    assert report.overall == "red"


def test_a_ride_billed_a_minute_longer_turns_usage_parity_red():
    f = fleet(vehicles=2, samples=100)
    lg = dict(f)
    # the legacy platform saw vehicle 1's first ride end one sample (45 s) later
    locked = np.asarray(f["locked"]).copy()
    locked[7] = False
    lg["locked"] = locked
    report = run(f, lg)
    usage = report.metrics["usage"]
    assert usage.detail["billed_minutes_changed"] == 1
    assert usage.value == pytest.approx(19 / 20) and usage.colour == "red"
    assert report.vehicles[0].colour == "red" and report.vehicles[1].colour == "green"


def test_state_disagreement_and_soc_beyond_two_points_count():
    f = fleet(vehicles=10)
    lg = dict(f, soc_pct=np.asarray(f["soc_pct"]) + 1.9)
    assert run(f, lg).metrics["state"].colour == "green"
    lg = dict(f, soc_pct=np.asarray(f["soc_pct"]) + 2.5)
    state = run(f, lg).metrics["state"]
    assert state.colour == "red" and state.detail["fields"]["soc_pct"]["agreement"] == 0.0
    imm = np.zeros(len(f["vehicle"]), bool)
    imm[:15] = True  # 1.5 %
    state = run(f, dict(f, immobilised=imm)).metrics["state"]
    assert state.colour == "yellow" and state.detail["fields"]["immobilised"]["agreement"] == 0.985


def test_a_gap_on_one_side_only_and_presence_are_seen():
    f = fleet(vehicles=10, samples=100)
    # vehicle 3 missing for 10 samples (7.5 min) on fleetgate's side only; vehicle 5's last 20
    # samples (15 min) missing on the legacy side
    v, k = np.asarray(f["vehicle"]), np.tile(np.arange(100), 10)
    fg = drop(f, np.flatnonzero((v == 3) & (k >= 40) & (k < 50)))
    lg = drop(f, np.flatnonzero((v == 5) & (k >= 80)))
    report = compare(
        np.arange(1, 11),
        Observations.of(**fg),
        Observations.of(**lg),
        rides_from_observations(Observations.of(**fg)),
        percent=12,
        started_ms=T0,
    )
    gaps = report.metrics["gaps"]
    assert gaps.detail["legacy_only"] == 0 and gaps.detail["fleetgate_only"] == 1
    assert gaps.value == pytest.approx(0.1) and gaps.colour == "red"
    presence = report.metrics["presence"]
    assert presence.detail["fleetgate_only"] == [5] and presence.colour == "red"


def test_latency_is_how_much_later_fleetgate_received_a_sample():
    f = fleet(vehicles=5)
    lg = dict(f, received_ms=np.asarray(f["time_ms"]) + 100)
    slow = dict(f, received_ms=np.asarray(f["time_ms"]) + 10_100)
    assert run(f, lg).metrics["latency"].colour == "green"
    latency = run(slow, lg).metrics["latency"]
    assert latency.colour == "yellow" and latency.detail["behind_legacy_p95_s"] == 10.0


def test_below_ten_percent_is_accepted_and_said():
    report = run(fleet(vehicles=3), percent=5)
    assert report.below_minimum
    assert any("below the go-live minimum" in n for n in report.notes())
    assert report.to_json()["below_minimum"] is True


def test_nothing_to_compare_is_yellow_not_green():
    f = fleet(vehicles=3)
    lg = {k: (None if k not in ("vehicle", "time_ms") else v) for k, v in f.items()}
    report = run(f, lg)
    assert math.isnan(report.metrics["state"].value)
    assert report.metrics["state"].colour == "yellow"
    assert "state: nothing to compare" in report.notes()


def test_vehicles_outside_the_batch_are_left_out():
    f = fleet(vehicles=4)
    fo = Observations.of(**f)
    lo = Observations.of(**drop(f, np.flatnonzero(np.asarray(f["vehicle"]) == 4)))
    report = compare(
        np.array([1, 2, 3]), fo, lo, rides_from_observations(fo), percent=10, started_ms=T0
    )
    assert report.overall == "green" and len(report.vehicles) == 3


def test_ride_distance_uses_the_odometer_where_both_ends_have_it():
    t = T0 + np.arange(4) * 10_000
    obs = Observations.of(
        vehicle=[7] * 4,
        time_ms=t,
        lat=[52.5, 52.501, 52.502, 52.503],
        lon=[13.4] * 4,
        odometer_m=[1000, None, None, 1400],
        locked=[True, False, False, True],
    )
    r = rides_from_observations(obs)
    assert list(r.started_ms) == [t[1]] and list(r.ended_ms) == [t[3]]
    # within the ride (t1 .. t3) the odometer is read once: the fixes measure it
    assert r.distance_m[0] == pytest.approx(2 * 111.2, rel=0.01)
    obs = Observations.of(
        vehicle=[7] * 4, time_ms=t, lat=[52.5] * 4, lon=[13.4] * 4,
        odometer_m=[1000, 1100, None, 1400], locked=[True, False, False, True],
    )  # fmt: skip
    assert rides_from_observations(obs).distance_m[0] == 300.0


def test_thresholds_are_overridden_by_name_and_bad_names_refused():
    th = DEFAULT_THRESHOLDS.with_overrides(
        {"coverage.green": 0.9, "coverage.yellow": 0.8, "match_s": 10}
    )
    assert (th.coverage.green, th.coverage.yellow, th.match_s) == (0.9, 0.8, 10.0)
    for bad in (
        {"nope": 1},
        {"coverage": 1},
        {"match_s.green": 1},
        {"coverage.yellow": 0.999},
        {"match_s": 31 * 86400},
        {"soc_pp": float("inf")},
        {"gap_s": -1},
    ):
        with pytest.raises(ValueError):
            DEFAULT_THRESHOLDS.with_overrides(bad)


def test_a_window_longer_than_a_day_never_matches_another_vehicle():
    # vehicle 2's samples are a day and a half after vehicle 1's: with a two-day window each
    # side still covers only its own vehicle's samples
    a = fleet(vehicles=1, samples=10)
    b = dict(a, vehicle=np.full(10, 2), time_ms=np.asarray(a["time_ms"]) + 36 * 3600 * 1000)
    th = DEFAULT_THRESHOLDS.with_overrides({"match_s": 2 * 86400})
    fo = Observations.of(**a)
    lo = Observations.of(**b)
    report = compare(np.array([1, 2]), fo, lo, rides_from_observations(fo), percent=10,
                     started_ms=T0, thresholds=th)  # fmt: skip
    assert report.metrics["coverage"].value == 0.0


def test_a_run_reporting_until_its_end_covered_all_its_days():
    f = fleet(vehicles=2, samples=100)  # a sample every 45 s from T0
    newest = T0 + 99 * STEP_MS
    fo = Observations.of(**f)

    def days(until_ms):
        return compare(np.array([1, 2]), fo, fo, rides_from_observations(fo), percent=10,
                       started_ms=T0, until_ms=until_ms).days  # fmt: skip

    assert days(newest + 30_000) == pytest.approx((newest + 30_000 - T0) / 86_400_000)
    # an hour after the newest sample the run is not "still reporting": it covered what it saw
    assert days(newest + 3_600_000) == pytest.approx((newest - T0) / 86_400_000)
