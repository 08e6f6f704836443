"""The vectorised point-in-zone engine: a uniform grid built once per zone set, then whole arrays of
points located with numpy alone (no Python loop per point), exactly as shapely's contains_xy says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

from geofence._geo import M_PER_DEG, circle_d2, circle_frame, circle_r2, segment_distance_m
from geofence.zones import Zone

# Every cell is treated as if it were PAD cells larger on each side. A point's cell comes from one
# rounded multiply; its true position is within ~1e-12 cells of that cell, far inside the padding.
_PAD = 1e-6
# |fl(det) - det| <= ~3.3e-16 * (|l| + |r|) for the orientation determinant det = l - r (Shewchuk's
# ccwerrboundA); 1e-15 leaves a factor of three. Beyond the bound the sign of fl(det) is certain.
_ORIENT_TOL = 1e-15
# ... plus an absolute floor, because that relative bound does not hold once products underflow.
_ORIENT_ABS = 1e-290
# Circles: a cell counts as fully in/out only with this relative slack on r², so that the float
# formula (relative error ~1e-15) can never disagree with the classification.
_CIRCLE_SLACK = 1e-9
_MAX_CELLS = 1 << 20


@dataclass(frozen=True, slots=True, eq=False)
class Membership:
    """Which zones each point is in, as CSR: the zones of point i are zone[ptr[i]:ptr[i + 1]].

    Zone numbers index ZoneSet.zones, which is in precedence order (lower number wins). Within a
    point the zones are in no particular order. `rechecked` counts the (point, zone) pairs that lay
    within rounding distance of an edge and were decided by shapely's exact predicate.
    """

    ptr: np.ndarray  # int64, len(points) + 1
    zone: np.ndarray  # int32, ptr[-1]
    rechecked: int = 0

    def __len__(self) -> int:
        return len(self.ptr) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    @property
    def point(self) -> np.ndarray:
        """The point of every (point, zone) pair, aligned with `zone`."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts)

    def zones_of(self, i: int) -> np.ndarray:
        return self.zone[self.ptr[i] : self.ptr[i + 1]]

    def first(self) -> np.ndarray:
        """Per point, the zone of highest precedence (lowest number), or -1 where there is none."""
        out = np.full(len(self), -1, dtype=np.int32)
        counts = self.counts
        nonempty = np.flatnonzero(counts)
        if len(nonempty):
            out[nonempty] = np.minimum.reduceat(self.zone, self.ptr[:-1][nonempty])
        return out

    def pairs(self) -> np.ndarray:
        """(nnz, 2) array of [point, zone], sorted by point then zone (for comparisons, tests)."""
        p, z = self.point, self.zone.astype(np.int64)
        order = np.lexsort((z, p))
        return np.column_stack([p[order], z[order]])

    def take(self, rows: np.ndarray) -> Membership:
        """The rows selected by an integer index, as a new Membership."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts[rows]
        ptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        _, idx = _expand(self.ptr[rows], counts)
        return Membership(ptr, self.zone[idx], 0)

    @classmethod
    def from_pairs(cls, n: int, point: np.ndarray, zone: np.ndarray) -> Membership:
        point = np.asarray(point, dtype=np.int64)
        order = np.argsort(point, kind="stable")
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(point, minlength=n), out=ptr[1:])
        return cls(ptr, np.asarray(zone, dtype=np.int32)[order], 0)


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten CSR slices [starts[i], starts[i] + counts[i]): owner i and index of each element."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    shift = np.asarray(starts, dtype=np.int64) - (np.cumsum(counts) - counts)
    return owner, np.arange(total, dtype=np.int64) + shift[owner]


class ZoneIndex:
    """A grid over all zones whose cells know the zones that cover them completely and, for the few
    zones whose boundary crosses them, the edges that matter; built once per ZoneSet version.

    Boundary convention: shapely `contains_xy` — a point is in a zone iff it is in the zone's
    interior; a point exactly on an edge or vertex (of the shell or of a hole) is not in it.

    How membership stays exact: for a point in a cell that a zone's boundary crosses, a horizontal
    ray is cast to the first cell of the same row that the boundary does not touch, whose in/out
    status is known; the crossings on the way are counted with a half-open rule on y and the exact
    sign of an orientation determinant. The determinant is computed in float64 with a rigorous
    error bound; a (point, zone) pair whose determinant falls inside that bound (on or within
    ~1e-15 relative of an edge line, vertices and horizontal edges included) is re-decided by
    shapely's exact predicate. Such pairs are rare and handled in one vectorised call per zone.
    Circles are decided by geofence._geo.circle_d2 alone (it defines them).
    """

    def __init__(self, zones: Sequence[Zone], *, cells: int | None = None) -> None:
        started = time.perf_counter()
        self.n_zones = len(zones)
        self._zones_are_circles = np.array([z.is_circle for z in zones], dtype=bool)
        self._shapes = [None if z.is_circle else z.shape for z in zones]
        for shape in self._shapes:
            if shape is not None:
                shapely.prepare(shape)
        self._circle = self._circle_params(zones)
        self._build(cells)
        self.build_seconds = time.perf_counter() - started

    # ------------------------------------------------------------------------------- build ----

    @staticmethod
    def _circle_params(zones: Sequence[Zone]) -> np.ndarray:
        """Rows [lon0, lat0, kx, ky, r²] per zone (NaN for polygons)."""
        params = np.full((len(zones), 5), np.nan)
        for i, z in enumerate(zones):
            if z.is_circle:
                lon0, lat0 = z.geometry.coordinates
                kx, ky = circle_frame(lon0, lat0)
                params[i] = lon0, lat0, kx, ky, circle_r2(z.geometry.radius_m)
        return params

    def _build(self, cells: int | None) -> None:
        circles = np.flatnonzero(self._zones_are_circles)
        polygons = np.flatnonzero(~self._zones_are_circles)
        bounds = np.empty((self.n_zones, 4))
        if len(polygons):
            bounds[polygons] = shapely.bounds([self._shapes[i] for i in polygons])
        c = self._circle[circles]
        half_w = np.sqrt(c[:, 4]) / c[:, 2] * (1 + _CIRCLE_SLACK)
        half_h = np.sqrt(c[:, 4]) / c[:, 3] * (1 + _CIRCLE_SLACK)
        bounds[circles] = np.column_stack(
            [c[:, 0] - half_w, c[:, 1] - half_h, c[:, 0] + half_w, c[:, 1] + half_h]
        )

        ax, ay, bx, by, ezone = self._edges(polygons)
        self._edge_zone_ptr = np.searchsorted(ezone, np.arange(self.n_zones + 1))
        self._edges_xy = (ax, ay, bx, by)
        self._grid(bounds, len(ax), len(circles), cells)

        full_cells, full_zones = [], []
        entries: list[tuple[np.ndarray, int, np.ndarray, bool, np.ndarray, np.ndarray]] = []
        if len(ax):
            pe, pc, pr = self._touching_cells(ax, ay, bx, by)
            order = np.argsort(ezone[pe], kind="stable")
            pe, pc, pr = pe[order], pc[order], pr[order]
            bounds_of = np.searchsorted(ezone[pe], np.arange(self.n_zones + 1))
            for z in polygons:
                sl = slice(bounds_of[z], bounds_of[z + 1])
                self._classify_polygon(
                    int(z), pe[sl], pc[sl], pr[sl], full_cells, full_zones, entries
                )
        for z in circles:
            self._classify_circle(int(z), bounds[z], full_cells, full_zones, entries)
        self._assemble(full_cells, full_zones, entries, ax, ay, bx, by)

    def _edges(self, polygons: np.ndarray):
        if not len(polygons):
            empty = np.empty(0)
            return empty, empty, empty, empty, np.empty(0, dtype=np.int64)
        parts, part_zone = shapely.get_parts([self._shapes[i] for i in polygons], return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
        same = coord_ring[1:] == coord_ring[:-1]
        a, b = coords[:-1][same], coords[1:][same]
        zone = polygons[part_zone[ring_part[coord_ring[:-1][same]]]]
        keep = np.any(a != b, axis=1)  # repeated vertices make zero-length edges: no information
        a, b, zone = a[keep], b[keep], zone[keep]
        return a[:, 0].copy(), a[:, 1].copy(), b[:, 0].copy(), b[:, 1].copy(), zone.astype(np.int64)

    def _grid(self, bounds: np.ndarray, n_edges: int, n_circles: int, cells: int | None) -> None:
        if self.n_zones == 0:
            minx = miny = 0.0
            maxx = maxy = 1.0
        else:
            minx, miny = bounds[:, 0].min(), bounds[:, 1].min()
            maxx, maxy = bounds[:, 2].max(), bounds[:, 3].max()
        mid = math.radians((miny + maxy) / 2)
        width_m = (maxx - minx) * M_PER_DEG * max(math.cos(mid), 0.05)
        height_m = (maxy - miny) * M_PER_DEG
        # ~16 cells per edge keeps the cells a boundary crosses (the slow path) a small minority.
        target = cells or int(np.clip(16 * n_edges + 16 * n_circles, 1024, _MAX_CELLS))
        nx = max(1, round(math.sqrt(target * width_m / height_m)))
        ny = max(1, round(target / nx))
        dx, dy = (maxx - minx) / nx, (maxy - miny) / ny
        # One spare cell on every side: nothing of any zone lies in them, so points that round into
        # or out of the outermost cells cannot change an answer.
        self._gx0, self._gy0 = minx - dx, miny - dy
        self._nx, self._ny = nx + 2, ny + 2
        self._dx, self._dy = dx, dy
        self._inv_dx, self._inv_dy = 1.0 / dx, 1.0 / dy

    def _uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grid coordinates (in cells) exactly as locate() computes them for points."""
        return (x - self._gx0) * self._inv_dx, (y - self._gy0) * self._inv_dy

    def _touching_cells(self, ax, ay, bx, by) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (edge, col, row) whose padded cell an edge may touch (a superset, never less)."""
        u1, v1 = self._uv(ax, ay)
        u2, v2 = self._uv(bx, by)
        flat = np.abs(u2 - u1) >= np.abs(v2 - v1)
        e_f, c_f, r_f = _slab_cells(u1[flat], v1[flat], u2[flat], v2[flat])
        e_s, r_s, c_s = _slab_cells(v1[~flat], u1[~flat], v2[~flat], u2[~flat])
        edge = np.concatenate([np.flatnonzero(flat)[e_f], np.flatnonzero(~flat)[e_s]])
        col = np.clip(np.concatenate([c_f, c_s]), 0, self._nx - 1)
        row = np.clip(np.concatenate([r_f, r_s]), 0, self._ny - 1)
        return edge, col, row

    def _cell_centres(self, col: np.ndarray, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._gx0 + (col + 0.5) * self._dx, self._gy0 + (row + 0.5) * self._dy

    def _classify_polygon(self, z, pe, pc, pr, full_cells, full_zones, entries) -> None:
        c0, c1, r0, r1 = pc.min(), pc.max(), pr.min(), pr.max()
        # The boundary touches only cells in [c0, c1] x [r0, r1]; one more column on the right
        # closes every row's last run with a cell known to be outside.
        w, h = int(c1 - c0 + 2), int(r1 - r0 + 1)
        local = (pr - r0) * w + (pc - c0)
        partial = np.zeros(h * w, dtype=bool)
        partial[local] = True
        inner = ~partial
        col = np.tile(np.arange(w), h)
        # Cells untouched by the boundary come in row runs ("gaps") of one status: ask shapely once
        # per gap, at the centre of its first cell.
        gap_start = inner & ((col == 0) | np.roll(partial, 1))
        gap = np.cumsum(gap_start) - 1
        first = np.flatnonzero(gap_start)
        cx, cy = self._cell_centres(c0 + col[first], r0 + first // w)
        gap_inside = shapely.contains_xy(self._shapes[z], cx, cy)
        inside = np.zeros(h * w, dtype=bool)
        inside[inner] = gap_inside[gap[inner]]

        full = np.flatnonzero(inside)
        full_cells.append((r0 + full // w) * self._nx + c0 + full % w)
        full_zones.append(np.full(len(full), z, dtype=np.int32))

        # For each cell the boundary touches: the first untouched cell to its right in the row
        # (its status is the parity base) and the start of the run of touched cells it is in.
        inner2, cols = inner.reshape(h, w), np.arange(w)
        nxt = np.minimum.accumulate(np.where(inner2, cols, w)[:, ::-1], axis=1)[:, ::-1].ravel()
        prv = np.maximum.accumulate(np.where(inner2, cols, -1), axis=1).ravel()
        # An edge registered in cell c of a run [a, b] is crossed by rays from cells a..c of it.
        e0 = self._edge_zone_ptr[z]
        n_e = self._edge_zone_ptr[z + 1] - e0
        pcol = local % w
        reach = pcol - prv[local]
        owner, _ = _expand(np.zeros(len(local), dtype=np.int64), reach)
        cell_of = local[owner] - (np.arange(len(owner)) - (np.cumsum(reach) - reach)[owner])
        key = np.unique(cell_of * n_e + (pe[owner] - e0))
        cell_of, edge = key // n_e, key % n_e + e0
        cells, start = np.unique(cell_of, return_index=True)
        counts = np.diff(np.append(start, len(cell_of)))
        after = nxt[cells]
        base = inside[(cells // w) * w + after]  # after < w always: the extra column is untouched
        global_cells = (r0 + cells // w) * self._nx + c0 + cells % w
        entries.append((global_cells, z, base, False, counts, edge))

    def _classify_circle(self, z, bbox, full_cells, full_zones, entries) -> None:
        lon0, lat0, kx, ky, r2 = self._circle[z]
        (u_lo, u_hi), (v_lo, v_hi) = self._uv(bbox[[0, 2]], bbox[[1, 3]])
        c0, c1 = math.floor(u_lo - _PAD), math.floor(u_hi + _PAD)
        r0, r1 = math.floor(v_lo - _PAD), math.floor(v_hi + _PAD)
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, self._nx - 1), min(r1, self._ny - 1)
        cols = np.arange(c0, c1 + 1)
        rows = np.arange(r0, r1 + 1)
        # Metres from the centre to each padded cell's sides, then nearest/farthest distance².
        xs_lo = ((self._gx0 + (cols - _PAD) * self._dx) - lon0) * kx
        xs_hi = ((self._gx0 + (cols + 1 + _PAD) * self._dx) - lon0) * kx
        ys_lo = ((self._gy0 + (rows - _PAD) * self._dy) - lat0) * ky
        ys_hi = ((self._gy0 + (rows + 1 + _PAD) * self._dy) - lat0) * ky
        near_x = np.where(xs_lo > 0, xs_lo, np.where(xs_hi < 0, -xs_hi, 0.0))
        near_y = np.where(ys_lo > 0, ys_lo, np.where(ys_hi < 0, -ys_hi, 0.0))
        far_x = np.maximum(np.abs(xs_lo), np.abs(xs_hi))
        far_y = np.maximum(np.abs(ys_lo), np.abs(ys_hi))
        d2_near = near_y[:, None] ** 2 + near_x[None, :] ** 2
        d2_far = far_y[:, None] ** 2 + far_x[None, :] ** 2
        full = d2_far < r2 * (1 - _CIRCLE_SLACK)
        partial = ~full & ~(d2_near > r2 * (1 + _CIRCLE_SLACK))
        rr, cc = np.nonzero(full)
        full_cells.append((rows[rr] * self._nx + cols[cc]).astype(np.int64))
        full_zones.append(np.full(len(rr), z, dtype=np.int32))
        rr, cc = np.nonzero(partial)
        n = len(rr)
        entries.append(
            (
                (rows[rr] * self._nx + cols[cc]).astype(np.int64),
                z,
                np.zeros(n, dtype=bool),
                True,
                np.zeros(n, dtype=np.int64),
                np.empty(0, dtype=np.int64),
            )
        )

    def _assemble(self, full_cells, full_zones, entries, ax, ay, bx, by) -> None:
        n_cells = self._nx * self._ny
        cells = np.concatenate(full_cells) if full_cells else np.empty(0, dtype=np.int64)
        zones = np.concatenate(full_zones) if full_zones else np.empty(0, dtype=np.int32)
        order = np.lexsort((zones, cells))
        self._full_zone = zones[order].astype(np.int32)
        self._full_ptr = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(np.bincount(cells, minlength=n_cells), out=self._full_ptr[1:])

        if entries:
            e_cell = np.concatenate([e[0] for e in entries])
            e_zone = np.concatenate([np.full(len(e[0]), e[1], dtype=np.int32) for e in entries])
            e_base = np.concatenate([e[2] for e in entries])
            e_circle = np.concatenate([np.full(len(e[0]), e[3], dtype=bool) for e in entries])
            e_count = np.concatenate([e[4] for e in entries])
            e_edges = np.concatenate([e[5] for e in entries])
        else:
            e_cell = e_count = e_edges = np.empty(0, dtype=np.int64)
            e_zone = np.empty(0, dtype=np.int32)
            e_base = e_circle = np.empty(0, dtype=bool)
        order = np.lexsort((e_zone, e_cell))
        starts = np.cumsum(e_count) - e_count
        _, idx = _expand(starts[order], e_count[order])
        edges = e_edges[idx]
        self._part_zone = e_zone[order]
        self._part_base = e_base[order]
        self._part_circle = e_circle[order]
        self._part_ptr = np.zeros(n_cells + 1, dtype=np.int64)
        np.cumsum(np.bincount(e_cell, minlength=n_cells), out=self._part_ptr[1:])
        self._part_edge_ptr = np.zeros(len(order) + 1, dtype=np.int64)
        np.cumsum(e_count[order], out=self._part_edge_ptr[1:])
        # Edges oriented upwards (a.y <= b.y), stored per (cell, zone) entry for contiguous reads.
        up = ay[edges] <= by[edges]
        self._ex = np.where(up, ax[edges], bx[edges])
        self._ey = np.where(up, ay[edges], by[edges])
        self._etop = np.where(up, by[edges], ay[edges])
        self._edx = np.where(up, bx[edges], ax[edges]) - self._ex
        self._edy = self._etop - self._ey

    # -------------------------------------------------------------------------------- query ----

    @property
    def stats(self) -> dict[str, float | int]:
        """Size of the index, for logs and the benchmark."""
        return {
            "zones": self.n_zones,
            "grid": f"{self._nx}x{self._ny}",
            "full_entries": len(self._full_zone),
            "partial_entries": len(self._part_zone),
            "partial_edges": len(self._ex),
            "edges": len(self._edges_xy[0]),
            "build_seconds": round(self.build_seconds, 4),
        }

    def locate(self, lat: np.ndarray, lon: np.ndarray) -> Membership:
        """The zones each point is in (geometry only: no time windows, no vehicle types).

        lat, lon: WGS 84 degrees, equal length; NaN (no fix) is in no zone.
        """
        lat = np.ascontiguousarray(lat, dtype=np.float64)
        lon = np.ascontiguousarray(lon, dtype=np.float64)
        if lat.shape != lon.shape or lat.ndim != 1:
            raise ValueError("lat and lon must be 1-d arrays of the same length")
        n = len(lat)
        if not self.n_zones:  # an empty zone set: no point is in any zone
            return Membership(np.zeros(n + 1, dtype=np.int64), np.empty(0, dtype=np.int32), 0)
        u, v = self._uv(lon, lat)
        ok = (u >= 0) & (u < self._nx) & (v >= 0) & (v < self._ny)  # False for NaN
        pid = np.flatnonzero(ok)
        cell = v[pid].astype(np.int64) * self._nx + u[pid].astype(np.int64)

        # Zones covering the whole cell: taken as they are.
        f_start = self._full_ptr[cell]
        f_count = self._full_ptr[cell + 1] - f_start

        # Zones whose boundary crosses the cell: decided per (point, zone) candidate.
        p_start = self._part_ptr[cell]
        p_count = self._part_ptr[cell + 1] - p_start
        has = p_count > 0
        owner, entry = _expand(p_start[has], p_count[has])
        cand_point = pid[has][owner]
        inside, rechecked = self._decide(entry, lat[cand_point], lon[cand_point])
        in_point = cand_point[inside]
        in_zone = self._part_zone[entry[inside]]

        counts = np.zeros(n, dtype=np.int64)
        counts[pid] = f_count
        part_counts = np.bincount(in_point, minlength=n)
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts + part_counts, out=ptr[1:])
        out = np.empty(int(ptr[-1]), dtype=np.int32)

        # Full-cover zones first in each point's slice, then the decided ones.
        total = int(f_count.sum())
        if total:
            src = np.arange(total, dtype=np.int64)
            src += np.repeat(f_start - (np.cumsum(f_count) - f_count), f_count)
            dest = np.repeat(ptr[pid] - f_start, f_count)
            dest += src
            out[dest] = self._full_zone[src]
        if len(in_point):
            first = np.ones(len(in_point), dtype=bool)
            first[1:] = in_point[1:] != in_point[:-1]
            group = np.maximum.accumulate(np.where(first, np.arange(len(in_point)), 0))
            rank = np.arange(len(in_point)) - group
            out[ptr[in_point] + counts[in_point] + rank] = in_zone
        return Membership(ptr, out, rechecked)

    def _decide(
        self, entry: np.ndarray, lat: np.ndarray, lon: np.ndarray
    ) -> tuple[np.ndarray, int]:
        """Inside/outside for candidate (point, zone-entry) pairs of boundary cells."""
        inside = np.zeros(len(entry), dtype=bool)
        circle = self._part_circle[entry]
        if circle.any():
            idx = np.flatnonzero(circle)
            c = self._circle[self._part_zone[entry[idx]]]
            d2 = circle_d2(lon[idx], lat[idx], c[:, 0], c[:, 1], c[:, 2], c[:, 3])
            inside[idx] = d2 < c[:, 4]
        poly = np.flatnonzero(~circle)
        if not len(poly):
            return inside, 0
        ent = entry[poly]
        e_start = self._part_edge_ptr[ent]
        e_count = self._part_edge_ptr[ent + 1] - e_start
        owner, edge = _expand(e_start, e_count)
        px, py = lon[poly][owner], lat[poly][owner]
        ey = self._ey[edge]
        dy = py - ey
        left = self._edx[edge] * dy
        right = self._edy[edge] * (px - self._ex[edge])
        det = left - right
        above = py >= ey
        top = self._etop[edge]
        cross = above & (py < top) & (det > 0)
        bound = _ORIENT_TOL * (np.abs(left) + np.abs(right)) + _ORIENT_ABS
        near = above & (py <= top) & (np.abs(det) <= bound)
        starts = np.cumsum(e_count) - e_count  # every boundary entry has at least one edge
        parity = np.logical_xor.reduceat(cross, starts) ^ self._part_base[ent]
        unsure = np.logical_or.reduceat(near, starts)
        if unsure.any():
            parity = self._recheck(parity, unsure, self._part_zone[ent], lat[poly], lon[poly])
        inside[poly] = parity
        return inside, int(unsure.sum())

    def _recheck(self, parity, unsure, zone, lat, lon) -> np.ndarray:
        """Exact answers from shapely for candidates within rounding distance of an edge line."""
        idx = np.flatnonzero(unsure)
        zones = zone[idx]
        order = np.argsort(zones, kind="stable")
        idx, zones = idx[order], zones[order]
        bounds = np.flatnonzero(np.diff(zones)) + 1
        for group in np.split(idx, bounds):
            shape = self._shapes[int(zone[group[0]])]
            parity[group] = shapely.contains_xy(shape, lon[group], lat[group])
        return parity

    # ------------------------------------------------------------------ geometry for tracking --

    def distance_to_boundary_m(
        self, zone: np.ndarray, lat: np.ndarray, lon: np.ndarray
    ) -> np.ndarray:
        """Metres from point i to the boundary of zone[i] (holes included), unsigned; all three
        arrays aligned. Used by hysteresis for the few fixes that change zones."""
        zone = np.asarray(zone, dtype=np.int64)
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        out = np.empty(len(zone))
        circle = self._zones_are_circles[zone]
        if circle.any():
            c = self._circle[zone[circle]]
            d2 = circle_d2(lon[circle], lat[circle], c[:, 0], c[:, 1], c[:, 2], c[:, 3])
            out[circle] = np.abs(np.sqrt(d2) - np.sqrt(c[:, 4]))
        poly = np.flatnonzero(~circle)
        if len(poly):
            z = zone[poly]
            starts = self._edge_zone_ptr[z]
            counts = self._edge_zone_ptr[z + 1] - starts
            owner, edge = _expand(starts, counts)
            ax, ay, bx, by = (a[edge] for a in self._edges_xy)
            d = segment_distance_m(lon[poly][owner], lat[poly][owner], ax, ay, bx, by)
            out[poly] = np.minimum.reduceat(d, np.cumsum(counts) - counts)
        return out


def _slab_cells(u1, v1, u2, v2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment, major, minor) cells touched by segments with |du| >= |dv|, walked along u.

    For each column the segment spans, its v-range over that (padded) column is interpolated; with
    |dv/du| <= 1 the rounding of that interpolation is far below the padding.
    """
    umin, umax = np.minimum(u1, u2), np.maximum(u1, u2)
    lo = np.floor(umin - _PAD).astype(np.int64)
    hi = np.floor(umax + _PAD).astype(np.int64)
    seg, col = _expand(lo, hi - lo + 1)
    col = col.astype(np.int64)
    du = u2 - u1
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(du != 0, (v2 - v1) / du, 0.0)
    s_lo = np.maximum(col - _PAD, umin[seg])
    s_hi = np.minimum(col + 1 + _PAD, umax[seg])
    va = v1[seg] + (s_lo - u1[seg]) * slope[seg]
    vb = v1[seg] + (s_hi - u1[seg]) * slope[seg]
    r_lo = np.floor(np.minimum(va, vb) - _PAD).astype(np.int64)
    r_hi = np.floor(np.maximum(va, vb) + _PAD).astype(np.int64)
    owner, row = _expand(r_lo, r_hi - r_lo + 1)
    return seg[owner], col[owner], row
