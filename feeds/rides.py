"""Rides (trips) from the command history: a succeeded unlock opens a ride, the vehicle's next
succeeded lock closes it. This is the one place the feeds learn what a trip is; when the trip
entity (rental integration) lands, its rows become Rides here and nothing else changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
class Ride:
    """One ride; trip_id is the opening unlock's command id (a UUID, as MDS wants).
    end_time and end_seq are None while the ride goes on."""

    vehicle: int
    trip_id: str
    start_time: float
    end_time: float | None
    end_seq: int | None

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
