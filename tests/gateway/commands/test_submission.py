"""gateway/commands/submission.py: the loop that writes new commands survives whatever one write
meets. Its store and committer are stand-ins here: a conflict and an outage at the same moment
(the case below) cannot be produced on demand with the real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from commands import CommandRequest, CommandType
from gateway.commands.memory import OpenCommands
from gateway.commands.store import CommandConflict, VehicleInfo
from gateway.commands.submission import Submissions, new_command
from telemetry.store import StoreUnavailable


def a_command(key: str):
    request = CommandRequest(
        vehicle_id=7, type=CommandType.LOCK, idempotency_key=key, requested_by="rental"
    )
    return new_command(request, VehicleInfo(7, "veh-7", "tcu-7", "ebike"), datetime.now(UTC), 60)


class ConflictOnce:
    """A committer whose first write meets a conflicting change; later ones succeed."""

    def __init__(self) -> None:
        self.calls = 0

    async def commit(self, queues, changes, *, inserts):
        self.calls += 1
        if self.calls == 1:
            raise CommandConflict("changed meanwhile")
        return list(inserts)


async def test_an_outage_while_reloading_after_a_conflict_fails_that_write_not_the_loop():
    """The reload after a conflict raised StoreUnavailable out of the loop: every later command
    waited for ever, with nothing logged."""
    reloads = 0

    async def reload(vehicles) -> None:
        nonlocal reloads
        reloads += 1
        if reloads == 1:
            raise StoreUnavailable("database unavailable: connection refused")

    committer = ConflictOnce()
    submissions = Submissions(OpenCommands(), committer, reload)
    stop = asyncio.Event()
    loop = asyncio.create_task(submissions.run(stop))
    try:
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(submissions.write(a_command("k1")), 5)
        second = a_command("k2")
        stored = await asyncio.wait_for(submissions.write(second), 5)
        assert stored is second and not loop.done()
    finally:
        stop.set()
        loop.cancel()
