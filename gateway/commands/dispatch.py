"""The dispatcher's loop: vehicles are planned again when something changed (a commit, the
vehicle's telemetry or presence), when a timer runs out (a deadline, a retry) and, for heads held
back, at least every recheck_s; a database outage is waited out, a conflict reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime

from commands import machine
from gateway.commands.commit import Committer
from gateway.commands.delivery import Deliveries
from gateway.commands.memory import OpenCommands, without_finished
from gateway.commands.metrics import CommandMetrics
from gateway.commands.store import CommandConflict, CommandStore
from telemetry.store import Backoff, StoreUnavailable

log = logging.getLogger(__name__)

_CHUNK = 500  # vehicles planned in one commit at most


class Dispatcher:
    def __init__(
        self,
        *,
        store: CommandStore,
        memory: OpenCommands,
        committer: Committer,
        deliveries: Deliveries,
        metrics: CommandMetrics,
        recheck_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._memory = memory
        self._committer = committer
        self._deliveries = deliveries
        self._metrics = metrics
        self._recheck_s = recheck_s
        self._clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.2, 5.0)
        last_recheck = time.monotonic()
        while not stop.is_set():
            now_ts = self._clock().timestamp()
            due = self._memory.due(now_ts)
            if time.monotonic() - last_recheck >= self._recheck_s:
                last_recheck = time.monotonic()
                due |= self._memory.blocked
                self._metrics.set_open(self._memory.counts())
            vehicles = self._memory.take_work(due)
            if vehicles:
                await self._replan_or_wait(vehicles, backoff)
                continue
            await self._sleep(self._memory.until_next_timer(now_ts, self._recheck_s))

    async def _replan_or_wait(self, vehicles: set[int], backoff: Backoff) -> None:
        """Plan the vehicles again; on trouble, keep them for the next round (after backoff's
        next delay while the database is away)."""
        try:
            await self.replan(vehicles)
            backoff.reset()
        except StoreUnavailable as exc:
            self._memory.dirty |= vehicles
            self._metrics.db_errors.labels("unavailable").inc()
            delay = backoff.next()
            log.warning(
                "commands_database_unavailable",
                extra={"operation": "dispatch", "error": str(exc)[:300], "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
        except CommandConflict as exc:
            log.warning("commands_conflict", extra={"error": str(exc)[:300]})
            await self.reload(vehicles)
            self._memory.dirty |= vehicles
        except Exception:
            log.exception("commands_dispatch_failed")
            await asyncio.sleep(1.0)

    async def _sleep(self, timeout: float) -> None:
        """Until there is news, or timeout seconds."""
        self._memory.wake.clear()
        if self._memory.dirty:
            return
        # (asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and stop() would wait for this loop forever.)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._memory.wake.wait()

    async def replan(self, vehicles: set[int]) -> None:
        ordered = sorted(vehicles)
        for i in range(0, len(ordered), _CHUNK):
            chunk = ordered[i : i + _CHUNK]
            async with self._memory.locks.hold(chunk):
                queues = {
                    v: list(self._memory.queues[v]) for v in chunk if v in self._memory.queues
                }
                await self._committer.commit(queues, [])

    async def reload(self, vehicles: Iterable[int] | None) -> None:
        """Memory lost track (a conflicting change): read the open commands again."""
        fresh = await self._store.open_commands(vehicles)
        targets = set(self._memory.queues) if vehicles is None else set(vehicles)
        async with self._memory.locks.hold(targets | {c.vehicle_id for c in fresh}):
            self._memory.replace(targets, fresh)
        self._memory.wake.set()

    async def resend(self, ids: set[uuid.UUID]) -> None:
        """Hand over again (same id) in-flight commands whose publish failed."""
        by_id = self._memory.by_id
        by_vehicle: dict[int, list[uuid.UUID]] = {}
        for cid in ids:
            cmd = by_id.get(cid)
            if cmd is not None and cmd.state.in_flight:
                by_vehicle.setdefault(cmd.vehicle_id, []).append(cid)
        if not by_vehicle:
            return
        async with self._memory.locks.hold(by_vehicle):
            now = self._clock()
            again = [
                machine.resend(by_id[cid], now)
                for cids in by_vehicle.values()
                for cid in cids
                if cid in by_id and by_id[cid].state.in_flight
            ]
            queues = {v: without_finished(self._memory.queue(v), again) for v in by_vehicle}
            await self._committer.commit(queues, again)
        for cmd, _ in again:
            self._deliveries.publish(cmd)
