"""Trips core (sans-IO): rides found in the vehicles' reported lock state, and a ride's figures
measured from its samples (distance robust to GPS jumps and gaps, duration, energy, speed)."""

from trips.measure import RideFigures, RidePolicy, RideSamples, measure_ride
from trips.tracker import TRIP_SOURCE, TripBoundary, TripTracker, TripTransitions

__all__ = [
    "TRIP_SOURCE",
    "RideFigures",
    "RidePolicy",
    "RideSamples",
    "TripBoundary",
    "TripTracker",
    "TripTransitions",
    "measure_ride",
]
