"""The read side of commands, from the database alone: one command, its history, a filtered
list. CommandService extends it; the HTTP API uses it on its own where no dispatcher runs in
its process (`fleetgate api`), since reading needs no broker."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from commands.errors import CommandNotFound, UnknownVehicle
from commands.model import Command, CommandPage, CommandState, CommandType, HistoryEntry
from gateway.commands.store import CommandStore


class CommandReads:
    def __init__(self, store: CommandStore) -> None:
        self._store = store

    async def get(self, command_id: uuid.UUID) -> Command:
        cmd = await self._store.get(command_id)
        if cmd is None:
            raise CommandNotFound(f"no command {command_id}")
        return cmd

    async def history(self, command_id: uuid.UUID) -> list[HistoryEntry]:
        entries = await self._store.history(command_id)
        if not entries:
            raise CommandNotFound(f"no command {command_id}")
        return entries

    async def list(
        self,
        *,
        vehicle: str | None = None,
        device_id: str | None = None,
        states: Sequence[CommandState] | None = None,
        type: CommandType | None = None,
        requested_by: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> CommandPage:
        """Commands newest first, filtered; `before` = the previous page's next_cursor."""
        vehicle_id = None if vehicle is None else await self._vehicle_id(vehicle)
        return await self._store.list(
            vehicle_id=vehicle_id,
            device_id=device_id,
            states=states,
            type=type,
            requested_by=requested_by,
            created_from=created_from,
            created_to=created_to,
            before=before,
            limit=limit,
        )

    async def _vehicle_id(self, vehicle_ref: str) -> int:
        info = await self._store.vehicle(vehicle_ref=vehicle_ref)
        if info is None:
            raise UnknownVehicle(f"no vehicle with ref {vehicle_ref!r} in the registry")
        return info.vehicle_id
