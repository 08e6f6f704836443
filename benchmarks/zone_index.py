"""Geofence benchmark: fleetgate's ZoneIndex.locate and shapely 2 doing the same work, in one run.

A deterministic synthetic city (one operating area with holes, noisy blobs of 10-300 vertices,
some with holes, MultiPolygons, station circles) and points; prints one JSON object.
Run: .venv/bin/python -m benchmarks.zone_index [--points 1000000] [--zones 1000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import shapely

from benchmarks._runner import bench_parser, best_of, loadavg, machine, run_benchmark
from geofence import Membership, Rule, Zone, ZoneKind, ZoneSet
from geofence._geo import M_PER_DEG, circle_d2, circle_frame

CENTRE = (13.40, 52.52)  # lon, lat (Berlin-sized city)


# ------------------------------------------------------------------------------ the city ----


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    radius_m: float,
    vertices: int,
    roughness: float = 0.25,
) -> np.ndarray:
    """A closed, star-shaped (hence simple) noisy ring around (cx, cy), counter-clockwise."""
    kx = M_PER_DEG * math.cos(math.radians(cy))
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    angles = np.unique(angles)
    r = np.ones_like(angles)
    for k in range(1, 6):  # a few smooth lobes, like districts and parks
        r += roughness / k * rng.uniform(-1, 1) * np.sin(k * angles + rng.uniform(0, 2 * math.pi))
    r *= 1 + roughness / 3 * rng.uniform(-1, 1, len(angles))  # vertex noise
    r = np.maximum(r, 0.3) * radius_m
    ring = np.column_stack([cx + r * np.cos(angles) / kx, cy + r * np.sin(angles) / M_PER_DEG])
    return np.vstack([ring, ring[:1]])


def _rules_for(kind: ZoneKind, rng: np.random.Generator) -> list[Rule]:
    if kind == ZoneKind.SLOW:
        return [
            Rule(
                ride_start_allowed=True,
                ride_end_allowed=True,
                ride_through_allowed=True,
                maximum_speed_kph=int(rng.choice([6, 10, 15, 20])),
            )
        ]
    if kind == ZoneKind.NO_RIDE:
        return [Rule(ride_start_allowed=False, ride_end_allowed=False, ride_through_allowed=False)]
    if kind == ZoneKind.NO_PARKING:
        return [
            Rule(
                vehicle_type_ids=("ebike",),
                ride_start_allowed=True,
                ride_end_allowed=False,
                ride_through_allowed=True,
            )
        ]
    if kind == ZoneKind.STATION:
        return [
            Rule(
                ride_start_allowed=True,
                ride_end_allowed=True,
                ride_through_allowed=True,
                station_parking=True,
            )
        ]
    return [Rule(ride_start_allowed=True, ride_end_allowed=True, ride_through_allowed=True)]


def city_zones(n_zones: int, seed: int = 7) -> list[Zone]:
    """One operating area (300 vertices, two holes) plus n_zones - 1 zones over a ~30 km city."""
    rng = np.random.default_rng(seed)
    lon0, lat0 = CENTRE
    kx = M_PER_DEG * math.cos(math.radians(lat0))
    zones = []
    shell = _blob(rng, lon0, lat0, 13_000, 300, roughness=0.12)
    holes = [
        _blob(rng, lon0 + dx / kx, lat0 + dy / M_PER_DEG, 1_200, 40)
        for dx, dy in ((-5_000, 3_000), (4_000, -4_500))
    ]  # an airport, a lake
    zones.append(
        Zone(
            id="operating-area",
            name="City",
            kind=ZoneKind.OPERATING_AREA,
            geometry={
                "type": "Polygon",
                "coordinates": [shell.tolist(), *[h.tolist() for h in holes]],
            },
            rules=[Rule(ride_start_allowed=True, ride_end_allowed=True, ride_through_allowed=True)],
            priority=1000,
        )
    )
    kinds = [ZoneKind.SLOW, ZoneKind.NO_PARKING, ZoneKind.NO_RIDE, ZoneKind.OTHER]
    for i in range(n_zones - 1):
        dist = min(abs(rng.normal(0, 6_000)), 13_000)
        ang = rng.uniform(0, 2 * math.pi)
        cx, cy = lon0 + dist * math.cos(ang) / kx, lat0 + dist * math.sin(ang) / M_PER_DEG
        shape = rng.choice(["polygon", "multi", "circle"], p=[0.72, 0.10, 0.18])
        zid = f"z{i:04d}"
        if shape == "circle":
            geometry = {
                "type": "Circle",
                "coordinates": [cx, cy],
                "radius_m": float(rng.uniform(20, 300)),
            }
            kind = ZoneKind.STATION
        else:
            kind = kinds[int(rng.integers(len(kinds)))]
            radius = float(np.clip(rng.lognormal(math.log(500), 0.7), 80, 2_500))
            n_v = int(rng.integers(100, 301) if rng.random() < 0.3 else rng.integers(10, 100))
            if shape == "polygon":
                rings = [_blob(rng, cx, cy, radius, n_v)]
                if rng.random() < 0.15 and n_v >= 20:
                    rings.append(_blob(rng, cx, cy, radius * 0.2, max(8, n_v // 4), 0.1))
                geometry = {"type": "Polygon", "coordinates": [r.tolist() for r in rings]}
            else:
                parts = []
                for k in range(int(rng.integers(2, 4))):
                    ox = (k * 2.6 * radius) / kx
                    parts.append([_blob(rng, cx + ox, cy, radius, max(10, n_v // 2)).tolist()])
                geometry = {"type": "MultiPolygon", "coordinates": parts}
        zones.append(
            Zone(
                id=zid,
                name=f"zone {i}",
                kind=kind,
                geometry=geometry,
                rules=_rules_for(kind, rng),
                priority=i,
            )
        )
    return zones


def city_points(n: int, zones: list[Zone], seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Vehicle positions: dense downtown, spread suburbs, clusters at zones (near their edges)."""
    rng = np.random.default_rng(seed)
    lon0, lat0 = CENTRE
    kx = M_PER_DEG * math.cos(math.radians(lat0))
    n_centre, n_uniform = int(n * 0.6), int(n * 0.25)
    n_zone = n - n_centre - n_uniform
    x = [rng.normal(0, 5_000, n_centre), rng.uniform(-16_000, 16_000, n_uniform)]
    y = [rng.normal(0, 5_000, n_centre), rng.uniform(-16_000, 16_000, n_uniform)]
    lon = [lon0 + x[0] / kx, lon0 + x[1] / kx]
    lat = [lat0 + y[0] / M_PER_DEG, lat0 + y[1] / M_PER_DEG]
    centroids = np.array([z.shape.centroid.coords[0] for z in zones[1:]])
    pick = rng.integers(len(centroids), size=n_zone)
    lon.append(centroids[pick, 0] + rng.normal(0, 400, n_zone) / kx)
    lat.append(centroids[pick, 1] + rng.normal(0, 400, n_zone) / M_PER_DEG)
    return np.concatenate(lat), np.concatenate(lon)


