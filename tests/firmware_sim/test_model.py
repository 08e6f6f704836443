"""The fleet model: determinism, plausible movement, traction and 12 V batteries against their
ground truth, commands. No services; simulated days run in seconds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from firmware_sim.model import (
    CAR,
    CHARGING,
    DAY_MS,
    EBIKE,
    EBIKE_SPEC,
    PARKED,
    TRIP,
    AuxSpec,
    CommandRefused,
    FleetModel,
    aux_rest_voltage,
)
from firmware_sim.payloads import JSON, encode_samples
from telemetry.batch import UNKNOWN
from telemetry.plausibility import PlausibilityFilter, haversine_m
from tests.sim_samples import as_batch

START = 1_764_547_200_000


def fleet(n_ebikes: int = 4, n_cars: int = 4, seed: int = 7, **kw) -> FleetModel:
    return FleetModel([EBIKE] * n_ebikes + [CAR] * n_cars, seed=seed, start_ms=START, **kw)


def start_trips(m: FleetModel, idx=None) -> None:
    """End the parking of vehicles idx now, so the next step starts their trips."""
    idx = np.arange(m.n) if idx is None else np.asarray(idx)
    m.soc[idx] = np.maximum(m.soc[idx], 60.0)
    m.phase_end_ms[idx] = m.t_ms


def keep_parked(m: FleetModel, idx) -> None:
    m.phase_end_ms[np.asarray(idx)] = np.iinfo(np.int64).max


def bearing_deg(lat1, lon1, lat2, lon2):
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    x = np.sin(dl) * np.cos(p2)
    y = np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl)
    return np.degrees(np.arctan2(x, y)) % 360.0


def test_the_same_seed_gives_the_same_samples_and_another_seed_does_not():
    a, b, c = fleet(seed=1), fleet(seed=1), fleet(seed=2)
    enc = np.full(a.n, JSON)
    for _ in range(300):
        pa, pb, pc = (encode_samples(m.step(1.0), enc) for m in (a, b, c))
        assert pa == pb
    assert pa != pc


def test_speeds_stay_in_each_kinds_range_and_no_fix_is_an_implausible_jump():
    m = fleet(6, 6, seed=3)
    start_trips(m)
    pf = PlausibilityFilter()
    pf.set_limits(np.arange(m.n), np.where(m.kind == CAR, 300.0, 80.0))
    top = np.zeros(m.n)
    flagged = 0
    for _ in range(2400):
        s = m.step(1.0)
        top = np.maximum(top, s.speed_kmh)
        flagged += pf.apply(as_batch(s))
    assert flagged == 0
    ebike, car = m.kind == EBIKE, m.kind == CAR
    assert (top[ebike] > 10).all() and (top[ebike] <= 25.0 * 1.05).all()
    assert (top[car] > 20).all() and (top[car] <= 50.0 * 1.05).all()


def test_odometer_grows_by_the_distance_travelled_and_heading_follows_motion():
    m = fleet(5, 5, seed=4)
    start_trips(m)
    odo0 = m.odometer.copy()
    lat0, lon0 = m.latlon()
    travelled = np.zeros(m.n)
    heading_errors = []
    for _ in range(1800):
        leg_before = m.motion.wp_next.copy()
        m.step(1.0)
        lat, lon = m.latlon()
        d = haversine_m(lat0, lon0, lat, lon)
        travelled += d
        # Along one leg the bearing of the displacement is the reported heading.
        same_leg = (leg_before == m.motion.wp_next) & (m.phase == TRIP) & (d > 2.0)
        err = (bearing_deg(lat0, lon0, lat, lon) - m.heading + 180.0) % 360.0 - 180.0
        heading_errors.extend(np.abs(err[same_leg]).tolist())
        lat0, lon0 = lat, lon
    grown = m.odometer - odo0
    assert (grown > 500).all()
    np.testing.assert_allclose(grown, travelled, rtol=0.01)
    assert len(heading_errors) > 1000 and max(heading_errors) < 1.0


def test_the_paths_keep_to_the_area():
    m = fleet(10, 10, seed=5)
    for _ in range(400):
        start_trips(m, np.flatnonzero(m.phase == PARKED))
        s = m.step(30.0)
        fix = s.has_fix()
        a = m.area
        margin = 0.001  # GPS noise around a vehicle at the edge
        assert ((s.lat[fix] > a.south - margin) & (s.lat[fix] < a.north + margin)).all()
        assert ((s.lon[fix] > a.west - margin) & (s.lon[fix] < a.east + margin)).all()


def _ride(m: FleetModel, seconds: int):
    """Step 1 s at a time; returns reported samples' columns stacked per step, and trip time."""
    cols = {k: [] for k in ("soc_pct", "pack_v", "pack_a", "odometer_m", "charging")}
    on_trip_s = np.zeros(m.n)
    for _ in range(seconds):
        s = m.step(1.0)
        on_trip_s += m.phase == TRIP
        for k in cols:
            cols[k].append(getattr(s, k))
    return {k: np.array(v) for k, v in cols.items()}, on_trip_s


