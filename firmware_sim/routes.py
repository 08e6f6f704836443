"""How the simulated vehicles move: a position in metres around the area's centre, trips along
street-like paths (legs alternating east-west and north-south, some corners with a stop), a
speed profile that accelerates, cruises and brakes for the next corner, and the odometer.
"""

from __future__ import annotations

import numpy as np

from firmware_sim.specs import (
    CAR,
    M_PER_DEG_LAT,
    Area,
    VehicleSpec,
    per_vehicle,
    uniform_by_kind,
)


class Motion:
    """Positions, headings, speeds and trip paths of every vehicle, in arrays by vehicle.

    A trip is planned (plan_trips) as up to max_legs waypoints; move() advances the vehicles on
    trips and says which arrived. Draws come from the model's generator, in a fixed order.
    """

    def __init__(
        self,
        kind: np.ndarray,
        specs: tuple[VehicleSpec, ...],
        area: Area,
        rng: np.random.Generator,
        max_legs: int,
    ) -> None:
        n = len(kind)
        self.kind = kind = kind.astype(np.intp)
        self.specs = specs
        self.max_legs = max_legs
        self._accel = per_vehicle(specs, kind, "accel_mps2")
        self._decel = per_vehicle(specs, kind, "decel_mps2")
        self._turn = per_vehicle(specs, kind, "turn_kmh") / 3.6
        self._v_max = np.array([s.cruise_kmh[1] for s in specs])[kind] / 3.6  # pedelec cap, town

        # Position in metres east/north of the area's centre.
        self._lat0, self._lon0 = area.centre
        self.m_per_deg_lon = M_PER_DEG_LAT * np.cos(np.radians(self._lat0))
        self._half_x, self._half_y = area.half_size_m()
        self.x = (rng.random(n) * 2 - 1) * self._half_x * 0.9
        self.y = (rng.random(n) * 2 - 1) * self._half_y * 0.9
        self.heading = rng.random(n) * 360.0
        self.speed = np.zeros(n)
        is_car = kind == CAR
        self.odometer = np.where(is_car, rng.uniform(5e6, 8e7, n), rng.uniform(2e5, 8e6, n))
        k = max_legs
        self._wp_x = np.zeros((n, k))
        self._wp_y = np.zeros((n, k))
        self._wp_stop = np.zeros((n, k), dtype=bool)
        self._wp_dwell = np.zeros((n, k))
        self._wp_count = np.ones(n, dtype=np.intp)
        self.wp_next = np.zeros(n, dtype=np.intp)  # the waypoint each vehicle heads for
        self._cruise = np.zeros(n)
        self._dwell_left = np.zeros(n)
        self.speed_limit = np.full(n, np.inf)  # m/s, set by the set_speed_limit command

    def place(self, idx: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> None:
        """Vehicles idx stand at (lat, lon) (where another platform last saw them), folded
        into the area like a trip's destination."""
        self.x[idx] = _reflect(np.asarray(lon - self._lon0) * self.m_per_deg_lon, self._half_x)
        self.y[idx] = _reflect(np.asarray(lat - self._lat0) * M_PER_DEG_LAT, self._half_y)

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """True positions (no GPS noise)."""
        return (self._lat0 + self.y / M_PER_DEG_LAT, self._lon0 + self.x / self.m_per_deg_lon)

    def halt(self, idx: np.ndarray) -> None:
        """Vehicles idx stand still (their trip ended)."""
        self.speed[idx] = 0.0
        self._dwell_left[idx] = 0.0

    def plan_trips(self, idx: np.ndarray, rng: np.random.Generator) -> None:
        """A new trip for vehicles idx: a destination, a street-like path to it, stops at some
        corners, and a cruising speed."""
        m = len(idx)
        specs, kind = self.specs, self.kind[idx]
        legs_max = self.max_legs
        # Destination: a random direction and straight-line distance, reflected into the area.
        dist = uniform_by_kind(rng, [s.trip_km for s in specs], kind) * 1000.0
        ang = rng.random(m) * 2 * np.pi
        x0, y0 = self.x[idx], self.y[idx]
        x1 = _reflect(x0 + dist * np.sin(ang), self._half_x)
        y1 = _reflect(y0 + dist * np.cos(ang), self._half_y)
        # A street-like path: a staircase of legs alternating east-west and north-south, each
        # corner nudged so streets are not perfectly axis-aligned.
        legs = rng.integers(2, legs_max + 1, m)
        start_x = rng.random(m) < 0.5
        k = np.arange(legs_max)
        leg_is_x = (k[None, :] % 2 == 0) == start_x[:, None]
        active = k[None, :] < legs[:, None]
        w = rng.random((m, legs_max)) + 0.2
        wx = np.where(leg_is_x & active, w, 0.0)
        wy = np.where(~leg_is_x & active, w, 0.0)
        wx /= np.maximum(wx.sum(1, keepdims=True), 1e-12)
        wy /= np.maximum(wy.sum(1, keepdims=True), 1e-12)
        # A leg along an axis whose share is empty (only one leg of that axis and it got no
        # share) would stall; every axis with legs has a positive share by construction.
        px = x0[:, None] + np.cumsum(wx * (x1 - x0)[:, None], axis=1)
        py = y0[:, None] + np.cumsum(wy * (y1 - y0)[:, None], axis=1)
        corner = active & (k[None, :] < (legs - 1)[:, None])
        jitter = rng.normal(0.0, 25.0, (2, m, legs_max)) * corner
        px = np.clip(px + jitter[0], -self._half_x, self._half_x)
        py = np.clip(py + jitter[1], -self._half_y, self._half_y)
        last = legs - 1
        px[np.arange(m), last] = x1
        py[np.arange(m), last] = y1
        self._wp_x[idx, :legs_max] = px
        self._wp_y[idx, :legs_max] = py
        stop_share = np.array([s.stop_share for s in specs])[kind]
        self._wp_stop[idx, :legs_max] = corner & (rng.random((m, legs_max)) < stop_share[:, None])
        lo = np.array([s.stop_s[0] for s in specs])[kind][:, None]
        hi = np.array([s.stop_s[1] for s in specs])[kind][:, None]
        self._wp_dwell[idx, :legs_max] = lo + (hi - lo) * rng.random((m, legs_max))
        self._wp_count[idx] = legs
        self.wp_next[idx] = 0
        self._cruise[idx] = uniform_by_kind(rng, [s.cruise_kmh for s in specs], kind) / 3.6
        self._dwell_left[idx] = 0.0

    def move(
        self, dt: float, noise: np.ndarray, trip: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Move the vehicles on trips (indices trip) along their legs for dt seconds.

        Returns the metres each vehicle moved, and the vehicles that reached their destination,
        in groups by the leg they reached it on (the caller ends their trips in that order).
        """
        moved = np.zeros(len(self.x))
        arrivals: list[np.ndarray] = []
        if not len(trip):
            return moved, arrivals
        dwell = self._dwell_left[trip]
        self._dwell_left[trip] = np.maximum(dwell - dt, 0.0)
        m = trip[dwell <= 0.0]
        if not len(m):
            return moved, arrivals
        remaining = self._accelerate(m, dt, noise)
        active = np.arange(len(m))
        for _ in range(self._wp_x.shape[1]):
            if not len(active):
                break
            active = self._along_legs(m, active, remaining, moved, arrivals)
        self.odometer += moved
        return moved, arrivals

    def _accelerate(self, m: np.ndarray, dt: float, noise: np.ndarray) -> np.ndarray:
        """New speeds of the moving vehicles m; returns the distance each covers in dt."""
        k = self.wp_next[m]
        d = np.hypot(self._wp_x[m, k] - self.x[m], self._wp_y[m, k] - self.y[m])
        end_of_leg_stop = (k == self._wp_count[m] - 1) | self._wp_stop[m, k]
        v_end = np.where(end_of_leg_stop, 0.0, self._turn[m])
        v = self.speed[m]
        # Brake early enough to reach the corner at its speed; wobble a little around cruise.
        v_cap = np.minimum(
            np.minimum(self._cruise[m] * (1.0 + 0.04 * noise[m]), self._v_max[m]),
            self.speed_limit[m],
        )
        v_target = np.minimum(v_cap, np.sqrt(v_end**2 + 2.0 * self._decel[m] * d))
        v_new = np.clip(v_target, v - self._decel[m] * dt, v + self._accel[m] * dt)
        v_new = np.maximum(v_new, 0.5)  # creep on to a stop line rather than halt short of it
        self.speed[m] = v_new
        return 0.5 * (v + v_new) * dt

    def _along_legs(
        self,
        m: np.ndarray,
        active: np.ndarray,
        remaining: np.ndarray,
        moved: np.ndarray,
        arrivals: list[np.ndarray],
    ) -> np.ndarray:
        """One leg's worth of movement for vehicles m[active]; returns those that reached a
        plain corner and go on along the next leg with the distance they have left."""
        vi = m[active]
        k = self.wp_next[vi]
        dx = self._wp_x[vi, k] - self.x[vi]
        dy = self._wp_y[vi, k] - self.y[vi]
        d = np.hypot(dx, dy)
        turning = d > 1e-9
        self.heading[vi[turning]] = np.degrees(np.arctan2(dx[turning], dy[turning])) % 360.0
        rem = remaining[active]
        reach = rem >= d
        part = ~reach
        if part.any():
            f = rem[part] / d[part]
            vp = vi[part]
            self.x[vp] += dx[part] * f
            self.y[vp] += dy[part] * f
            moved[vp] += rem[part]
        vr, kr = vi[reach], k[reach]
        self.x[vr] = self._wp_x[vr, kr]
        self.y[vr] = self._wp_y[vr, kr]
        moved[vr] += d[reach]
        remaining[active[reach]] -= d[reach]
        arrived = kr == self._wp_count[vr] - 1
        stop = self._wp_stop[vr, kr] & ~arrived
        self.wp_next[vr[~arrived]] += 1
        if stop.any():
            vs = vr[stop]
            self._dwell_left[vs] = self._wp_dwell[vs, kr[stop]]
            self.speed[vs] = 0.0
        if arrived.any():
            arrivals.append(vr[arrived])
        return active[reach][~(arrived | stop)]


def _reflect(v: np.ndarray, half: float) -> np.ndarray:
    """Fold coordinates back into [-half, half] (a trip aimed out of the area turns back in)."""
    span = 2 * half
    u = np.mod(v + half, 2 * span)
    return np.where(u > span, 2 * span - u, u) - half
