"""The commands' error types: one per way a caller's request can fail (the HTTP API maps each to
its status code)."""

from __future__ import annotations


class CommandError(Exception):
    """Base of the errors a caller can get back from the command service."""


class UnknownVehicle(CommandError):
    """No vehicle in the registry has that vehicle_ref / device_id / id (HTTP 404)."""


class CommandNotFound(CommandError):
    """No command with that id (HTTP 404)."""


class IdempotencyConflict(CommandError):
    """The idempotency key was used before by the same caller for a different request (HTTP 409,
    or 422 as Stripe does): the first request's command stands."""


class NotCancellable(CommandError):
    """The command was delivered already or is finished (HTTP 409)."""


class InvalidDeadline(CommandError):
    """The deadline is in the past or further away than the service allows (HTTP 422)."""


class NotHeld(CommandError):
    """Another platform holds the vehicle's command authority during a fleet migration (HTTP
    409): fleetgate commands it only once it is cut over (docs/migration.md)."""

    def __init__(self, vehicle_ref: str, holder: str) -> None:
        super().__init__(
            f"vehicle {vehicle_ref!r} is commanded by the {holder} platform until it is cut "
            "over to fleetgate (fleetgate migrate cutover); send the command there"
        )
        self.vehicle_ref = vehicle_ref
        self.holder = holder