# ------------------------------------------------------------------------- the baselines ----


def _circle_pairs(zones: list[Zone], lat, lon, order, lon_sorted) -> tuple[list, list]:
    """Circle zones by their defining distance formula (shapely has no circle), bbox-prefiltered."""
    pts, zs = [], []
    for z, zone in enumerate(zones):
        if not zone.is_circle:
            continue
        (clon, clat), r = zone.geometry.coordinates, zone.geometry.radius_m
        kx, ky = circle_frame(clon, clat)
        lo, hi = np.searchsorted(lon_sorted, [clon - 1.001 * r / kx, clon + 1.001 * r / kx])
        cand = order[lo:hi]
        inside = circle_d2(lon[cand], lat[cand], clon, clat, kx, ky) < r * r
        pts.append(cand[inside])
        zs.append(np.full(int(inside.sum()), z))
    return pts, zs


def shapely_strtree(zones: list[Zone], polys: list, tree: shapely.STRtree, lat, lon) -> np.ndarray:
    """STRtree(polygons).query(points, predicate='within') (+ circles by formula)."""
    poly_ids = np.array([i for i, z in enumerate(zones) if not z.is_circle])
    hit = tree.query(shapely.points(lon, lat), predicate="within")
    order = np.argsort(lon, kind="stable")
    pts, zs = _circle_pairs(zones, lat, lon, order, lon[order])
    return np.column_stack(
        [np.concatenate([hit[0], *pts]), np.concatenate([poly_ids[hit[1]], *zs])]
    )


