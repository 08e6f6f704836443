"""Remote commands (lock, unlock, immobilise, mobilise, locate, set_speed_limit, set_config):
exactly once, in order per vehicle, safe, auditable.

The core is sans-IO: `model` (the contract), `machine` (states and transitions), `interlocks`
(what is safe to send, from the vehicle's latest state) and `scheduler` (what happens next for a
vehicle). `store` (PostgreSQL), `mqtt` (the downlink connection) and `service` (CommandService,
the shell the gateway and the HTTP API use) do the IO. docs/commands.md explains the guarantees.
"""

from commands.errors import (
    CommandError,
    CommandNotFound,
    IdempotencyConflict,
    InvalidDeadline,
    NotCancellable,
    UnknownVehicle,
)
from commands.interlocks import Action, InterlockPolicy, Motion, Verdict, judge, motion
from commands.machine import TERMINAL, TRANSITIONS, IllegalTransition
from commands.model import (
    Command,
    CommandPage,
    CommandRequest,
    CommandState,
    CommandType,
    DeviceResult,
    HistoryEntry,
    VehicleSnapshot,
)
from commands.reads import CommandReads
from commands.scheduler import DeliveryPolicy, Plan, plan_vehicle
from commands.service import CommandConfig, CommandService
from commands.store import CommandConflict, CommandStore

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Action",
    "Command",
    "CommandConfig",
    "CommandConflict",
    "CommandError",
    "CommandNotFound",
    "CommandPage",
    "CommandRequest",
    "CommandService",
    "CommandReads",
    "CommandState",
    "CommandStore",
    "CommandType",
    "DeliveryPolicy",
    "DeviceResult",
    "HistoryEntry",
    "IdempotencyConflict",
    "IllegalTransition",
    "InterlockPolicy",
    "InvalidDeadline",
    "Motion",
    "NotCancellable",
    "Plan",
    "UnknownVehicle",
    "VehicleSnapshot",
    "Verdict",
    "judge",
    "motion",
    "plan_vehicle",
]
