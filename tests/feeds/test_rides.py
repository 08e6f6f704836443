"""Rides from the command history: unlock opens, the next lock closes."""

from __future__ import annotations

from feeds import RideCommand, rides_from_commands


def cmd(vehicle, seq, kind, t):
    return RideCommand(vehicle, f"c-{vehicle}-{seq}", kind, seq, float(t))


def test_each_unlock_lock_pair_is_one_ride_named_after_its_unlock():
    rides = rides_from_commands(
        [cmd(1, 3, "lock", 30), cmd(1, 1, "unlock", 10), cmd(2, 2, "unlock", 20)]
    )
    closed, still_open = rides
    assert (closed.vehicle, closed.trip_id, closed.start_time, closed.end_time) == (
        1,
        "c-1-1",
        10.0,
        30.0,
    )
    assert closed.end_seq == 3 and not closed.open
    assert still_open.vehicle == 2 and still_open.open and still_open.covers(1e9)


def test_a_repeated_unlock_belongs_to_the_open_ride_and_a_lone_lock_ends_nothing():
    rides = rides_from_commands(
        [
            cmd(1, 1, "lock", 5),
            cmd(1, 2, "unlock", 10),
            cmd(1, 3, "unlock", 12),
            cmd(1, 4, "lock", 40),
            cmd(1, 5, "lock", 50),
        ]
    )
    assert [(r.trip_id, r.start_time, r.end_time) for r in rides] == [("c-1-2", 10.0, 40.0)]
    assert rides[0].covers(10.0) and rides[0].covers(40.0) and not rides[0].covers(41.0)


def test_no_commands_no_rides():
    assert rides_from_commands([]) == []
