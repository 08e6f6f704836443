"""What the mappers produce: plain records and columns, no IO. A mapper turns a source's objects
into these and a list of Problems; the shell (migration/importer.py) writes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Reasons of the migration itself. Beside them a problem may carry a reason of the gateway's
# decoder (telemetry.decoder.SAMPLE_REASONS: lat_out_of_range, time_in_future, ...) or the
# geofence core's rejection text of a zone (geofence.InvalidZone).
DUPLICATE_DEVICE = "duplicate_device"
DUPLICATE_VEHICLE = "duplicate_vehicle"
DEVICE_ID_INVALID = "device_id_invalid"
UNKNOWN_VEHICLE_TYPE = "unknown_vehicle_type"
DEVICE_ALREADY_FITTED = "device_already_fitted"
UNKNOWN_DEVICE = "unknown_device"
UNSUPPORTED_GEOMETRY = "unsupported_geometry"
TIME_BEYOND_RETENTION = "time_beyond_retention"
INVALID_ZONE = "invalid_zone"  # the count's key; the problem row carries the core's text
MIGRATION_REASONS = (
    DUPLICATE_DEVICE,
    DUPLICATE_VEHICLE,
    DEVICE_ID_INVALID,
    UNKNOWN_VEHICLE_TYPE,
    DEVICE_ALREADY_FITTED,
    UNKNOWN_DEVICE,
    UNSUPPORTED_GEOMETRY,
    TIME_BEYOND_RETENTION,
    INVALID_ZONE,
)


@dataclass(frozen=True, slots=True)
class Problem:
    """One row of the report: where (file, the record's id in its source, the field) and why.
    `reason` is a code (see above); for a zone the geofence core's text is in `detail`."""

    file: str
    record: str
    field: str
    reason: str
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        row = {"file": self.file, "record": self.record, "field": self.field}
        row["reason"] = self.reason
        if self.detail:
            row["detail"] = self.detail
        return row


@dataclass(frozen=True, slots=True)
class VehicleRecord:
    """A vehicle and the device fitted to it, as fleetgate registers it. `source_id` is the
    record's id in its source (Traccar's device id, the GBFS vehicle_id, the CSV line)."""

    vehicle_ref: str
    device_id: str
    vehicle_type: str
    source_id: str


@dataclass
class PositionColumns:
    """Positions of one chunk in columns (the fields of telemetry.batch.TelemetryBatch but
    `vehicle`, which the shell fills from the registry): `device` holds each row's device id
    (an index into `devices`), the rest the sample's values, NaN / -1 where not reported."""

    devices: list[str]  # the device ids the rows point at
    device: np.ndarray  # int32 index into devices
    columns: dict[str, np.ndarray]  # TelemetryBatch column name -> values (no "vehicle")

    def __len__(self) -> int:
        return len(self.device)

    def take(self, index: np.ndarray) -> PositionColumns:
        return PositionColumns(
            self.devices, self.device[index], {k: v[index] for k, v in self.columns.items()}
        )


@dataclass
class MappedPositions:
    """What a mapper makes of one chunk: the importable rows, the rejected counted by reason
    (and the first few listed as problems)."""

    rows: PositionColumns
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class MappedRegistry:
    """The vehicles and zones of a source, the rejected ones as problems. `rejected_devices`
    maps a source device id to the reason its vehicle was rejected (its positions are skipped
    for the same reason)."""

    vehicles: list[VehicleRecord] = field(default_factory=list)
    zones: list[dict[str, Any]] = field(default_factory=list)  # geofence.Zone rows
    rejected_devices: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # entities seen in the source
