"""The store's error types: one per way it can fail that a caller handles differently."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The database cannot be reached or cannot take writes right now; try again later.

    Raised for connection-level trouble (server gone, refused or reset connections, pool timeout,
    shutdown, read-only or recovering server). Errors about the data itself are not this: a
    write raises DataRefused for them.
    """


class DataRefused(Exception):
    """The database refused the data of a write itself (a value a column cannot hold, a row a
    constraint rejects): the same write would fail the same way again, so it is not retried.
    The psycopg error is the cause."""


class MigrationError(Exception):
    """The schema cannot be created or upgraded as asked (the message says why and what to do)."""


class StorageMismatch(MigrationError):
    """The database was migrated with one storage kind and another one was asked for."""


class StorageNotAvailable(MigrationError):
    """storage="timescaledb" was asked for, but the server cannot load the extension."""


class RegistrationConflict(Exception):
    """A registration contradicts the registry (a device already fitted to another vehicle)."""
