"""GPS plausibility: impossible jumps are flagged, never dropped, and do not poison the next fix."""

from __future__ import annotations

import numpy as np

from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP, TelemetryBatch
from telemetry.earth import haversine_m
from telemetry.plausibility import PlausibilityFilter

LAT0, LON0 = 52.52, 13.40
DEG_PER_M = 1 / 111_195.0  # latitude degrees per metre


def track(vehicle, times_s, north_m):
    b = TelemetryBatch.empty(len(times_s))
    b.vehicle[:] = vehicle
    b.time_ms[:] = np.asarray(times_s) * 1000
    b.lat[:] = LAT0 + np.asarray(north_m) * DEG_PER_M
    b.lon[:] = LON0
    return b


def flagged(b):
    return ((b.flags & FLAG_IMPLAUSIBLE_JUMP) != 0).tolist()


def test_haversine_matches_a_known_distance():
    # Berlin TV tower to Brandenburg Gate: about 2.2 km.
    assert abs(haversine_m(52.5208, 13.4094, 52.5163, 13.3777) - 2196) < 15


def test_a_plausible_ride_is_not_flagged():
    f = PlausibilityFilter()
    f.set_limits(np.array([1]), np.array([80.0]))
    b = track(1, range(10), [i * 6 for i in range(10)])  # 6 m/s = 21.6 km/h
    assert f.apply(b) == 0 and not any(flagged(b))


def test_a_glitch_flags_only_the_glitch():
    f = PlausibilityFilter()
    f.set_limits(np.array([1]), np.array([80.0]))
    north = [0, 6, 12, 5000, 24, 30]  # one fix 5 km off, then back on track
    b = track(1, range(6), north)
    assert f.apply(b) == 1
    assert flagged(b) == [False, False, False, True, False, False]


def test_the_limit_depends_on_the_vehicle_type():
    f = PlausibilityFilter()
    f.set_limits(np.array([1, 2]), np.array([80.0, 300.0]))
    # 30 m/s = 108 km/h: too fast for the e-bike (1), fine for the car (2).
    b = TelemetryBatch.concat([track(1, [0, 10], [0, 300 + 50]), track(2, [0, 10], [0, 300 + 50])])
    f.apply(b)
    assert flagged(b) == [False, True, False, False]


def test_the_reference_carries_across_batches_and_restarts():
    f = PlausibilityFilter()
    f.set_limits(np.array([1]), np.array([80.0]))
    f.apply(track(1, [0, 1], [0, 5]))
    assert f.last_fix(1)[0] == 1000
    jump = track(1, [2], [10_000])
    assert f.apply(jump) == 1

    restarted = PlausibilityFilter()
    restarted.set_limits(np.array([1]), np.array([80.0]))
    restarted.restore(
        np.array([1]), np.array([1000]), np.array([LAT0 + 5 * DEG_PER_M]), np.array([LON0])
    )
    jump = track(1, [2], [10_000])
    assert restarted.apply(jump) == 1


def test_gps_noise_between_close_fixes_is_tolerated():
    f = PlausibilityFilter()
    b = track(1, [0, 0.05, 0.1], [0, 8, -5])  # 8 m of noise 50 ms apart
    assert f.apply(b) == 0


def test_samples_without_fix_are_ignored_and_out_of_order_rows_are_handled():
    f = PlausibilityFilter()
    f.set_limits(np.array([1]), np.array([80.0]))
    b = track(1, [5, 1, 3, 2, 4], [25, 5, 15, 10, 20])
    b.lat[2] = np.nan
    b.lon[2] = np.nan
    assert f.apply(b) == 0
    assert f.last_fix(1)[0] == 5000
