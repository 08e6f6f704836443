"""The theft detector: movement while locked raises one alarm per episode, with hysteresis."""

from __future__ import annotations

import numpy as np
import pytest

from alarms import MOVED_WHILE_LOCKED, TheftDetector, TheftPolicy
from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP, TelemetryBatch
from telemetry.earth import M_PER_DEG

LAT0, LON0 = 52.52, 13.405


def samples(vehicle, t_s, north_m, *, locked=1, speed=0.0, immobilised=-1, flags=0):
    """One row per entry; positions north of a fixed point, in metres."""
    n = len(t_s)
    b = TelemetryBatch.empty(n)
    b.vehicle[:] = vehicle
    b.time_ms[:] = np.asarray(t_s, dtype=np.int64) * 1000
    b.lat[:] = LAT0 + np.asarray(north_m, dtype=np.float64) / M_PER_DEG
    b.lon[:] = LON0
    b.speed_kmh[:] = speed
    b.locked[:] = locked
    b.immobilised[:] = immobilised
    b.flags[:] = flags
    return b


def test_a_locked_vehicle_carried_off_raises_one_alarm_per_episode():
    det = TheftDetector(TheftPolicy(noise_m=50, fixes=2, calm_fixes=3))
    parked = det.process(samples(1, range(0, 10), np.random.default_rng(1).normal(0, 10, 10)))
    assert parked.events == []
    moved = det.process(samples(1, range(10, 20), np.arange(10) * 30.0 + 60))
    assert [e.type for e in moved.events] == [MOVED_WHILE_LOCKED]
    alarm = moved.events[0]
    assert alarm.source == "alarm" and alarm.time_ms == 11_000  # the second supporting fix
    assert alarm.detail["distance_m"] > 50
    # Still moving in the next batch: the same episode, no second alarm.
    assert det.process(samples(1, range(20, 25), np.arange(5) * 30.0 + 400)).events == []


def test_one_gps_glitch_or_a_wobble_within_the_noise_never_alarms():
    det = TheftDetector(TheftPolicy(noise_m=50, fixes=2))
    north = [0, 5, -8, 400, 3, 12, -20, 700, 0, 5]  # lone jumps, each followed by a calm fix
    assert det.process(samples(1, range(10), north)).events == []


def test_flagged_fixes_are_not_movement():
    det = TheftDetector()
    det.process(samples(1, [0, 1], [0, 0]))
    jumps = samples(1, [2, 3, 4], [900, 950, 1000], flags=FLAG_IMPLAUSIBLE_JUMP)
    assert det.process(jumps).events == []


def test_speed_alone_counts_as_movement():
    det = TheftDetector(TheftPolicy(speed_kmh=8, fixes=2))
    det.process(samples(1, [0, 1], [0, 0]))
    b = samples(1, [2, 3, 4], [0, 0, 0], speed=15.0)
    b.lat[:] = np.nan  # no fix at all: the speed says it is moving
    assert [e.type for e in det.process(b).events] == [MOVED_WHILE_LOCKED]


def test_an_unlocked_or_immobilised_vehicle_moves_freely():
    det = TheftDetector()
    assert det.process(samples(1, range(10), np.arange(10) * 50.0, locked=0)).events == []
    det.process(samples(2, [0, 1], [0, 0], immobilised=1))
    assert det.process(samples(2, range(2, 8), np.arange(6) * 100.0, immobilised=1)).events == []


def test_coming_to_rest_ends_the_episode_and_a_new_theft_alarms_again():
    det = TheftDetector(TheftPolicy(noise_m=50, fixes=2, calm_fixes=3))
    det.process(samples(1, [0, 1], [0, 0]))
    first = det.process(samples(1, [2, 3, 4], [200, 300, 400]))
    rest = det.process(samples(1, [5, 6, 7, 8], [400, 402, 398, 401]))  # at rest: re-anchored
    second = det.process(samples(1, [9, 10, 11], [600, 700, 800]))
    assert (len(first.events), len(rest.events), len(second.events)) == (1, 0, 1)


