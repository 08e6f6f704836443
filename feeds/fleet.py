"""The fleet's latest state as columns, and the two privacy rules of the public feed: only
rentable vehicles are shown, and a vehicle's public id changes after every trip."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# vehicle_overview.status values (migration 0011/0014: the one status rule of the house).
RENTABLE_STATUSES = ("available", "low_battery")


@dataclass(frozen=True)
class FleetState:
    """One row per registered vehicle, as numpy columns of equal length.

    vehicle        fleetgate's internal vehicle id (int64), never published in GBFS
    vehicle_type   vehicle type id (object array of str)
    status         vehicle_overview.status: offline, immobilised, on_trip, low_battery, available
    lat, lon       newest plausible fix (NaN: none yet)
    range_m        battery core's range estimate, m (NaN: unknown)
    soc_pct        state of charge, % (NaN: unknown)
    last_reported  newest sample, seconds since the epoch (NaN: never)
    rotation       what changes with every trip (object array: the API uses the newest lock or
                   unlock command and the odometer); it keys the public vehicle id
    station_id     the station zone the vehicle stands in (object array, None: none)
    reserved       held by a reservation (no reservations yet: all False)
    """

    vehicle: np.ndarray
    vehicle_type: np.ndarray
    status: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    range_m: np.ndarray
    soc_pct: np.ndarray
    last_reported: np.ndarray
    rotation: np.ndarray
    station_id: np.ndarray
    reserved: np.ndarray

    def __len__(self) -> int:
        return len(self.vehicle)

    @classmethod
    def from_rows(cls, rows: Sequence[dict]) -> FleetState:
        """From dict rows with the field names (what the API's query returns)."""

        def column(name: str, dtype, missing) -> np.ndarray:
            values = [r.get(name) for r in rows]
            if dtype is object:
                return np.array(values + [None], dtype=object)[:-1]
            return np.array([missing if v is None else v for v in values], dtype=dtype)

        return cls(
            vehicle=column("vehicle", np.int64, 0),
            vehicle_type=column("vehicle_type", object, None),
            status=column("status", object, None),
            lat=column("lat", np.float64, np.nan),
            lon=column("lon", np.float64, np.nan),
            range_m=column("range_m", np.float64, np.nan),
            soc_pct=column("soc_pct", np.float64, np.nan),
            last_reported=column("last_reported", np.float64, np.nan),
            rotation=column("rotation", object, None),
            station_id=column("station_id", object, None),
            reserved=column("reserved", bool, False),
        )

    def take(self, mask: np.ndarray) -> FleetState:
        return FleetState(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})


def rentable(fleet: FleetState) -> np.ndarray:
    """Who GBFS may show: online, not on a trip, not immobilised (maintenance), not reserved,
    with a known position. Low-battery vehicles are shown, flagged is_disabled."""
    status_ok = np.isin(fleet.status.astype(str), RENTABLE_STATUSES)
    placed = ~np.isnan(fleet.lat) & ~np.isnan(fleet.lon)
    return status_ok & placed & ~fleet.reserved


def public_vehicle_ids(secret: bytes, vehicle: np.ndarray, rotation: np.ndarray) -> list[str]:
    """GBFS vehicle_id: a keyed hash (BLAKE2b, 128 bits) of (vehicle, rotation), rotation being
    anything that changes with every trip. The same vehicle
    keeps its id while it stands, and gets a new, unlinkable one after each trip; without the
    secret nobody can tell two ids apart from two vehicles."""
    key = secret if len(secret) <= 64 else hashlib.sha256(secret).digest()  # BLAKE2b's limit
    return [
        hashlib.blake2b(f"{v}:{r}".encode(), key=key, digest_size=16).hexdigest()
        for v, r in zip(vehicle.tolist(), rotation.tolist())
    ]
