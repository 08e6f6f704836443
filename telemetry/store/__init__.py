"""The telemetry store: PostgreSQL (TimescaleDB or native partitions) for samples, latest vehicle
state, presence and events, and the versioned migrations that create its schema."""

from telemetry.store._api_keys import SCOPES, ApiKey, InvalidApiKey
from telemetry.store._authority import (
    FLEETGATE,
    AuthorityConflict,
    BatchVehicle,
    CommandAuthority,
    HeldVehicle,
)
from telemetry.store._credentials import (
    AlreadyProvisioned,
    CredentialInfo,
    DeviceCredentials,
    IssuedSecret,
    UnknownDevice,
)
from telemetry.store._errors import (
    DataRefused,
    MigrationError,
    RegistrationConflict,
    StorageMismatch,
    StorageNotAvailable,
    StoreUnavailable,
)
from telemetry.store._legacy import LegacyObservation, LegacyObservations
from telemetry.store._migrate import MigrationReport, migrate
from telemetry.store._migration_evidence import EVIDENCE_KINDS, MigrationEvidence
from telemetry.store._migration_runs import MigrationRun
from telemetry.store._pool import (
    is_unavailable,
    open_pool,
    pooled_connection,
    pooled_transaction,
)
from telemetry.store._retry import Backoff, retry_while_unavailable
from telemetry.store._shadow import (
    ShadowBatch,
    ShadowBatches,
    ShadowConflict,
    UnknownShadowBatch,
)
from telemetry.store._store import (
    BATTERY_HEALTH_COLUMNS,
    VEHICLE_JSON_COLUMNS,
    AdvancedState,
    Derived,
    Device,
    Event,
    MaintenanceReport,
    QuarantinedMessage,
    TelemetryStore,
    UnknownVehicleType,
    VehicleRegistration,
    WriteResult,
)
from telemetry.store._trips import FIGURE_COLUMNS as TRIP_FIGURE_COLUMNS
from telemetry.store._trips import MeasuredTrip, TripToMeasure
from telemetry.store._webhooks import (
    Subscription,
    UnknownOutboxEvent,
    UnknownSubscription,
    Webhooks,
)
from telemetry.store._zones import ZoneRows

__all__ = [
    "FLEETGATE",
    "AuthorityConflict",
    "BatchVehicle",
    "CommandAuthority",
    "HeldVehicle",
    "TRIP_FIGURE_COLUMNS",
    "MeasuredTrip",
    "TripToMeasure",
    "LegacyObservation",
    "LegacyObservations",
    "ShadowBatch",
    "ShadowBatches",
    "ShadowConflict",
    "UnknownShadowBatch",
    "Subscription",
    "UnknownOutboxEvent",
    "UnknownSubscription",
    "Webhooks",
    "SCOPES",
    "ApiKey",
    "InvalidApiKey",
    "AlreadyProvisioned",
    "CredentialInfo",
    "DeviceCredentials",
    "IssuedSecret",
    "UnknownDevice",
    "BATTERY_HEALTH_COLUMNS",
    "VEHICLE_JSON_COLUMNS",
    "AdvancedState",
    "Backoff",
    "DataRefused",
    "Derived",
    "Device",
    "Event",
    "MaintenanceReport",
    "MigrationError",
    "MigrationReport",
    "EVIDENCE_KINDS",
    "MigrationEvidence",
    "MigrationRun",
    "QuarantinedMessage",
    "RegistrationConflict",
    "StorageMismatch",
    "StorageNotAvailable",
    "StoreUnavailable",
    "TelemetryStore",
    "UnknownVehicleType",
    "VehicleRegistration",
    "WriteResult",
    "ZoneRows",
    "is_unavailable",
    "migrate",
    "open_pool",
    "pooled_connection",
    "pooled_transaction",
    "retry_while_unavailable",
]
