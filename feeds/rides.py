"""What the feeds call a ride. The trip entity (the trips table, measured once a ride ends, its
figures what billing is told) is the ride where it exists. Where it does not (a vehicle that
never reports its lock state, rides older than the trips table), a succeeded unlock opens a ride
and the vehicle's next succeeded lock closes it. This is the one place the feeds learn what a
trip is."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class RideCommand:
    """A succeeded lock or unlock: the vehicle, the command (its UUID and submission order),
    and when the vehicle carried it out (device time, else when it succeeded), epoch seconds."""

    vehicle: int
    command_id: str
    type: str  # "unlock" | "lock"
    seq: int
    time: float


@dataclass(frozen=True, slots=True)
class TripFigures:
    """A measured trip's figures as the trip entity stores them (never recomputed per query)."""

    start_lat: float
    start_lon: float
    end_lat: float
    end_lon: float
    distance_m: float


@dataclass(frozen=True, slots=True)
class Ride:
    """One ride; trip_id is a UUID, as MDS wants: the opening unlock's command id where a
    command began it. end_time and end_seq are None while the ride goes on. `figures` is set for
    a measured trip of the trip entity; a ride from commands alone is measured by its reader."""

    vehicle: int
    trip_id: str
    start_time: float
    end_time: float | None
    end_seq: int | None
    figures: TripFigures | None = None
    # False for a trip that names no unlock command (not measured yet, or none began it): its
    # trip_id is then a stand-in until a command ride it overlaps names it.
    named: bool = True

    @property
    def open(self) -> bool:
        return self.end_time is None

    def covers(self, t: float) -> bool:
        return self.start_time <= t and (self.end_time is None or t <= self.end_time)


def rides_from_commands(commands: Iterable[RideCommand]) -> list[Ride]:
    """Pair each vehicle's unlocks and locks in submission order. A second unlock while a ride
    is open belongs to that ride (a retry by rental); a lock with no open ride ends nothing (the
    vehicle was parked by operations, or its unlock is older than what was read)."""
    rides: list[Ride] = []
    opened: dict[int, RideCommand] = {}
    for c in sorted(commands, key=lambda c: (c.vehicle, c.seq)):
        if c.type == "unlock":
            opened.setdefault(c.vehicle, c)
        elif c.type == "lock" and c.vehicle in opened:
            start = opened.pop(c.vehicle)
            rides.append(Ride(c.vehicle, start.command_id, start.time, c.time, c.seq))
    rides.extend(Ride(s.vehicle, s.command_id, s.time, None, None) for s in opened.values())
    rides.sort(key=lambda r: (r.start_time, r.vehicle))
    return rides


def rides_preferring_trips(trips: Iterable[Ride], from_commands: Iterable[Ride]) -> list[Ride]:
    """The trip entity's rides, and a ride from commands only where no trip of the same vehicle
    overlaps it: the same ride seen twice would be reported twice (and billed twice)."""
    kept = list(trips)
    by_vehicle: dict[int, list[int]] = {}
    for i, trip in enumerate(kept):
        by_vehicle.setdefault(trip.vehicle, []).append(i)
    alone: list[Ride] = []
    for ride in sorted(from_commands, key=lambda r: r.start_time):
        overlapped = [i for i in by_vehicle.get(ride.vehicle, ()) if _overlap(ride, kept[i])]
        if not overlapped:
            alone.append(ride)
        for i in overlapped:
            # The unlock that began a trip names it before the trip is measured (which is when
            # the trip learns its unlock): the same ride keeps one id from its first report on.
            if not kept[i].named:
                kept[i] = replace(kept[i], trip_id=ride.trip_id, named=True)
    kept += alone
    kept.sort(key=lambda r: (r.start_time, r.vehicle))
    return kept


def _overlap(a: Ride, b: Ride) -> bool:
    a_end = math.inf if a.end_time is None else a.end_time
    b_end = math.inf if b.end_time is None else b.end_time
    return a.start_time <= b_end and b.start_time <= a_end