def test_coulomb_counting_of_the_samples_recovers_the_true_capacity():
    m = fleet(6, 6, seed=8)
    m.soc[:] = 90.0
    start_trips(m)
    truth_cap = m.capacity_ah()
    cols, _ = _ride(m, 3600)
    assert not cols["charging"].any() and not m.swaps
    # Einhorn: C = ∫I dt / ΔSoC, from the reported (noisy, rounded) current and SoC.
    ah = cols["pack_a"][1:].sum(axis=0) / 3600.0
    d_soc = (cols["soc_pct"][0] - cols["soc_pct"][-1]) / 100.0
    assert (d_soc > 0.01).all()  # cars: ~1.5 % a trip; rounding to 0.01 % stays below 1 %
    np.testing.assert_allclose(ah / d_soc, truth_cap, rtol=0.01)
    # ... and that differs from nominal: the pack has aged.
    assert (np.abs(truth_cap / m.nominal_ah - 1.0) > 0.005).any()


def test_energy_per_km_at_the_terminals_is_the_vehicles_own():
    m = fleet(6, 6, seed=9)
    m.soc[:] = 95.0
    start_trips(m)
    odo0 = m.odometer.copy()
    cols, on_trip_s = _ride(m, 3600)
    wh = (cols["pack_v"] * cols["pack_a"]).sum(axis=0) / 3600.0
    km = (m.odometer - odo0) / 1000.0
    idle_w = np.where(m.kind == CAR, 0.0, 0.7)
    aux_w = np.where(m.kind == CAR, 400.0, 2.0)
    expected = m.wh_per_km * km + idle_w * 1.0 + aux_w * on_trip_s / 3600.0
    np.testing.assert_allclose(wh, expected, rtol=0.03)
    per_km = m.wh_per_km
    assert ((per_km[m.kind == EBIKE] >= 8) & (per_km[m.kind == EBIKE] <= 12)).all()
    assert ((per_km[m.kind == CAR] >= 150) & (per_km[m.kind == CAR] <= 200)).all()


def test_terminal_voltage_sags_by_current_times_the_true_resistance():
    m = fleet(4, 4, seed=10)
    start_trips(m)
    s_all = []
    for _ in range(900):
        s = m.step(1.0)
        s_all.append((s.soc_pct.copy(), s.pack_v.copy(), s.pack_a.copy()))
    soc, v, a = (np.array(x) for x in zip(*s_all))
    ocv = m.cells * np.interp(
        soc,
        [0, 5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90, 100],
        [3.00, 3.30, 3.45, 3.52, 3.57, 3.63, 3.68, 3.73, 3.79, 3.86, 3.94, 4.04, 4.18],
    )
    r = m.resistance_ohm()
    np.testing.assert_allclose(v, ocv - a * r, atol=1.2)  # cars: 0.2 V noise on ~400 V
    # The sag regressed on the current gives the true resistance.
    for i in range(m.n):
        slope = np.polyfit(a[:, i], ocv[:, i] - v[:, i], 1)[0]
        assert slope == pytest.approx(r[i], rel=0.1)


def test_charging_raises_soc_with_a_negative_current_and_stops_at_its_target():
    m = fleet(0, 3, seed=11)
    m.soc[:] = 12.0
    m.phase_end_ms[:] = m.t_ms  # parking over with a low pack: plugged in
    s = m.step(1.0)
    assert (m.phase == CHARGING).all() and s.charging.all()
    assert (s.pack_a < 0).all() and (s.pack_v > m.ocv()).all()
    soc0 = s.soc_pct.copy()
    s = m.step(600.0)
    assert (s.soc_pct > soc0 + 3).all()
    # 27.5 A for 600 s into the true capacity.
    charged_pct = 27.5 * 600 / 3600 / m.capacity_ah() * 100
    np.testing.assert_allclose(s.soc_pct - soc0, charged_pct, rtol=0.02)
    for _ in range(200):
        s = m.step(300.0)
    assert not s.charging.any() and (m.phase != CHARGING).all()
    assert (m.soc >= 80.0).all()


