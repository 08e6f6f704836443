"""A ride's figures: distance robust to GPS jumps and gaps, odometer first, energy, speed."""

from __future__ import annotations

import numpy as np
import pytest

from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP
from telemetry.earth import M_PER_DEG
from trips import RidePolicy, RideSamples, measure_ride

LAT0, LON0 = 52.52, 13.405


def ride(north_m, t_s=None, **columns) -> RideSamples:
    north = np.asarray(north_m, dtype=np.float64)
    n = len(north)
    t = np.arange(n) * 5 if t_s is None else np.asarray(t_s)
    nan = np.full(n, np.nan)
    return RideSamples(
        time_ms=(t * 1000).astype(np.int64),
        lat=LAT0 + north / M_PER_DEG,
        lon=np.full(n, LON0),
        speed_kmh=columns.get("speed_kmh", np.full(n, 15.0)),
        soc_pct=columns.get("soc_pct", nan),
        pack_v=columns.get("pack_v", nan),
        pack_a=columns.get("pack_a", nan),
        odometer_m=columns.get("odometer_m", nan),
        flags=columns.get("flags", np.zeros(n, dtype=np.int16)),
    )


POLICY = RidePolicy(max_speed_kmh=80.0, gap_s=60.0)


def test_a_straight_ride_measures_its_length_and_duration():
    s = ride(np.arange(61) * 20.0)  # 1,200 m in 300 s
    fig = measure_ride(s, 0, 300_000, POLICY)
    assert fig.distance_m == pytest.approx(1200, rel=1e-3)
    assert fig.distance_source == "fixes" and fig.duration_s == 300.0
    assert fig.fixes_used == 61 and fig.fixes_rejected == 0
    assert fig.start[0] == pytest.approx(LAT0) and fig.end[0] > fig.start[0]


def test_gps_jumps_flagged_or_not_add_no_distance():
    north = np.arange(61) * 20.0
    north[10] += 3000  # a lone spike the filter did not flag (e.g. uploaded late, out of order)
    north[30] += 5000
    north[31] += 5000  # two spiked fixes in a row
    flags = np.zeros(61, dtype=np.int16)
    north[45] -= 8000
    flags[45] = FLAG_IMPLAUSIBLE_JUMP
    fig = measure_ride(ride(north, flags=flags), 0, 300_000, POLICY)
    assert fig.distance_m == pytest.approx(1200, rel=0.01)
    assert fig.fixes_rejected == 4


def test_a_jump_at_the_very_start_is_left_out():
    north = np.arange(61) * 20.0
    north[0] = 9000.0
    fig = measure_ride(ride(north), 0, 300_000, POLICY)
    assert fig.distance_m == pytest.approx(1180, rel=0.01)
    assert fig.start[0] == pytest.approx(LAT0 + 20 / M_PER_DEG)


def test_a_gap_is_bridged_by_the_odometer_where_it_lies_inside_the_ride():
    # A tunnel: no fix for 200 s while the vehicle rode a curve of 1,500 m (straight: 1,000 m).
    t = np.concatenate([np.arange(0, 100, 5), np.arange(300, 400, 5)])
    north = np.concatenate([np.arange(20) * 20.0, 1380 + np.arange(20) * 20.0])
    odo = np.full(len(t), np.nan)
    odo[19], odo[20] = 10_000.0, 11_500.0  # read at the tunnel's two ends only
    fig = measure_ride(ride(north, t, odometer_m=odo), 0, 395_000, POLICY)
    assert fig.distance_source == "fixes+odometer"
    assert fig.distance_m == pytest.approx(380 + 1500 + 380, rel=0.01)
    plain = measure_ride(ride(north, t), 0, 395_000, POLICY)
    assert plain.distance_source == "fixes" and plain.distance_m == pytest.approx(1760, rel=0.01)


def test_the_odometer_over_the_whole_ride_wins_when_reported_at_both_ends():
    odo = 5_000.0 + np.arange(61) * 21.0  # the wheel's measure: a little more than the fixes
    fig = measure_ride(ride(np.arange(61) * 20.0, odometer_m=odo), 0, 300_000, POLICY)
    assert fig.distance_source == "odometer" and fig.distance_m == pytest.approx(1260)
    assert fig.gps_distance_m == pytest.approx(1200, rel=1e-3)
    backwards = measure_ride(ride(np.arange(61) * 20.0, odometer_m=odo[::-1]), 0, 300_000)
    assert backwards.distance_source == "fixes", "an odometer going backwards is not believed"


def test_energy_is_the_integral_of_pack_power_and_soc_is_read_at_both_ends():
    n = 61
    fig = measure_ride(
        ride(
            np.arange(n) * 20.0,
            pack_v=np.full(n, 36.0),
            pack_a=np.full(n, 10.0),
            soc_pct=np.linspace(80, 78, n),
        ),
        0,
        300_000,
        POLICY,
    )
    assert (
        fig.energy_wh == pytest.approx(36 * 10 * 300 / 3600) and fig.energy_source == "pack_power"
    )
    assert (fig.soc_start_pct, fig.soc_end_pct) == (80.0, 78.0)
    assert fig.max_speed_kmh == 15.0


def test_a_ride_without_samples_has_a_duration_and_nothing_else():
    empty = ride(np.empty(0))
    fig = measure_ride(empty, 0, 60_000, POLICY)
    assert fig.duration_s == 60.0 and fig.distance_m == 0 and fig.distance_source is None
    assert fig.start is None and fig.energy_wh is None and fig.max_speed_kmh is None


def test_without_current_energy_is_the_soc_used_times_the_nominal_pack():
    n = 61
    s = ride(np.arange(n) * 20.0, soc_pct=np.linspace(80, 70, n))
    fig = measure_ride(s, 0, 300_000, RidePolicy(80.0, 60.0, pack_wh=500.0))
    assert (fig.energy_wh, fig.energy_source) == (50.0, "soc")
    unknown = measure_ride(s, 0, 300_000, POLICY)
    assert (unknown.energy_wh, unknown.energy_source) == (None, None)
    charged = ride(np.arange(n) * 20.0, soc_pct=np.linspace(70, 80, n))
    assert measure_ride(charged, 0, 300_000, RidePolicy(pack_wh=500.0)).energy_wh == 0.0
