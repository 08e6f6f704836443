"""The registry as the command service sees it: a vehicle by vehicle_ref, device id or id, from a
copy of the whole registry held in memory, so that a submission costs no database round trip for
its vehicle. Every check_s the registry's version (migration 0064, one row) is read in the
background, and the whole copy only when it moved: a TCU swap is seen within check_s, and a fleet
of a million vehicles is not read again while nothing changes. A vehicle registered since the last
read is looked up on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from commands.errors import UnknownVehicle
from gateway.commands.store import CommandStore, VehicleInfo

log = logging.getLogger(__name__)

_CHECK_S = 5.0  # a TCU swap (new device_id) is seen within this

Key = tuple[str, object]


def _keys(info: VehicleInfo) -> tuple[Key, Key, Key]:
    return ("ref", info.vehicle_ref), ("device", info.device_id), ("id", info.vehicle_id)


class VehicleDirectory:
    def __init__(self, store: CommandStore, *, check_s: float = _CHECK_S) -> None:
        self._store = store
        self._check_s = check_s
        self._by_key: dict[Key, VehicleInfo] = {}
        self._version: int | None = None  # the registry's version the copy was read at
        self._checked_at = 0.0  # monotonic time of the last version check
        self._reading: asyncio.Task | None = None

    async def resolve(
        self,
        *,
        vehicle_ref: str | None = None,
        device_id: str | None = None,
        vehicle_id: int | None = None,
    ) -> VehicleInfo:
        """The vehicle of the first key given (UnknownVehicle if the registry has none)."""
        key: Key = (
            ("ref", vehicle_ref)
            if vehicle_ref is not None
            else ("device", device_id)
            if device_id is not None
            else ("id", vehicle_id)
        )
        await self._keep_fresh()
        info = self._by_key.get(key)
        if info is not None:
            return info
        info = await self._store.vehicle(
            vehicle_ref=vehicle_ref, device_id=device_id, vehicle_id=vehicle_id
        )
        if info is None:
            raise UnknownVehicle(f"no vehicle with {key[0]} {key[1]!r} in the registry")
        self._by_key.update((k, info) for k in _keys(info))
        return info

    async def close(self) -> None:
        """Stop a read under way (the service is stopping)."""
        reading = self._reading
        if reading is not None:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading

    async def _keep_fresh(self) -> None:
        """The first call reads the registry; later, once check_s has passed, its version is
        checked in the background while the copy in hand still answers, and the copy read
        again if the version moved (a failed check is tried again at the next call)."""
        if self._version is None:
            self._replace(*await self._store.vehicles())
        elif time.monotonic() - self._checked_at >= self._check_s and self._reading is None:
            self._checked_at = time.monotonic()
            self._reading = asyncio.create_task(self._check(), name="commands-registry")

    async def _check(self) -> None:
        try:
            if await self._store.registry_version() != self._version:
                self._replace(*await self._store.vehicles())
        except Exception as exc:  # the copy in hand still serves; the next call tries again
            self._checked_at = 0.0
            log.warning("commands_registry_read_failed", extra={"error": str(exc)[:300]})
        finally:
            self._reading = None

    def _replace(self, version: int, vehicles: list[VehicleInfo]) -> None:
        # Rebuilt, not updated: a swapped TCU's old device id must stop resolving.
        self._by_key = {k: v for v in vehicles for k in _keys(v)}
        self._version = version
        self._checked_at = time.monotonic()
