"""What the dispatcher holds in memory between commits: every open command of its vehicles as the
database has them after the last commit, which vehicles to judge again and when, one lock per
vehicle, and the callers waiting for an outcome. Only a commit (commit.py) changes the commands
held here; nothing in this module does IO.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime

from commands.model import Command, CommandState, HistoryEntry
from commands.scheduler import Plan

Change = tuple[Command, HistoryEntry]


def without_finished(queue: Sequence[Command], changes: Iterable[Change]) -> list[Command]:
    """A vehicle's open commands after changes: newest versions, the finished ones gone."""
    final = {c.id: c for c, _ in changes}
    return [c for c in (final.get(c.id, c) for c in queue) if not c.state.terminal]


class VehicleLocks:
    """One asyncio lock per vehicle; several are taken in id order, so never in a cycle."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, vehicles: Iterable[int]) -> AsyncIterator[None]:
        taken: list[asyncio.Lock] = []
        try:
            for v in sorted(set(vehicles)):
                lock = self._locks.get(v)
                if lock is None:
                    lock = self._locks[v] = asyncio.Lock()
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()


class OpenCommands:
    """The open commands per vehicle (oldest first) and by id, and the dispatcher's agenda: the
    vehicles to plan at once (dirty), those whose head waits for news of the vehicle (blocked),
    and a timer per vehicle for the next deadline or retry. A caller holds the vehicles' locks
    while it reads a queue it will commit."""

    def __init__(self) -> None:
        self.queues: dict[int, list[Command]] = {}  # vehicle -> open commands, oldest first
        self.by_id: dict[uuid.UUID, Command] = {}  # id -> open command (newest version)
        self.dirty: set[int] = set()
        self.blocked: set[int] = set()  # head held back (offline, unsafe): judged again on news
        self.wake = asyncio.Event()  # set when the dispatcher has something to do
        self.locks = VehicleLocks()
        self._timers: list[tuple[float, int]] = []  # (when, vehicle) heap
        self._next_at: dict[int, float] = {}

    def queue(self, vehicle: int) -> list[Command]:
        """A copy of a vehicle's open commands, oldest first."""
        return list(self.queues.get(vehicle, ()))

    def load(self, commands: Iterable[Command]) -> None:
        """Add commands read from the store (in submission order); their vehicles are planned."""
        for cmd in commands:
            self.queues.setdefault(cmd.vehicle_id, []).append(cmd)
            self.by_id[cmd.id] = cmd
            self.dirty.add(cmd.vehicle_id)

    def replace(self, vehicles: Iterable[int], fresh: Iterable[Command]) -> None:
        """Forget what was held of these vehicles and hold fresh commands instead (a reload)."""
        for v in vehicles:
            for c in self.queues.pop(v, ()):
                self.by_id.pop(c.id, None)
        self.load(fresh)

    def adopt(self, vehicle: int, queue: Sequence[Command], plan: Plan) -> None:
        """A vehicle's queue and plan were committed: hold what remains open, note whether the
        head waits for news, and when to look at the vehicle again."""
        for c in queue:
            self.by_id.pop(c.id, None)
        remaining = without_finished(queue, plan.changes)
        if remaining:
            self.queues[vehicle] = remaining
            self.by_id.update((c.id, c) for c in remaining)
        else:
            self.queues.pop(vehicle, None)
        if plan.blocked and remaining:
            self.blocked.add(vehicle)
        else:
            self.blocked.discard(vehicle)
        if plan.wake_at is not None:
            self.schedule(vehicle, plan.wake_at)

    def forget(self, command_id: uuid.UUID) -> None:
        self.by_id.pop(command_id, None)

    def touch(self, vehicles: Iterable[int]) -> None:
        """Plan these vehicles again at once."""
        self.dirty.update(vehicles)
        self.wake.set()

    def schedule(self, vehicle: int, at: datetime) -> None:
        """Look at a vehicle again at `at` (an earlier timer of it stands)."""
        ts = at.timestamp()
        current = self._next_at.get(vehicle)
        if current is not None and current <= ts:
            return
        self._next_at[vehicle] = ts
        heapq.heappush(self._timers, (ts, vehicle))
        if current is None or ts < current:
            self.wake.set()

    def due(self, now_ts: float) -> set[int]:
        """The vehicles whose timer has run out by now_ts (their timers are done)."""
        due = set()
        while self._timers and self._timers[0][0] <= now_ts:
            at, v = heapq.heappop(self._timers)
            if self._next_at.get(v) == at:
                del self._next_at[v]
            due.add(v)
        return due

    def take_work(self, due: set[int]) -> set[int]:
        """The vehicles to plan now: the dirty and the due ones that have open commands."""
        vehicles = (self.dirty | due) & self.queues.keys()
        self.dirty.clear()
        return vehicles

    def until_next_timer(self, now_ts: float, at_most: float) -> float:
        """Seconds from now_ts to the next timer, at most at_most."""
        if self._timers:
            return min(at_most, max(self._timers[0][0] - now_ts, 0.0))
        return at_most

    def counts(self) -> dict[CommandState, int]:
        """Open commands per open state."""
        counts = {s: 0 for s in CommandState if not s.terminal}
        for c in self.by_id.values():
            counts[c.state] += 1
        return counts


class Waiters:
    """Callers waiting for a command to finish; the commit that finishes it tells them."""

    def __init__(self) -> None:
        self._futures: dict[uuid.UUID, list[asyncio.Future]] = {}

    @contextlib.contextmanager
    def waiting(self, command_id: uuid.UUID) -> Iterator[asyncio.Future]:
        """A future resolved with the command once it is final, while the block runs."""
        fut = asyncio.get_running_loop().create_future()
        self._futures.setdefault(command_id, []).append(fut)
        try:
            yield fut
        finally:
            futures = self._futures.get(command_id)
            if futures is not None:
                with contextlib.suppress(ValueError):
                    futures.remove(fut)
                if not futures:
                    del self._futures[command_id]

    def finished(self, cmd: Command) -> None:
        for fut in self._futures.get(cmd.id, ()):
            if not fut.done():
                fut.set_result(cmd)
