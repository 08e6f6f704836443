"""The sphere every distance in fleetgate is measured on: one Earth radius for the GPS
plausibility filter, ride distances and the geofence's local flat frames, so that they agree."""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # the mean radius (IUGG), in metres
M_PER_DEG = EARTH_RADIUS_M * math.pi / 180.0  # metres per degree of latitude (of longitude at 0°)


def haversine_m(lat1, lon1, lat2, lon2):
    """Great-circle distance in metres; numpy arrays or scalars."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2) - np.radians(lon1)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
