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
from telemetry.store._store import (
    Device,
    MaintenanceReport,
    TelemetryStore,
    VehicleRegistration,
    WriteResult,
)

__all__ = [
    "Device",
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
    "migrate",
]
