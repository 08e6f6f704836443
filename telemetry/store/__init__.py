"""The telemetry store: PostgreSQL (TimescaleDB or native partitions) for samples, latest vehicle
state, presence and events, and the versioned migrations that create its schema."""

from telemetry.store._errors import (
    MigrationError,
    RegistrationConflict,
    StorageMismatch,
    StorageNotAvailable,
    StoreUnavailable,
)
from telemetry.store._migrate import MigrationReport, migrate
from telemetry.store._zones import ZoneRows
from telemetry.store._store import (
    VEHICLE_JSON_COLUMNS,
    Device,
    Event,
    MaintenanceReport,
    TelemetryStore,
    VehicleRegistration,
    WriteResult,
)

__all__ = [
    "VEHICLE_JSON_COLUMNS",
    "Device",
    "Event",
    "MaintenanceReport",
    "MigrationError",
    "MigrationReport",
    "RegistrationConflict",
    "StorageMismatch",
    "StorageNotAvailable",
    "StoreUnavailable",
    "TelemetryStore",
    "VehicleRegistration",
    "WriteResult",
    "ZoneRows",
    "migrate",
]