def test_an_ebike_pack_swap_jumps_soc_and_brings_a_pack_of_another_capacity():
    m = fleet(3, 0, seed=12)
    m.soc[:] = 15.0
    before = m.truth()
    swap = m.swap_pack(1)
    after = m.truth()
    assert swap.vehicle == 1 and swap.old_pack == before["pack_id"][1] != after["pack_id"][1]
    assert after["soc_pct"][1] >= 95.0
    assert after["capacity_ah"][1] != pytest.approx(before["capacity_ah"][1], rel=1e-4)
    assert swap.new_capacity_ah == pytest.approx(after["capacity_ah"][1])
    # A low e-bike at the end of its parking is serviced: swapped (70 %) or charged.
    m.phase_end_ms[:] = m.t_ms
    m.step(1.0)
    serviced = (m.phase == CHARGING) | (m.soc > 90.0)
    assert serviced.all()


def test_capacity_fades_and_resistance_grows_over_simulated_weeks():
    # E-bikes charged in place keep their pack, so each pack's fade can be followed.
    in_place = replace(EBIKE_SPEC, swap_share=0.0)
    m = fleet(5, 5, seed=13, ebike=in_place)
    cap0, r0, efc0, pack0 = m.capacity_ah(), m.resistance_ohm(), m.efc(), m.pack_id.copy()
    m.advance_to(m.t_ms + 21 * DAY_MS, max_step_s=300.0)
    cap, r, efc = m.capacity_ah(), m.resistance_ohm(), m.efc()
    assert (m.pack_id == pack0).all() and not m.swaps
    assert (cap < cap0).all() and (r > r0).all() and (efc > efc0 + 1.0).all()
    assert ((cap0 - cap) / cap0 < 0.05).all()
    # Sped-up ageing for estimator tests: the same three weeks age the packs far more.
    fast = fleet(5, 5, seed=13, ebike=in_place, ageing_speedup=50.0)
    fast.advance_to(fast.t_ms + 21 * DAY_MS, max_step_s=300.0)
    assert ((cap0 - fast.capacity_ah()) > 3 * (cap0 - cap)).all()


def test_a_swap_fleet_logs_every_swap_as_ground_truth():
    m = fleet(5, 0, seed=13)
    m.advance_to(m.t_ms + 7 * DAY_MS, max_step_s=300.0)
    assert len(m.swaps) >= 5
    for sw in m.swaps:
        assert sw.soc_after >= 95.0 and sw.soc_before < 20.0 and sw.new_pack != sw.old_pack


def test_12v_rests_and_drains_at_the_true_rate_while_parked():
    m = fleet(0, 8, seed=14, aux=AuxSpec(fault_share=0.5))
    keep_parked(m, np.arange(m.n))
    soc0, ttt0 = m.aux_soc.copy(), m.aux_time_to_threshold_s()
    faulty = m.aux_faulty
    assert faulty.any() and (~faulty).any()
    assert ((m.aux_drain_a[faulty] >= 0.25) & (m.aux_drain_a[faulty] <= 0.35)).all()
    assert ((m.aux_drain_a[~faulty] >= 0.005) & (m.aux_drain_a[~faulty] <= 0.012)).all()
    hours = 36
    s = m.advance_to(m.t_ms + hours * 3_600_000, max_step_s=600.0)
    expected_soc = np.maximum(soc0 - m.aux_drain_a * hours / m.aux_capacity_ah, 0.0)
    np.testing.assert_allclose(m.aux_soc, expected_soc, atol=1e-9)
    np.testing.assert_allclose(s.aux_v, aux_rest_voltage(expected_soc), atol=0.05)
    left = ttt0 > hours * 3600
    np.testing.assert_allclose(
        m.aux_time_to_threshold_s()[left], ttt0[left] - hours * 3600, rtol=1e-6
    )
    # A faulty car past its time to threshold no longer starts.
    dead = np.flatnonzero(faulty & (m.aux_time_to_threshold_s() == 0))
    if len(dead) == 0:
        m.advance_to(m.t_ms + int(ttt0[faulty].max() * 1000) + 1, max_step_s=3600.0)
        dead = np.flatnonzero(faulty)
    assert (m.aux_rest_v()[dead] < m.aux.crank_threshold_v + 1e-9).all()
    start_trips(m, dead)
    m.step(1.0)
    assert (m.phase[dead] == PARKED).all()


