"""Remote commands (lock, unlock, immobilise, mobilise, locate, set_speed_limit, set_config):
exactly once, in order per vehicle, safe, auditable.

This package is the sans-IO core: `model` (the contract), `machine` (states and transitions),
`interlocks` (what is safe to send, from the vehicle's latest state), `scheduler` (what happens
next for a vehicle) and `ports` (what the HTTP API needs from whoever runs the commands). The IO
shell that implements the ports (service loops, store, MQTT link) is gateway/commands; nothing
here imports it. docs/commands.md explains the guarantees.
"""

from commands.errors import (
    CommandError,
    CommandNotFound,
    IdempotencyConflict,
    InvalidDeadline,
    NotCancellable,
    NotHeld,
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
from commands.ports import CommandDispatcher, CommandReader
from commands.scheduler import DeliveryPolicy, Plan, plan_vehicle

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "Action",
    "Command",
    "CommandDispatcher",
    "CommandError",
    "CommandNotFound",
    "CommandPage",
    "CommandReader",
    "CommandRequest",
    "CommandState",
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
    "NotHeld",
    "Plan",
    "UnknownVehicle",
    "VehicleSnapshot",
    "Verdict",
    "judge",
    "motion",
    "plan_vehicle",
]
