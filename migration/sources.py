"""A source export mapped and checked, whatever the platform it came from (sans-IO): the
registry part mapped at once, the positions chunk by chunk when asked for. The analysis
(migration/analysis.py) and the import shell (migration/importer.py) work on this alone."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from migration.columns import TimeWindow
from migration.records import (
    DEVICE_ALREADY_FITTED,
    UNKNOWN_VEHICLE_TYPE,
    MappedPositions,
    MappedRegistry,
    Problem,
    VehicleRecord,
)

SOURCES = ("traccar", "gbfs", "csv")

# (raw chunk, file name, imported devices, rejected devices, window) -> mapped chunk
ChunkMapper = Callable[
    [Any, str, dict[str, tuple[str, str]], dict[str, str], TimeWindow], MappedPositions
]


@dataclass
class MappedSource:
    """`registry`: the vehicles and zones mapped, rejected devices with their reasons.
    `raw_chunks` yields (chunk, file) of position data as the source holds it, `map_chunk`
    maps one; `devices_by_source_id` leads a position's source device id (Traccar's deviceId,
    the GBFS vehicle_id) to its vehicle. `origin` names the export."""

    source: str
    origin: str
    registry: MappedRegistry
    raw_chunks: Callable[[], Iterable[tuple[Any, str]]] = lambda: ()
    map_chunk: ChunkMapper | None = None
    vehicle_of_source_id: dict[str, VehicleRecord] = field(default_factory=dict)
    # Where the chunks are files that a worker process can read and map on its own:
    # file_mapper(file, devices, rejected, window) -> MappedPositions (picklable), and the files.
    file_mapper: Callable[..., MappedPositions] | None = None
    files: list[str] | None = None

    def reject_fitted_elsewhere(self, fitted: dict[str, str], file: str) -> None:
        """Reject the vehicles whose device the registry has fitted to another vehicle
        (`fitted`: device id -> vehicle_ref): device_already_fitted, their positions too."""
        kept = []
        for record in self.registry.vehicles:
            holder = fitted.get(record.device_id)
            if holder is not None and holder != record.vehicle_ref:
                self.registry.rejected_devices[record.source_id] = DEVICE_ALREADY_FITTED
                self.registry.problems.append(
                    Problem(
                        file,
                        record.source_id,
                        "device_id",
                        DEVICE_ALREADY_FITTED,
                        f"{record.device_id} is fitted to {holder}",
                    )
                )
                self.vehicle_of_source_id.pop(record.source_id, None)
            else:
                kept.append(record)
        self.registry.vehicles = kept

    def reject_unknown_types(self, known: set[str], file: str) -> None:
        """Reject the vehicles whose (mapped) type the store's registry of vehicle types lacks."""
        kept = []
        for record in self.registry.vehicles:
            if record.vehicle_type in known:
                kept.append(record)
                continue
            self.registry.rejected_devices[record.source_id] = UNKNOWN_VEHICLE_TYPE
            self.registry.problems.append(
                Problem(
                    file,
                    record.source_id,
                    "vehicle_type",
                    UNKNOWN_VEHICLE_TYPE,
                    f"{record.vehicle_type!r} is not a vehicle type of this fleetgate",
                )
            )
            self.vehicle_of_source_id.pop(record.source_id, None)
        self.registry.vehicles = kept

    def devices(self) -> dict[str, tuple[str, str]]:
        """Source device id -> (device id, vehicle type) of the vehicles imported."""
        return {
            source_id: (r.device_id, r.vehicle_type)
            for source_id, r in self.vehicle_of_source_id.items()
        }

    def chunks(self, window: TimeWindow) -> Iterator[tuple[str, MappedPositions]]:
        """Each chunk of positions mapped: (file, rows and rejections)."""
        if self.map_chunk is None:
            return
        devices = self.devices()
        for raw, file in self.raw_chunks():
            yield file, self.map_chunk(raw, file, devices, self.registry.rejected_devices, window)
