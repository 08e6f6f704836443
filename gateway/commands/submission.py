"""New commands: a request becomes a Command (its vehicle resolved, its deadline fixed), and the
commands submitted at the same time are judged and written together (one read of their
vehicles' state, one write) before their callers hear of them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta

from commands._time import from_ms, to_ms
from commands.errors import InvalidDeadline
from commands.model import MAX_TTL_S, Command, CommandRequest
from gateway.commands.commit import Committer
from gateway.commands.memory import OpenCommands
from gateway.commands.store import CommandConflict, VehicleInfo
from telemetry.store import StoreUnavailable

_BATCH = 1000  # new commands written together at most
_IN_FLIGHT = 3  # joint writes under way at once (the commands' pool has 4 connections)


def new_command(
    request: CommandRequest, info: VehicleInfo, now: datetime, default_ttl_s: float
) -> Command:
    """The command a request makes for its vehicle, created now (InvalidDeadline for a deadline
    in the past or too far away)."""
    return Command(
        id=uuid.uuid4(),
        vehicle_id=info.vehicle_id,
        vehicle_ref=info.vehicle_ref,
        device_id=info.device_id,
        type=request.type,
        params=request.params,
        idempotency_key=request.idempotency_key,
        requested_by=request.requested_by,
        request_hash=request.fingerprint(info.vehicle_id),
        on_unsafe=request.on_unsafe,
        created_at=now,
        deadline=_deadline(request, now, default_ttl_s),
        updated_at=now,
    )


def _deadline(request: CommandRequest, now: datetime, default_ttl_s: float) -> datetime:
    if request.deadline is not None:
        deadline = request.deadline
        if deadline <= now:
            raise InvalidDeadline(f"deadline {deadline.isoformat()} is in the past")
        if deadline - now > timedelta(seconds=MAX_TTL_S):
            raise InvalidDeadline(f"deadline is more than {MAX_TTL_S / 86400:.0f} days away")
    else:
        deadline = now + timedelta(seconds=request.ttl_s or default_ttl_s)
    return from_ms(to_ms(deadline))  # the payload carries ms: keep both the same


Pending = list[tuple[Command, asyncio.Future]]


class Submissions:
    """New commands waiting for the next joint write, and the loop that writes them: up to
    _IN_FLIGHT joint writes at once, for different vehicles (a vehicle's commands are written
    in submission order, one write after the other)."""

    def __init__(
        self,
        memory: OpenCommands,
        committer: Committer,
        reload: Callable[[Iterable[int]], Awaitable[None]],
    ) -> None:
        self._memory = memory
        self._committer = committer
        self._reload = reload
        self._pending: Pending = []
        self._ready = asyncio.Event()
        self._writing: set[int] = set()  # vehicles with commands in a write under way

    async def write(self, cmd: Command) -> Command | None:
        """The new command as stored (judged, with its seq), or None where its idempotency key
        is taken (nothing of it was written); NotHeld where another platform holds its vehicle
        (read in the joint write, so a roll-back takes effect for the next write)."""
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((cmd, fut))
        self._ready.set()
        return await fut

    def fail_pending(self, reason: str) -> None:
        """Tell the callers whose commands were not written yet that the store is unavailable
        (stopping: they may submit again with the same key)."""
        pending, self._pending = self._pending, []
        _fail(pending, reason)

    async def run(self, stop: asyncio.Event) -> None:
        """New commands, as many as are waiting, together: one read of their vehicles' state,
        then one write (a single statement). While one write waits for the database the next
        one starts, for other vehicles: with one write at a time, a burst of callers queued
        behind two round trips per write (issue 23)."""
        slots = asyncio.Semaphore(_IN_FLIGHT)
        writes: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                await self._ready.wait()
                self._ready.clear()
                await slots.acquire()
                batch = self._take()
                if not batch:
                    slots.release()  # the rest waits for its vehicles' writes (they set _ready)
                    continue
                if self._pending:
                    self._ready.set()
                vehicles = {cmd.vehicle_id for cmd, _ in batch}
                self._writing |= vehicles
                task = asyncio.create_task(self._write_and_tell(batch, vehicles, slots))
                writes.add(task)
                task.add_done_callback(writes.discard)
        finally:
            for task in list(writes):
                task.cancel()
            await asyncio.gather(*writes, return_exceptions=True)

    def _take(self) -> Pending:
        """The next joint write: waiting commands in submission order, at most _BATCH, none of
        a vehicle whose commands are being written (nor any behind such a one)."""
        batch: Pending = []
        rest: Pending = []
        held: set[int] = set()
        for item in self._pending:
            v = item[0].vehicle_id
            if len(batch) < _BATCH and v not in self._writing and v not in held:
                batch.append(item)
            else:
                rest.append(item)
                held.add(v)  # its later commands stay behind this one
        self._pending = rest
        return batch

    async def _write_and_tell(
        self, batch: Pending, vehicles: set[int], slots: asyncio.Semaphore
    ) -> None:
        try:
            results, error = await self._write_batch(batch)
        except asyncio.CancelledError:
            _fail(batch, "the command service is stopping")
            raise
        finally:
            self._writing -= vehicles
            slots.release()
            self._ready.set()
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue  # the caller gave up waiting (the command may exist: same key)
            if results is None:
                fut.set_exception(error)
            elif isinstance(results[i], Exception):
                fut.set_exception(results[i])  # refused (NotHeld): nothing of it was written
            else:
                fut.set_result(results[i])

    async def _write_batch(
        self, batch: Pending
    ) -> tuple[list[Command | None] | None, BaseException | None]:
        """Per command the stored one or None (key taken); or no list and the error for all."""
        vehicles = {cmd.vehicle_id for cmd, _ in batch}
        inserts = [cmd for cmd, _ in batch]
        for attempt in (1, 2):
            try:
                async with self._memory.locks.hold(vehicles):
                    queues = {v: self._memory.queue(v) for v in vehicles}
                    return await self._committer.commit(queues, [], inserts=inserts), None
            except CommandConflict:
                if attempt == 2:
                    return None, CommandConflict("commands changed meanwhile; retry")
            except Exception as exc:  # StoreUnavailable included: the callers decide
                return None, exc
            try:
                await self._reload(vehicles)  # memory lost track: read them again, try once more
            except Exception as exc:  # raised out of run(), it ended the loop for good
                return None, exc
        return None, None  # (not reached: the second attempt returns)


def _fail(pending: Pending, reason: str) -> None:
    for _, fut in pending:
        if not fut.done():
            fut.set_exception(StoreUnavailable(reason))
