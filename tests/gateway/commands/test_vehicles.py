"""gateway/commands/vehicles.py: submissions resolve their vehicle from a copy of the registry
(one read, again when the registry's version moved, checked every check_s), not with a database
round trip each. The store is a stand-in that counts its reads; test_store.py has the real
version's trigger."""

from __future__ import annotations

import asyncio

import pytest

from commands.errors import UnknownVehicle
from gateway.commands.store import VehicleInfo
from gateway.commands.vehicles import VehicleDirectory
from telemetry.store import StoreUnavailable


class Registry:
    """A stand-in CommandStore: the registry's rows, and how often each read was made."""

    def __init__(self, *vehicles: VehicleInfo) -> None:
        self.rows = list(vehicles)
        self.version = 1
        self.full_reads = 0
        self.single_reads = 0
        self.version_reads = 0
        self.fail_next_read = False

    def change(self, *vehicles: VehicleInfo) -> None:
        """The registry's rows replaced, as a committed change: its version moves."""
        self.rows = list(vehicles)
        self.version += 1

    async def registry_version(self) -> int:
        await asyncio.sleep(0)
        self.version_reads += 1
        self._maybe_fail()
        return self.version

    async def vehicles(self) -> tuple[int, list[VehicleInfo]]:
        await asyncio.sleep(0)
        self.full_reads += 1
        self._maybe_fail()
        return self.version, list(self.rows)

    def _maybe_fail(self) -> None:
        if self.fail_next_read:
            self.fail_next_read = False
            raise StoreUnavailable("database unavailable: connection refused")

    async def vehicle(self, *, vehicle_ref=None, device_id=None, vehicle_id=None):
        self.single_reads += 1
        for v in self.rows:
            if (vehicle_ref, device_id, vehicle_id) in (
                (v.vehicle_ref, None, None),
                (None, v.device_id, None),
                (None, None, v.vehicle_id),
            ):
                return v
        return None


def vehicle(n: int, device: str | None = None) -> VehicleInfo:
    return VehicleInfo(n, f"veh-{n}", device or f"tcu-{n}", "ebike")


async def test_a_burst_of_submissions_reads_the_registry_once():
    registry = Registry(*(vehicle(n) for n in range(1, 101)))
    directory = VehicleDirectory(registry)
    found = [await directory.resolve(device_id=f"tcu-{n}") for n in range(1, 101)]
    found += [await directory.resolve(vehicle_ref="veh-7"), await directory.resolve(vehicle_id=9)]
    assert [v.vehicle_id for v in found] == [*range(1, 101), 7, 9]
    assert (registry.full_reads, registry.single_reads) == (1, 0)


async def test_a_vehicle_registered_after_the_read_is_looked_up_on_its_own():
    registry = Registry(vehicle(1))
    directory = VehicleDirectory(registry)
    await directory.resolve(vehicle_id=1)
    registry.rows.append(vehicle(2))
    assert (await directory.resolve(device_id="tcu-2")).vehicle_id == 2
    assert (await directory.resolve(vehicle_ref="veh-2")).vehicle_id == 2  # known from now on
    with pytest.raises(UnknownVehicle, match="tcu-3"):
        await directory.resolve(device_id="tcu-3")
    assert (registry.full_reads, registry.single_reads) == (1, 2)


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_swapped_tcu_is_seen_once_the_version_moved():
    registry = Registry(vehicle(1, "tcu-old"))
    directory = VehicleDirectory(registry, check_s=0.05)
    assert (await directory.resolve(device_id="tcu-old")).vehicle_id == 1
    registry.change(vehicle(1, "tcu-new"))
    await asyncio.sleep(0.06)
    await directory.resolve(vehicle_id=1)  # answered from the copy; checked in the background
    await settle()
    assert (registry.version_reads, registry.full_reads) == (1, 2)
    assert (await directory.resolve(vehicle_id=1)).device_id == "tcu-new"
    with pytest.raises(UnknownVehicle):
        await directory.resolve(device_id="tcu-old")  # the old id no longer resolves


async def test_an_unchanged_registry_is_checked_but_not_read_again():
    registry = Registry(*(vehicle(n) for n in range(1, 1001)))
    directory = VehicleDirectory(registry, check_s=0.0)
    for n in range(1, 51):
        await directory.resolve(vehicle_id=n)
        await settle()
    assert registry.full_reads == 1, "a thousand vehicles read once"
    assert registry.version_reads >= 40  # one small check per call at check_s=0
    await directory.close()


async def test_a_failed_check_keeps_the_copy_and_is_tried_again():
    registry = Registry(vehicle(1))
    directory = VehicleDirectory(registry, check_s=0.0)
    await directory.resolve(vehicle_id=1)
    registry.change(vehicle(1, "tcu-9"))
    registry.fail_next_read = True
    assert (await directory.resolve(vehicle_id=1)).device_id == "tcu-1"  # the copy in hand
    await settle()
    assert (registry.version_reads, registry.full_reads) == (1, 1)  # the failed check
    await directory.resolve(vehicle_ref="veh-1")
    await settle()
    assert (registry.version_reads, registry.full_reads) == (2, 2)
    assert (await directory.resolve(vehicle_id=1)).device_id == "tcu-9"
    assert registry.single_reads == 0
    await directory.close()
