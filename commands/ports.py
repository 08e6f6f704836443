"""What the HTTP API needs from whoever runs the commands, as typing protocols: reading them needs
only the database (CommandReader); creating, cancelling and waiting for one needs the process
that dispatches them (CommandDispatcher). gateway/commands implements both; the API imports only
these, never the shell.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from commands.model import (
    Command,
    CommandPage,
    CommandRequest,
    CommandState,
    CommandType,
    HistoryEntry,
)


class CommandReader(Protocol):
    """Commands as stored: one, its history, a filtered page."""

    async def get(self, command_id: uuid.UUID) -> Command:
        """The newest version of a command (CommandNotFound if there is none)."""
        ...

    async def history(self, command_id: uuid.UUID) -> list[HistoryEntry]:
        """Every state change of a command, oldest first (CommandNotFound if there is none)."""
        ...

    async def list(
        self,
        *,
        vehicle: str | None = None,
        states: Sequence[CommandState] | None = None,
        type: CommandType | None = None,
        requested_by: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> CommandPage:
        """Commands newest first, filtered (UnknownVehicle for a vehicle_ref not registered);
        `before` is the previous page's next_cursor."""
        ...


class CommandDispatcher(CommandReader, Protocol):
    """The commands' owner: it accepts, cancels and reports the outcome of commands."""

    async def submit(self, request: CommandRequest) -> Command:
        """Accept a command, or return the one this caller's idempotency key already made
        (IdempotencyConflict if that was another request; UnknownVehicle, InvalidDeadline)."""
        ...

    async def cancel(self, command_id: uuid.UUID, *, by: str | None = None) -> Command:
        """Cancel a command not delivered yet (NotCancellable once sent or finished)."""
        ...

    async def wait(self, command_id: uuid.UUID, timeout: float) -> Command:
        """The command once it is final, or as it stands after timeout seconds."""
        ...
