"""Downlinks out: a command a commit marked sent is published on the commands' MQTT link; one whose
publish failed (the link was down) is remembered, to be handed over again with the same id as
soon as the link is back rather than at its next retry.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson

from commands.model import Command
from gateway.commands.mqtt import CommandLink


class Deliveries:
    def __init__(self, link: CommandLink) -> None:
        self._link = link
        self._unpublished: set[uuid.UUID] = set()

    def publish(self, cmd: Command) -> None:
        fut = self._link.publish(cmd.device_id, orjson.dumps(cmd.downlink()))
        if fut is None:
            self._unpublished.add(cmd.id)
            return
        self._unpublished.discard(cmd.id)

        def done(f: asyncio.Future, cid=cmd.id) -> None:
            if f.cancelled() or f.exception() is not None:
                self._unpublished.add(cid)  # handed over again when the link is back

        fut.add_done_callback(done)

    def forget(self, command_id: uuid.UUID) -> None:
        """The command is finished: never hand it over again."""
        self._unpublished.discard(command_id)

    def take_unpublished(self) -> set[uuid.UUID]:
        """The commands whose last publish failed (and forget them: the caller resends)."""
        ids, self._unpublished = self._unpublished, set()
        return ids
