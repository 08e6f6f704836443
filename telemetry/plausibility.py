"""GPS plausibility: flag fixes that imply a speed the vehicle cannot reach.

A flagged fix is kept and marked (FLAG_IMPLAUSIBLE_JUMP), never dropped, and is not used as the
reference for the next fix, so that one glitch flags one fix, not the good fix after it too.
"""

from __future__ import annotations

import numpy as np

from telemetry.batch import FLAG_IMPLAUSIBLE_JUMP, TelemetryBatch
from telemetry.earth import haversine_m


class PlausibilityFilter:
    """Keeps the last plausible fix of every vehicle and flags implausible jumps in batches.

    The implied speed between two fixes is (distance - tolerance_m) / max(|dt|, min_dt_s): the
    tolerance absorbs GPS noise and the floor on dt keeps two fixes a few ms apart from implying
    absurd speeds. max_speed_kmh gives each vehicle's limit by vehicles.id (set_limits).
    """

    def __init__(
        self,
        *,
        tolerance_m: float = 50.0,
        min_dt_s: float = 1.0,
        default_max_speed_kmh: float = 300.0,
    ) -> None:
        self.tolerance_m = tolerance_m
        self.min_dt_ms = min_dt_s * 1000.0
        self.default_max_mps = default_max_speed_kmh / 3.6
        self._max_mps = np.empty(0, dtype=np.float64)
        self._t = np.empty(0, dtype=np.int64)
        self._lat = np.empty(0, dtype=np.float64)
        self._lon = np.empty(0, dtype=np.float64)

    def _grow(self, size: int) -> None:
        if size <= len(self._t):
            return
        size = max(size, 2 * len(self._t), 1024)
        extra = size - len(self._t)
        self._max_mps = np.concatenate([self._max_mps, np.full(extra, self.default_max_mps)])
        self._t = np.concatenate([self._t, np.full(extra, -1, dtype=np.int64)])
        self._lat = np.concatenate([self._lat, np.full(extra, np.nan)])
        self._lon = np.concatenate([self._lon, np.full(extra, np.nan)])

    def set_limits(self, vehicles: np.ndarray, max_speed_kmh: np.ndarray) -> None:
        vehicles = np.asarray(vehicles, dtype=np.int64)
        if len(vehicles):
            self._grow(int(vehicles.max()) + 1)
            self._max_mps[vehicles] = np.asarray(max_speed_kmh, dtype=np.float64) / 3.6

    def restore(
        self, vehicles: np.ndarray, time_ms: np.ndarray, lat: np.ndarray, lon: np.ndarray
    ) -> None:
        """Resume from persisted last fixes (vehicle_state) after a restart."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        if len(vehicles):
            self._grow(int(vehicles.max()) + 1)
            self._t[vehicles], self._lat[vehicles], self._lon[vehicles] = time_ms, lat, lon

    def last_fix(self, vehicle: int) -> tuple[int, float, float] | None:
        if vehicle >= len(self._t) or self._t[vehicle] < 0:
            return None
        return int(self._t[vehicle]), float(self._lat[vehicle]), float(self._lon[vehicle])

    def apply(self, batch: TelemetryBatch) -> int:
        """Set FLAG_IMPLAUSIBLE_JUMP on implausible fixes of the batch; returns how many."""
        has_fix = ~np.isnan(batch.lat)
        rows = np.flatnonzero(has_fix)
        if len(rows) == 0:
            return 0
        self._grow(int(batch.vehicle.max()) + 1)
        rows = rows[np.lexsort((batch.time_ms[rows], batch.vehicle[rows]))]
        veh = batch.vehicle[rows].astype(np.int64)
        t, lat, lon = batch.time_ms[rows], batch.lat[rows], batch.lon[rows]
        first = np.ones(len(rows), dtype=bool)
        first[1:] = veh[1:] != veh[:-1]

        # Reference of each fix: the previous fix of its vehicle in the batch, or the stored one.
        ref_t, ref_lat, ref_lon = np.roll(t, 1), np.roll(lat, 1), np.roll(lon, 1)
        ref_t[first], ref_lat[first], ref_lon[first] = (
            self._t[veh[first]],
            self._lat[veh[first]],
            self._lon[veh[first]],
        )
        implausible = self._implausible(veh, t, lat, lon, ref_t, ref_lat, ref_lon)

        if implausible.any():
            # Rare: redo the vehicles with a jump fix by fix, so the fix after a glitch is measured
            # against the last plausible fix rather than against the glitch.
            for v in np.unique(veh[implausible]).tolist():
                idx = np.flatnonzero(veh == v)
                rt, rlat, rlon = self._t[v], self._lat[v], self._lon[v]
                for k in idx.tolist():
                    bad = self._implausible(
                        veh[k : k + 1],
                        t[k : k + 1],
                        lat[k : k + 1],
                        lon[k : k + 1],
                        np.array([rt]),
                        np.array([rlat]),
                        np.array([rlon]),
                    )[0]
                    implausible[k] = bad
                    if not bad:
                        rt, rlat, rlon = t[k], lat[k], lon[k]

        batch.flags[rows[implausible]] |= FLAG_IMPLAUSIBLE_JUMP

        # New reference per vehicle: its newest plausible fix, if newer than the stored one.
        ok = ~implausible
        last = np.ones(int(ok.sum()), dtype=bool)
        v_ok = veh[ok]
        last[:-1] = v_ok[1:] != v_ok[:-1]
        v_last, t_last = v_ok[last], t[ok][last]
        newer = t_last > self._t[v_last]
        v_new = v_last[newer]
        self._t[v_new] = t_last[newer]
        self._lat[v_new] = lat[ok][last][newer]
        self._lon[v_new] = lon[ok][last][newer]
        return int(implausible.sum())

    def _implausible(self, veh, t, lat, lon, ref_t, ref_lat, ref_lon) -> np.ndarray:
        known = ref_t >= 0
        dist = haversine_m(lat, lon, np.where(known, ref_lat, lat), np.where(known, ref_lon, lon))
        dt_s = np.maximum(np.abs(t - ref_t), self.min_dt_ms) / 1000.0
        speed = np.maximum(dist - self.tolerance_m, 0.0) / dt_s
        return known & (speed > self._max_mps[veh])
