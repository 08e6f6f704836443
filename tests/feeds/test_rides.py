"""Rides from the command history: unlock opens, the next lock closes."""

from __future__ import annotations

from feeds import Ride, RideCommand, TripFigures, rides_from_commands, rides_preferring_trips


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


def test_a_trip_replaces_the_command_rides_it_overlaps_and_leaves_the_others():
    trip = Ride(1, "trip-a", 100.0, 200.0, None, TripFigures(1.0, 2.0, 3.0, 4.0, 500.0))
    open_trip = Ride(2, "trip-b", 300.0, None, None)
    same_ride = Ride(1, "unlock-a", 99.0, 201.0, 5)  # the trip's own unlock→lock
    later_ride = Ride(1, "unlock-b", 250.0, 260.0, 9)  # a ride the trip table does not have
    into_open = Ride(2, "unlock-c", 400.0, 450.0, 3)  # overlaps the open trip
    other_vehicle = Ride(3, "unlock-d", 100.0, 200.0, 4)
    rides = rides_preferring_trips(
        [trip, open_trip], [same_ride, later_ride, into_open, other_vehicle]
    )
    assert [r.trip_id for r in rides] == ["trip-a", "unlock-d", "unlock-b", "trip-b"]
    assert rides_preferring_trips([], [later_ride]) == [later_ride]


def test_a_trip_that_names_no_unlock_yet_takes_the_id_of_the_command_ride_it_overlaps():
    # Not measured yet: the trip does not know its unlock, the command ride does.
    unmeasured = Ride(1, "stand-in", 100.0, 200.0, None, named=False)
    ride = Ride(1, "unlock-a", 99.0, 201.0, 5)
    fob = Ride(2, "fob-trip", 100.0, 200.0, None, named=False)  # no command began it
    rides = rides_preferring_trips([unmeasured, fob], [ride])
    assert [(r.vehicle, r.trip_id) for r in rides] == [(1, "unlock-a"), (2, "fob-trip")]
