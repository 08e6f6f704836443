"""The trip measurer: closed trips measured from their stored samples, with the zones they
visited and the end-of-ride parking check, announced as trip.ended (or trip.updated after a late
upload) in the transaction that stores the figures.

The figures come from the trips core (trips.measure_ride); zones and rules from the geofence
core's current zone set, which this shell holds for it (the cores do not import each other).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from geofence import ZoneSet
from telemetry.store import MeasuredTrip, TelemetryStore, TripToMeasure
from trips import RidePolicy, RideSamples, measure_ride

log = logging.getLogger(__name__)


class TripMeasurer:
    """Measures what the store has waiting (closed or stale trips), a few at a time."""

    def __init__(
        self,
        store: TelemetryStore,
        *,
        zones: Callable[[], ZoneSet | None],
        max_speed_kmh: Callable[[str], float],
        pack_wh: Callable[[str], float | None] = lambda vehicle_type: None,
        gap_s: float = 60.0,
        batch: int = 50,
    ) -> None:
        self._store = store
        self._zones = zones
        self._max_speed_kmh = max_speed_kmh  # by vehicle type: what the plausibility filter uses
        self._pack_wh = pack_wh  # by vehicle type: the battery core's nominal pack energy
        self._gap_s = gap_s
        self._batch = batch

    async def measure_waiting(self) -> list[MeasuredTrip]:
        """Measure until nothing waits; returns what was measured."""
        done: list[MeasuredTrip] = []
        while True:
            measured = await self._store.measure_trips(self.measure, self._batch)
            done += measured
            if len(measured) < self._batch or all(m.error for m in measured):
                break
        for m in done:
            if m.error is not None:
                log.error(
                    "trip_measure_failed",
                    extra={"trip": m.id, "vehicle": m.vehicle, "error": m.error[:300]},
                )
        announced = [m for m in done if m.announced]
        if announced:
            log.info(
                "trips_measured",
                extra={
                    "ended": sum(m.announced == "ended" for m in announced),
                    "updated": sum(m.announced == "updated" for m in announced),
                },
            )
        return done

    def measure(self, trip: TripToMeasure) -> dict[str, Any]:
        """The trip's figures as trips columns (telemetry.store.TRIP_FIGURE_COLUMNS)."""
        samples = RideSamples(**trip.samples)
        policy = RidePolicy(
            self._max_speed_kmh(trip.vehicle_type), self._gap_s, self._pack_wh(trip.vehicle_type)
        )
        fig = measure_ride(samples, trip.started_ms, trip.ended_ms, policy)
        out: dict[str, Any] = {
            "distance_m": fig.distance_m,
            "distance_source": fig.distance_source,
            "gps_distance_m": fig.gps_distance_m,
            "duration_s": fig.duration_s,
            "energy_wh": fig.energy_wh,
            "energy_source": fig.energy_source,
            "soc_start_pct": fig.soc_start_pct,
            "soc_end_pct": fig.soc_end_pct,
            "max_speed_kmh": fig.max_speed_kmh,
            "fixes_used": fig.fixes_used,
            "fixes_rejected": fig.fixes_rejected,
            "speeding_episodes": trip.speeding_episodes,
        }
        if fig.start is not None:
            out["start_lat"], out["start_lon"] = fig.start
        if fig.end is not None:
            out["end_lat"], out["end_lon"] = fig.end
        zoneset = self._zones()
        if zoneset is not None and len(fig.route):
            out.update(_zone_figures(zoneset, trip, samples, fig.route))
        return out


def _zone_figures(
    zs: ZoneSet, trip: TripToMeasure, s: RideSamples, route: np.ndarray
) -> dict[str, Any]:
    """Zones visited (at any plausible fix, in their time window), and at the last fix: the zone
    whose rules govern it, ride_end_allowed there, and whether it lies outside every operating
    area (only where operating areas are defined)."""
    lat, lon, t = s.lat[route], s.lon[route], s.time_ms[route]
    membership = zs.locate(lat, lon)
    zone, point = membership.zone, membership.point
    if len(zone):
        zone = zone[zs.active(zone, t[point])]
    visited = sorted({zs.ids[int(z)] for z in np.unique(zone)})
    end = zs.locate(lat[-1:], lon[-1:])
    rules = zs.resolve(end, trip.vehicle_type, t[-1:])
    governing = int(rules.zone[0])
    end_zones = end.zone[zs.active(end.zone, np.repeat(t[-1:], len(end.zone)))]
    outside = None
    if zs.is_operating_area.any():
        outside = not bool(zs.is_operating_area[end_zones].any())
    return {
        "zones_visited": visited,
        "end_zone": zs.ids[governing] if governing >= 0 else None,
        "parking_allowed": bool(rules.ride_end_allowed[0]),
        "ended_outside_operating_area": outside,
    }
