"""The registry as the command service sees it: a vehicle by vehicle_ref, device id or id,
cached briefly so that a burst of commands reads the registry once."""

from __future__ import annotations

import time

from commands.errors import UnknownVehicle
from gateway.commands.store import CommandStore, VehicleInfo

_FRESH_S = 30.0  # a TCU swap (new device_id) is seen within half a minute


class VehicleDirectory:
    def __init__(self, store: CommandStore) -> None:
        self._store = store
        self._cache: dict[tuple[str, object], tuple[float, VehicleInfo]] = {}

    async def resolve(
        self,
        *,
        vehicle_ref: str | None = None,
        device_id: str | None = None,
        vehicle_id: int | None = None,
    ) -> VehicleInfo:
        """The vehicle of the first key given (UnknownVehicle if the registry has none)."""
        key = (
            ("ref", vehicle_ref)
            if vehicle_ref is not None
            else ("device", device_id)
            if device_id is not None
            else ("id", vehicle_id)
        )
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < _FRESH_S:
            return hit[1]
        info = await self._store.vehicle(
            vehicle_ref=vehicle_ref, device_id=device_id, vehicle_id=vehicle_id
        )
        if info is None:
            raise UnknownVehicle(f"no vehicle with {key[0]} {key[1]!r} in the registry")
        self._cache[key] = (time.monotonic(), info)
        return info
