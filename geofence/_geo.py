"""Local flat-earth geometry in metres: the circle-zone membership formula, point-to-edge distances.

Circles and hysteresis margins are small (metres to a few km), so a local equirectangular frame at
the circle's centre (or at the point) is exact enough and, above all, one fixed formula.
"""

from __future__ import annotations

import math

import numpy as np

from telemetry.earth import M_PER_DEG

MAX_CIRCLE_RADIUS_M = 100_000.0  # beyond, the flat frame drifts from the sphere by over ~0.1 %
MAX_CIRCLE_LAT = 85.0


def circle_frame(lon0: float, lat0: float) -> tuple[float, float]:
    """Metres per degree of longitude and latitude at a circle's centre (kx, ky)."""
    return M_PER_DEG * math.cos(math.radians(lat0)), M_PER_DEG


def circle_d2(lon: np.ndarray, lat: np.ndarray, lon0, lat0, kx, ky) -> np.ndarray:
    """Squared distance in m² from the centre, in the centre's equirectangular frame.

    This expression *is* the definition of a circle zone: a point is inside iff
    circle_d2(...) < circle_r2(radius_m), evaluated in float64 exactly as written here. The index
    and the test oracle both call these functions, so they agree bit for bit.
    """
    dx = (lon - lon0) * kx
    dy = (lat - lat0) * ky
    return dx * dx + dy * dy


def circle_r2(radius_m: float) -> float:
    """The radius squared, by multiplication: a product is correctly rounded everywhere, while
    radius_m ** 2 goes through C pow(), which is one ulp off for some radii (43351.3837688072 m)
    and so moves points that lie exactly on the circle."""
    return radius_m * radius_m


def circle_ring(lon0: float, lat0: float, radius_m: float, vertices: int = 64) -> np.ndarray:
    """A counter-clockwise closed ring with its vertices on the circle (for maps, GBFS export)."""
    kx, ky = circle_frame(lon0, lat0)
    a = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    ring = np.column_stack([lon0 + radius_m * np.cos(a) / kx, lat0 + radius_m * np.sin(a) / ky])
    return np.vstack([ring, ring[:1]])


def segment_distance_m(
    lon: np.ndarray, lat: np.ndarray, ax: np.ndarray, ay: np.ndarray, bx: np.ndarray, by: np.ndarray
) -> np.ndarray:
    """Distance in metres from point i to segment i (a -> b), elementwise.

    Each point is measured in its own equirectangular frame, which is accurate to well under a
    percent at the distances hysteresis cares about (metres to hundreds of metres).
    """
    kx = M_PER_DEG * np.cos(np.radians(lat))
    x1, y1 = (ax - lon) * kx, (ay - lat) * M_PER_DEG
    dx, dy = (bx - ax) * kx, (by - ay) * M_PER_DEG
    length2 = dx * dx + dy * dy
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(length2 > 0, -(x1 * dx + y1 * dy) / length2, 0.0)
    t = np.clip(t, 0.0, 1.0)
    cx, cy = x1 + t * dx, y1 + t * dy
    return np.sqrt(cx * cx + cy * cy)
