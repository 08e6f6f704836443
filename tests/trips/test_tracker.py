"""Ride boundaries from the reported lock state."""

from __future__ import annotations

import numpy as np

from telemetry.batch import TelemetryBatch
from trips import TripTracker


def batch(vehicle, t_s, locked):
    n = len(t_s)
    b = TelemetryBatch.empty(n)
    b.vehicle[:] = vehicle
    b.time_ms[:] = np.asarray(t_s, dtype=np.int64) * 1000
    b.lat[:] = 52.5
    b.lon[:] = 13.4
    b.locked[:] = locked
    return b


def test_unlock_then_lock_is_one_ride_across_batches():
    tr = TripTracker()
    assert not tr.process(batch(1, [0, 1], [1, 1]))
    started = tr.process(batch(1, [2, 3, 4], [0, 0, 0]))
    assert [(b.vehicle, b.time_ms) for b in started.starts] == [(1, 2000)] and not started.ends
    ended = tr.process(batch(1, [5, 6], [-1, 1]))  # a sample without the flag changes nothing
    assert [(b.vehicle, b.time_ms) for b in ended.ends] == [(1, 6000)] and not ended.starts


def test_a_vehicle_first_seen_unlocked_opens_no_ride():
    tr = TripTracker()
    assert not tr.process(batch(1, [0, 1], [0, 0]))
    assert [b.time_ms for b in tr.process(batch(1, [2], [1])).ends] == [2000]


def test_a_buffered_upload_with_two_rides_yields_both_in_order_and_late_samples_none():
    tr = TripTracker()
    tr.process(batch(1, [0], [1]))
    b = batch(1, [6, 1, 3, 2, 5, 4], [1, 0, 1, 0, 0, 1])  # out of order in the message
    found = tr.process(b)
    assert [x.time_ms for x in found.starts] == [1000, 5000]
    assert [x.time_ms for x in found.ends] == [3000, 6000]
    assert not tr.process(batch(1, [3, 4], [0, 1])), "older than what was processed"


def test_restore_continues_from_the_stored_lock_state():
    tr = TripTracker()
    tr.restore({1: (10_000, False), 2: (10_000, True), 3: (10_000, None)})
    found = tr.process(TelemetryBatch.concat([batch(v, [11], [1]) for v in (1, 2, 3)]))
    assert [b.vehicle for b in found.ends] == [1] and not found.starts