def shapely_contains_xy(zones: list[Zone], polys: list, lat, lon) -> np.ndarray:
    """Per zone: bbox candidates from points sorted by lon, then contains_xy (+ circles)."""
    order = np.argsort(lon, kind="stable")
    lon_sorted = lon[order]
    pts, zs = _circle_pairs(zones, lat, lon, order, lon_sorted)
    for z, zone in enumerate(zones):
        if zone.is_circle:
            continue
        minx, miny, maxx, maxy = polys[z].bounds
        lo, hi = np.searchsorted(lon_sorted, [minx, maxx], side="left")
        cand = order[lo:hi]
        cand = cand[(lat[cand] >= miny) & (lat[cand] <= maxy)]
        inside = shapely.contains_xy(polys[z], lon[cand], lat[cand])
        pts.append(cand[inside])
        zs.append(np.full(int(inside.sum()), z))
    return np.column_stack([np.concatenate(pts), np.concatenate(zs)])


def _canonical(pairs: np.ndarray) -> np.ndarray:
    pairs = pairs.astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def bench(args: argparse.Namespace) -> dict:
    load_before = loadavg()
    zone_list = city_zones(args.zones, args.seed)
    zs = ZoneSet(zone_list, version=1, cells=args.cells or None)
    lat, lon = city_points(args.points, list(zs.zones), args.seed + 4)

    t0 = time.perf_counter()
    index = zs.index
    build_s = time.perf_counter() - t0
    index.locate(lat[:1000], lon[:1000])  # warm-up

    ours_s, membership = best_of(lambda: index.locate(lat, lon), args.repeat)
    assert isinstance(membership, Membership)
    t0 = time.perf_counter()
    rules = zs.resolve(membership, "ebike")
    resolve_s = time.perf_counter() - t0
    ours = membership.pairs()

    polys = [z.shape for z in zs.zones]
    tree_polys = [p for z, p in zip(zs.zones, polys) if not z.is_circle]
    t0 = time.perf_counter()
    tree = shapely.STRtree(tree_polys)
    shapely.prepare(tree_polys)
    shapely_build_s = time.perf_counter() - t0

    baselines = {}
    answers = {}
    zl = list(zs.zones)
    for name, fn in (
        ("strtree_query_within", lambda: shapely_strtree(zl, polys, tree, lat, lon)),
        ("bbox_then_contains_xy", lambda: shapely_contains_xy(zl, polys, lat, lon)),
    ):
        secs, pairs = best_of(fn, args.shapely_repeat)
        baselines[name] = round(secs, 4)
        answers[name] = bool(np.array_equal(_canonical(pairs), ours))
    best = min(baselines, key=baselines.get)
    return {
        "points": args.points,
        "zones": len(zs),
        "zone_mix": {
            "polygons": sum(z.geometry.type == "Polygon" for z in zs.zones),
            "multipolygons": sum(z.geometry.type == "MultiPolygon" for z in zs.zones),
            "circles": sum(z.is_circle for z in zs.zones),
            "vertices_max": int(max(len(shapely.get_coordinates(p)) for p in tree_polys)),
        },
        "pairs": len(ours),
        "index": index.stats,
        "build_s": round(build_s, 4),
        "fleetgate_locate_s": round(ours_s, 4),
        "fleetgate_rechecked_pairs": membership.rechecked,
        "fleetgate_resolve_s": round(resolve_s, 4),
        "shapely_build_s": round(shapely_build_s, 4),
        "shapely_s": baselines,
        "shapely_best": best,
        "ratio": round(baselines[best] / ours_s, 2),
        "answers_equal": all(answers.values()),
        "answers_equal_by_baseline": answers,
        "ebike_points_with_speed_limit": int(np.isfinite(rules.maximum_speed_kph).sum()),
        "machine": machine(
            numpy=np.__version__,
            shapely=shapely.__version__,
            geos=shapely.geos_version_string,
            loadavg_before=load_before,
            loadavg_after=loadavg(),
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--points", type=int, default=1_000_000, help="number of points")
    p.add_argument("--zones", type=int, default=1_000, help="number of zones")
    p.add_argument("--repeat", type=int, default=5, help="fleetgate locate runs (best is reported)")
    p.add_argument("--shapely-repeat", type=int, default=2, help="runs of each shapely baseline")
    p.add_argument("--seed", type=int, default=7, help="seed of the city")
    p.add_argument("--cells", type=int, default=0, help="grid cells (0: automatic)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv)


if __name__ == "__main__":
    main()