def test_12v_charges_with_the_ignition_on_and_shows_surface_charge_after():
    m = fleet(0, 4, seed=15)
    m.aux_soc[:] = 0.6
    start_trips(m)
    s = m.step(1.0)
    assert s.ignition.all()
    np.testing.assert_allclose(s.aux_v, 14.1, atol=0.05)
    for _ in range(120):
        m.step(1.0)
    assert (m.aux_soc > 0.6 + 10.0 * 100 / 3600 / 70).all()
    # Right after the trip the voltage sits above rest, and settles within hours.
    while (m.phase == TRIP).any():
        m.step(5.0)
    just_off = m.aux_voltage() - m.aux_rest_v()
    keep_parked(m, np.arange(m.n))
    m.advance_to(m.t_ms + 6 * 3_600_000)
    settled = m.aux_voltage() - m.aux_rest_v()
    assert (just_off > 0.05).all() and (settled < 0.01).all()


def test_immobilised_cars_do_not_move_and_a_moving_car_refuses():
    m = fleet(2, 6, seed=16)
    cars = np.flatnonzero(m.kind == CAR)
    for i in cars[:3]:
        m.immobilise(int(i))
    with pytest.raises(CommandRefused) as exc:
        m.immobilise(0)
    assert exc.value.reason == "not_supported"
    odo = m.odometer.copy()
    start_trips(m)
    m.advance_to(m.t_ms + DAY_MS, max_step_s=60.0)
    assert (m.odometer[cars[:3]] == odo[cars[:3]]).all()
    assert (m.odometer[cars[3:]] > odo[cars[3:]]).all()
    # A car caught moving refuses; once it stands, it complies and its trip ends there.
    start_trips(m, cars[3:])
    m.step(1.0)
    while not (m.speed[cars[3:]] > 1.0).any():
        m.step(1.0)
    moving = int(cars[3:][np.argmax(m.speed[cars[3:]])])
    with pytest.raises(CommandRefused) as exc:
        m.immobilise(moving)
    assert exc.value.reason == "vehicle_moving"
    m.mobilise(int(cars[0]))
    start_trips(m, [cars[0]])
    m.step(1.0)
    assert m.phase[cars[0]] == TRIP


def test_a_speed_limit_caps_riding():
    m = fleet(6, 0, seed=17)
    for i in range(m.n):
        m.set_speed_limit(i, 15)
    with pytest.raises(CommandRefused):
        m.set_speed_limit(0, 1000)
    start_trips(m)
    top = max(m.step(1.0).speed_kmh.max() for _ in range(900))
    assert 12.0 < top <= 15.0 * 1.05


def test_locks_follow_trips_and_commands():
    m = fleet(3, 3, seed=18)
    assert m.locked.all() and not m.ignition.any()
    start_trips(m)
    m.step(1.0)
    assert not m.locked.any()
    assert (m.ignition == (m.kind == CAR)).all()
    while not ((m.kind == EBIKE) & (m.speed > 0)).any():
        m.step(1.0)
    riding = int(np.flatnonzero((m.kind == EBIKE) & (m.speed > 0))[0])
    with pytest.raises(CommandRefused) as exc:
        m.lock(riding)  # the bolt cannot go into turning spokes
    assert exc.value.reason == "vehicle_moving"
    m.unlock(3)
    m.lock(3)  # a car's central locking locks while driving
    assert m.locked[3]


def test_samples_become_a_pipeline_batch_with_fields_by_kind():
    m = fleet(2, 2, seed=19, garage_share=1.0)
    s = m.step(1.0)
    b = as_batch(s, np.array([10, 11, 12, 13]))
    assert list(b.vehicle) == [10, 11, 12, 13] and (b.time_ms == m.t_ms).all()
    assert np.isnan(b.aux_v[:2]).all() and (b.ignition[:2] == UNKNOWN).all()
    assert np.isnan(b.lat[2:]).all()  # parked in a garage: no fix
    assert not np.isnan(b.aux_v[2:]).any() and (b.ignition[2:] == 0).all()
