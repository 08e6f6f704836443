"""The registry as the command service sees it: a vehicle by vehicle_ref, device id or id, from a
copy of the whole registry held in memory (one query, read again every half minute), so that a
submission costs no database round trip for its vehicle; a vehicle registered since is looked up
on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from commands.errors import UnknownVehicle
from gateway.commands.store import CommandStore, VehicleInfo

log = logging.getLogger(__name__)

_FRESH_S = 30.0  # a TCU swap (new device_id) is seen within half a minute

Key = tuple[str, object]


def _keys(info: VehicleInfo) -> tuple[Key, Key, Key]:
    return ("ref", info.vehicle_ref), ("device", info.device_id), ("id", info.vehicle_id)


class VehicleDirectory:
    def __init__(self, store: CommandStore, *, fresh_s: float = _FRESH_S) -> None:
        self._store = store
        self._fresh_s = fresh_s
        self._by_key: dict[Key, VehicleInfo] = {}
        self._loaded_at: float | None = None  # monotonic time of the last full read
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
        """The first call reads the registry; later, a copy older than fresh_s is read again
        in the background while this one still answers (a failed read is tried again at the
        next call)."""
        if self._loaded_at is None:
            self._replace(await self._store.vehicles())
        elif time.monotonic() - self._loaded_at >= self._fresh_s and self._reading is None:
            self._reading = asyncio.create_task(self._read_again(), name="commands-registry")

    async def _read_again(self) -> None:
        try:
            self._replace(await self._store.vehicles())
        except Exception as exc:  # the copy in hand still serves; the next call tries again
            log.warning("commands_registry_read_failed", extra={"error": str(exc)[:300]})
        finally:
            self._reading = None

    def _replace(self, vehicles: list[VehicleInfo]) -> None:
        # Rebuilt, not updated: a swapped TCU's old device id must stop resolving.
        self._by_key = {k: v for v in vehicles for k in _keys(v)}
        self._loaded_at = time.monotonic()
