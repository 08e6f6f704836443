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


def command_for(vehicle: int, key: str):
    request = CommandRequest(
        vehicle_id=vehicle, type=CommandType.LOCK, idempotency_key=key, requested_by="rental"
    )
    info = VehicleInfo(vehicle, f"veh-{vehicle}", f"tcu-{vehicle}", "ebike")
    return new_command(request, info, datetime.now(UTC), 60)


class Gated:
    """A committer whose writes wait until the test lets each one finish."""

    def __init__(self) -> None:
        self.started: list[list[str]] = []  # idempotency keys per write, in the order begun
        self.release: dict[str, asyncio.Event] = {}

    async def commit(self, queues, changes, *, inserts):
        keys = [c.idempotency_key for c in inserts]
        self.started.append(keys)
        gate = self.release.setdefault(keys[0], asyncio.Event())
        await gate.wait()
        return list(inserts)

    def finish(self, first_key: str) -> None:
        self.release.setdefault(first_key, asyncio.Event()).set()


async def until(check, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_writes_for_other_vehicles_overlap_and_a_vehicles_commands_keep_their_order():
    committer = Gated()
    submissions = Submissions(OpenCommands(), committer, reload=None)
    stop = asyncio.Event()
    loop = asyncio.create_task(submissions.run(stop))
    try:
        first = asyncio.create_task(submissions.write(command_for(1, "a1")))
        await until(lambda: committer.started == [["a1"]], "the first write")
        # While it waits for the database: vehicle 2's command is written beside it, vehicle
        # 1's second one waits for the first (submission order), vehicle 3's goes with 2's.
        second = asyncio.create_task(submissions.write(command_for(1, "a2")))
        other = asyncio.create_task(submissions.write(command_for(2, "b1")))
        third = asyncio.create_task(submissions.write(command_for(3, "c1")))
        await until(lambda: len(committer.started) == 2, "a second write beside the first")
        assert committer.started[1] == ["b1", "c1"], "vehicle 1's next command held back"
        committer.finish("b1")
        assert [
            c.idempotency_key for c in await asyncio.wait_for(asyncio.gather(other, third), 5)
        ] == ["b1", "c1"]
        assert not second.done() and len(committer.started) == 2
        committer.finish("a1")
        await until(lambda: len(committer.started) == 3, "vehicle 1's second write")
        assert committer.started[2] == ["a2"]
        committer.finish("a2")
        done = await asyncio.wait_for(asyncio.gather(first, second), 5)
        assert [c.idempotency_key for c in done] == ["a1", "a2"]
    finally:
        stop.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_stop_fails_the_callers_of_a_write_under_way():
    committer = Gated()
    submissions = Submissions(OpenCommands(), committer, reload=None)
    loop = asyncio.create_task(submissions.run(asyncio.Event()))
    waiting = asyncio.create_task(submissions.write(command_for(1, "a1")))
    await until(lambda: committer.started, "the write")
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    with pytest.raises(StoreUnavailable, match="stopping"):
        await asyncio.wait_for(waiting, 5)