def test_unlocking_re_anchors_at_the_next_lock():
    det = TheftDetector()
    det.process(samples(1, [0, 1], [0, 0]))
    det.process(samples(1, [2, 3, 4], [100, 500, 900], locked=0))  # a ride
    assert det.process(samples(1, [5, 6, 7], [900, 905, 902])).events == []


def test_a_restored_detector_continues_the_episode_without_a_second_alarm():
    det = TheftDetector()
    det.process(samples(1, [0, 1], [0, 0]))
    result = det.process(samples(1, [2, 3, 4], [200, 300, 400]))
    assert len(result.events) == 1 and result.states[1]["active"]
    again = TheftDetector()
    again.restore(result.states, {1: 4000})
    assert again.in_episode(1)
    assert again.process(samples(1, [5, 6], [500, 600])).events == []
    assert again.process(samples(1, [3], [900])).events == [], "older samples are ignored"


def test_missing_lock_flags_keep_the_last_reported_state():
    det = TheftDetector()
    det.process(samples(1, [0, 1], [0, 0]))
    b = samples(1, [2, 3, 4], [200, 300, 400], locked=-1)
    assert len(det.process(b).events) == 1


def test_many_vehicles_in_one_batch_each_alarm_on_its_own():
    det = TheftDetector()
    parts = [samples(v, [0, 1], [0, 0]) for v in range(50)]
    det.process(TelemetryBatch.concat(parts))
    moving = [
        samples(v, [2, 3, 4], [200, 300, 400] if v % 5 == 0 else [1, 2, 1]) for v in range(50)
    ]
    events = det.process(TelemetryBatch.concat(moving)).events
    assert sorted(e.vehicle for e in events) == list(range(0, 50, 5))


def test_a_bad_policy_is_refused():
    with pytest.raises(ValueError):
        TheftPolicy(fixes=0)


def test_a_locked_vehicle_without_a_fix_is_anchored_at_its_first_fix():
    det = TheftDetector()
    blind = samples(1, [0, 1, 2], [0, 0, 0])
    blind.lat[:] = np.nan  # a car in a garage
    assert det.process(blind).events == []
    assert det.process(samples(1, [3, 4, 5], [500, 505, 498])).events == []
    assert len(det.process(samples(1, [6, 7], [700, 800])).events) == 1


@pytest.mark.parametrize("seed", range(6))
def test_a_random_fleet_cut_into_batches_anywhere_gives_the_same_alarms_and_states(seed):
    """Lock states left out (-1) carry over from earlier in the batch or from earlier batches,
    within each vehicle only; however the samples are cut and shuffled into batches, the alarms
    and the final states are those of one whole batch."""
    rng = np.random.default_rng(seed)
    parts = []
    for v in range(1, 9):
        n = 60
        walk = np.cumsum(rng.choice([0.0, 0.0, 5.0, 80.0], n))
        parts.append(
            samples(
                v,
                np.arange(n) * 10,
                walk,
                locked=rng.choice([-1, -1, 0, 1, 1, 1], n),
                immobilised=rng.choice([-1, -1, -1, 0, 1], n),
                speed=rng.choice([0.0, 3.0, 20.0], n),
                flags=rng.choice([0, 0, 0, FLAG_IMPLAUSIBLE_JUMP], n),
            )
        )
    fleet = TelemetryBatch.concat(parts)

    def run(pieces):
        det = TheftDetector()
        events = []
        for piece in pieces:
            events += det.process(fleet.take(rng.permutation(piece))).events
        return sorted(events, key=lambda e: (e.vehicle, e.time_ms)), det.export_state()

    whole = run([np.arange(len(fleet))])
    order = np.argsort(fleet.time_ms, kind="stable")
    cuts = np.sort(rng.choice(np.arange(1, len(fleet)), size=30, replace=False))
    assert run(np.split(order, cuts)) == whole
    assert whole[0]  # the fleet raises alarms at all
