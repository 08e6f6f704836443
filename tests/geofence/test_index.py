"""ZoneIndex.locate is exact: the same membership as shapely's contains_xy, boundaries included.

Boundary convention under test: a point on an edge or a vertex (shell or hole) is NOT in the zone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from benchmarks.zone_index import city_points, city_zones, shapely_contains_xy
from geofence import Membership, Zone, ZoneIndex, ZoneSet
from geofence._geo import circle_d2, circle_frame, circle_r2
from telemetry.earth import haversine_m

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- generators ----


@st.composite
def star_rings(draw, cx: float, cy: float, radius: float, step: float | None, n_max: int = 40):
    """A star-shaped closed ring around (cx, cy); on a lattice of `step` when given (so that
    vertices, midpoints, horizontal and vertical edges are exact)."""
    n = draw(st.integers(4, n_max))
    # Jittered even angles keep every gap below pi, so the ring is simple and encloses a disc of
    # radius >= 0.4 * cos(pi / 4) * radius around the centre (room for a hole).
    jitter = draw(st.lists(st.floats(-0.45, 0.45), min_size=n, max_size=n))
    angles = [(i + j) * 2 * math.pi / n for i, j in enumerate(jitter)]
    radii = draw(st.lists(st.floats(0.4, 1.0), min_size=n, max_size=n))
    pts = [
        (cx + radius * r * math.cos(a), cy + radius * r * math.sin(a))
        for a, r in zip(angles, radii)
    ]
    if step is not None:
        pts = [(round(x / step) * step, round(y / step) * step) for x, y in pts]
    pts = [p for i, p in enumerate(pts) if p != pts[i - 1]]
    assume(len(pts) >= 3)
    return [list(p) for p in pts] + [list(pts[0])]


@st.composite
def polygon_zones(draw, max_zones: int = 3):
    """1-3 polygons (some with holes, some MultiPolygons) overlapping somewhere on Earth, from
    metre-sized to continent-sized, antimeridian-free."""
    scale = draw(st.sampled_from([1e-4, 1e-2, 1.0, 30.0]))
    cx = draw(st.floats(-170 + 2 * scale, 170 - 2 * scale))
    cy = draw(st.floats(-80 + 2 * scale, 80 - 2 * scale))
    lattice = draw(st.booleans())
    # Lattice steps are powers of two, so every lattice coordinate and every edge midpoint is an
    # exact double.
    divisions = draw(st.sampled_from([16, 64, 256]))
    step = 2.0 ** math.floor(math.log2(scale / divisions)) if lattice else None
    if step is not None:
        cx, cy = round(cx / step) * step, round(cy / step) * step
    zones = []
    for k in range(draw(st.integers(1, max_zones))):
        ox = draw(st.floats(-0.5, 0.5)) * scale
        oy = draw(st.floats(-0.5, 0.5)) * scale
        if step is not None:
            ox, oy = round(ox / step) * step, round(oy / step) * step
        shell = draw(star_rings(cx + ox, cy + oy, scale, step))
        rings = [shell]
        if draw(st.booleans()):
            rings.append(draw(star_rings(cx + ox, cy + oy, scale * 0.2, step, n_max=12)))
        if draw(st.integers(0, 3)) == 0:
            other = draw(star_rings(cx + ox + 2.5 * scale, cy + oy, scale, step))
            geometry = {"type": "MultiPolygon", "coordinates": [rings, [other]]}
        else:
            geometry = {"type": "Polygon", "coordinates": rings}
        try:
            zones.append(Zone(id=f"z{k}", geometry=geometry))
        except ValueError:
            assume(False)  # snapping to the lattice occasionally makes a ring invalid
    return zones


def nasty_points(zones: list[Zone], rng: np.random.Generator, n_random: int = 300):
    """Vertices, edge midpoints, points one ulp off them, points on the horizontal lines through
    vertices, points on and near random spots of edges, and random points in the bounding box."""
    coords = np.vstack([shapely.get_coordinates(z.shape) for z in zones])
    a = np.vstack(
        [
            shapely.get_coordinates(r)[:-1]
            for z in zones
            for r in shapely.get_rings(shapely.get_parts(z.shape))
        ]
    )
    b = np.vstack(
        [
            shapely.get_coordinates(r)[1:]
            for z in zones
            for r in shapely.get_rings(shapely.get_parts(z.shape))
        ]
    )
    mid = (a + b) / 2
    t = rng.uniform(0, 1, (len(a), 1))
    along = a + t * (b - a)
    base = np.vstack([coords, mid, along])
    ulp = np.vstack(
        [np.nextafter(base, base + d) for d in ([1, 0], [-1, 0], [0, 1], [0, -1], [1, 1], [-1, -1])]
    )
    minx, miny, maxx, maxy = shapely.total_bounds([z.shape for z in zones])
    same_y = np.column_stack([rng.uniform(minx, maxx, len(coords)), coords[:, 1]])
    same_x = np.column_stack([coords[:, 0], rng.uniform(miny, maxy, len(coords))])
    rnd = np.column_stack([rng.uniform(minx, maxx, n_random), rng.uniform(miny, maxy, n_random)])
    pts = np.vstack([base, ulp, same_y, same_x, rnd])
    return pts[:, 1].copy(), pts[:, 0].copy()  # lat, lon


def oracle(zones: list[Zone], lat, lon) -> np.ndarray:
    pairs = []
    for z, zone in enumerate(zones):
        if zone.is_circle:
            (clon, clat), r = zone.geometry.coordinates, zone.geometry.radius_m
            inside = circle_d2(lon, lat, clon, clat, *circle_frame(clon, clat)) < circle_r2(r)
        else:
            inside = shapely.contains_xy(zone.shape, lon, lat)
        idx = np.flatnonzero(inside)
        pairs.append(np.column_stack([idx, np.full(len(idx), z)]))
    pairs = np.vstack(pairs).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


# ------------------------------------------------------------------------------ property ----


@SETTINGS
@given(
    zones=polygon_zones(),
    cells=st.sampled_from([None, 1, 16, 3000]),
    seed=st.integers(0, 2**32 - 1),
)
def test_membership_equals_shapely_contains_xy_on_and_near_edges(zones, cells, seed):
    lat, lon = nasty_points(zones, np.random.default_rng(seed))
    got = ZoneIndex(zones, cells=cells).locate(lat, lon)
    np.testing.assert_array_equal(got.pairs(), oracle(zones, lat, lon))


def test_points_exactly_on_vertices_and_axis_parallel_edges_are_outside():
    square = Zone(
        id="sq",
        geometry={
            "type": "Polygon",
            "coordinates": [
                [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],
                [[1, 1], [1, 3], [3, 3], [3, 1], [1, 1]],
            ],
        },
    )
    lat = np.array([0, 0, 4, 2, 2, 1, 3, 2, 0.5, 3.5, 2])
    lon = np.array([0, 2, 2, 4, 0, 2, 1, 1, 0.5, 3.5, 2])
    # corners, horizontal and vertical edges of the shell and of the hole: all on the boundary;
    # then two points inside the ring and one inside the hole.
    got = ZoneIndex([square]).locate(lat, lon)
    assert got.counts.tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    assert shapely.contains_xy(square.shape, lon, lat).tolist() == (got.counts == 1).tolist()


def test_touching_parts_and_a_hole_touching_its_shell():
    corner = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]],
            [[[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]],
        ],
    }  # parts meet at (2, 2)
    notch = {
        "type": "Polygon",
        "coordinates": [[[5, 0], [9, 0], [9, 4], [5, 4], [5, 0]], [[7, 0], [8, 2], [6, 2], [7, 0]]],
    }  # the hole touches the shell at (7, 0)
    zones = [Zone(id="corner", geometry=corner), Zone(id="notch", geometry=notch)]
    lon, lat = np.meshgrid(np.arange(-0.5, 9.75, 0.125), np.arange(-0.5, 4.75, 0.125))
    lat, lon = lat.ravel(), lon.ravel()
    for cells in (None, 3, 50):
        got = ZoneIndex(zones, cells=cells).locate(lat, lon)
        np.testing.assert_array_equal(got.pairs(), oracle(zones, lat, lon))


def test_rays_through_vertices_count_once():
    # A zigzag whose vertices share y with the query points: the half-open rule must count each
    # vertex crossing exactly once, whichever way the edges go.
    ring = [[0, 0], [6, 0], [6, 2], [5, 1], [4, 2], [3, 1], [2, 2], [1, 1], [0, 2], [0, 0]]
    zone = Zone(id="zig", geometry={"type": "Polygon", "coordinates": [ring]})
    lon = np.linspace(-1, 7, 161)
    lat = np.concatenate([np.full(161, 1.0), np.full(161, 2.0), np.full(161, 0.0)])
    lon = np.tile(lon, 3)
    got = ZoneIndex([zone], cells=4).locate(lat, lon)
    np.testing.assert_array_equal(got.counts == 1, shapely.contains_xy(zone.shape, lon, lat))


def test_huge_polygon_spanning_a_continent_is_exact():
    ring = [[-170, -80], [170, -80], [170, 80], [0, 10], [-170, 80], [-170, -80]]
    zone = Zone(id="big", geometry={"type": "Polygon", "coordinates": [ring]})
    rng = np.random.default_rng(3)
    lat, lon = rng.uniform(-85, 85, 200_000), rng.uniform(-175, 175, 200_000)
    got = ZoneIndex([zone]).locate(lat, lon)
    np.testing.assert_array_equal(got.counts == 1, shapely.contains_xy(zone.shape, lon, lat))


def test_nan_and_far_away_points_are_in_no_zone():
    zone = Zone(
        id="a",
        geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
    )
    got = ZoneIndex([zone]).locate(
        np.array([np.nan, 0.5, 50.0, 0.5]), np.array([0.5, np.nan, 50.0, 0.5])
    )
    assert got.counts.tolist() == [0, 0, 0, 1]


def test_empty_zone_set_and_empty_batch():
    empty = ZoneIndex([]).locate(np.array([1.0, np.nan, 3.0]), np.array([2.0, 1.0, np.nan]))
    assert empty.ptr.tolist() == [0, 0, 0, 0] and len(empty.zone) == 0
    assert empty.ptr.dtype == np.int64 and empty.zone.dtype == np.int32
    with pytest.raises(ValueError):
        ZoneIndex([]).locate(np.array([1.0]), np.array([2.0, 3.0]))
    zone = Zone(id="a", geometry={"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": 100})
    m = ZoneIndex([zone]).locate(np.empty(0), np.empty(0))
    assert len(m) == 0 and m.ptr.tolist() == [0]


# -------------------------------------------------------------------------------- circles ----


@SETTINGS
@given(
    lon0=st.floats(-179, 179),
    lat0=st.floats(-84, 84),
    radius=st.floats(0.5, 100_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_circle_membership_is_the_distance_formula_exactly(lon0, lat0, radius, seed):
    assume(abs(lon0) + radius / circle_frame(lon0, lat0)[0] < 179.9)  # antimeridian-free
    zone = Zone(
        id="c", geometry={"type": "Circle", "coordinates": [lon0, lat0], "radius_m": radius}
    )
    kx, ky = circle_frame(lon0, lat0)
    rng = np.random.default_rng(seed)
    ang = rng.uniform(0, 2 * math.pi, 2000)
    # On the circle to within float rounding, just inside/outside, and anywhere around it.
    rel = np.concatenate(
        [np.ones(1000), 1 + rng.choice([-1e-12, 1e-12, -1e-9, 1e-9], 500), rng.uniform(0, 2, 500)]
    )
    lon = lon0 + radius * rel * np.cos(ang) / kx
    lat = lat0 + radius * rel * np.sin(ang) / ky
    got = ZoneIndex([zone], cells=int(rng.choice([4, 64, 4096]))).locate(lat, lon)
    np.testing.assert_array_equal(got.pairs(), oracle([zone], lat, lon))


def test_circle_radius_is_squared_by_multiplication_not_pow():
    # Found by the property test above: for this radius r ** 2 (C pow) is one ulp above r * r, and
    # 278 of 1000 points placed exactly on the circle have d² between the two.
    lon0, lat0, radius = 0.0, 0.0, 43351.3837688072
    assert radius**2 != radius * radius
    zone = Zone(
        id="c", geometry={"type": "Circle", "coordinates": [lon0, lat0], "radius_m": radius}
    )
    kx, ky = circle_frame(lon0, lat0)
    ang = np.random.default_rng(0).uniform(0, 2 * math.pi, 1000)
    lon, lat = lon0 + radius * np.cos(ang) / kx, lat0 + radius * np.sin(ang) / ky
    d2 = circle_d2(lon, lat, lon0, lat0, kx, ky)
    assert np.any((d2 >= radius * radius) & (d2 < radius**2))  # the case is really exercised
    for cells in (4, 64, None):
        got = ZoneIndex([zone], cells=cells).locate(lat, lon)
        np.testing.assert_array_equal(got.counts == 1, d2 < radius * radius)


def test_circle_formula_agrees_with_great_circle_distance_within_a_tenth_of_a_percent():
    rng = np.random.default_rng(5)
    lon0, lat0 = 13.4, 52.5
    kx, ky = circle_frame(lon0, lat0)
    lon = lon0 + rng.uniform(-0.1, 0.1, 1000)
    lat = lat0 + rng.uniform(-0.1, 0.1, 1000)
    flat = np.sqrt(circle_d2(lon, lat, lon0, lat0, kx, ky))
    sphere = haversine_m(lat0, lon0, lat, lon)
    assert np.max(np.abs(flat - sphere) / sphere) < 1e-3


# ------------------------------------------------------------------------- realistic city ----


def test_a_synthetic_city_matches_the_shapely_baseline():
    zones = list(ZoneSet(city_zones(80, seed=3)).zones)
    lat, lon = city_points(60_000, zones, seed=4)
    got = ZoneIndex(zones).locate(lat, lon)
    polys = [z.shape for z in zones]
    expected = shapely_contains_xy(zones, polys, lat, lon)
    expected = expected[np.lexsort((expected[:, 1], expected[:, 0]))]
    np.testing.assert_array_equal(got.pairs(), expected)
    assert len(expected) > 60_000  # the city overlaps: many points are in several zones
    assert got.rechecked == 0  # ordinary positions never need the exact fallback


def test_membership_helpers():
    m = Membership.from_pairs(4, np.array([2, 0, 2, 3]), np.array([5, 1, 3, 0]))
    assert m.counts.tolist() == [1, 0, 2, 1]
    assert m.first().tolist() == [1, -1, 3, 0]
    assert sorted(m.zones_of(2).tolist()) == [3, 5]
    assert m.take(np.array([3, 2])).pairs().tolist() == [[0, 0], [1, 3], [1, 5]]


@pytest.mark.parametrize("cells", [1, 7, None, 200_000])
def test_answers_do_not_depend_on_the_grid(cells):
    # One cell makes every point walk every edge: the slowest, simplest case.
    zones = list(ZoneSet(city_zones(25, seed=9)).zones)
    lat, lon = city_points(3_000 if cells == 1 else 20_000, zones, seed=2)
    np.testing.assert_array_equal(
        ZoneIndex(zones, cells=cells).locate(lat, lon).pairs(), oracle(zones, lat, lon)
    )
