"""Device results in: parsed, matched to their commands, applied by the state machine and
committed; only then acknowledged to the broker, so a result is never lost between the two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from commands import machine
from commands.model import Command, CommandState, DeviceResult
from gateway.commands.commit import Committer
from gateway.commands.memory import Change, OpenCommands, without_finished
from gateway.commands.metrics import CommandMetrics
from gateway.commands.mqtt import InboundResult
from gateway.commands.store import CommandConflict, CommandStore
from telemetry.store import Backoff, StoreUnavailable

log = logging.getLogger(__name__)

_BATCH = 5000  # results committed together at most


class ResultIntake:
    def __init__(
        self,
        *,
        store: CommandStore,
        memory: OpenCommands,
        committer: Committer,
        metrics: CommandMetrics,
        acknowledge: Callable[[Iterable[Any]], None],
        reload: Callable[[Iterable[int] | None], Awaitable[None]],
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._memory = memory
        self._committer = committer
        self._metrics = metrics
        self._acknowledge = acknowledge
        self._reload = reload
        self._clock = clock
        self._pending: list[InboundResult] = []
        self._ready = asyncio.Event()

    def arrived(self, items: list[InboundResult]) -> None:
        """Results from the MQTT link (unacknowledged until committed)."""
        self._pending.extend(items)
        self._ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.2, 5.0)
        while not stop.is_set():
            await self._ready.wait()
            items = self._pending[:_BATCH]
            try:
                await self.process(items)
                backoff.reset()
            except StoreUnavailable as exc:
                self._metrics.db_errors.labels("unavailable").inc()
                delay = backoff.next()
                log.warning(
                    "commands_database_unavailable",
                    extra={"operation": "results", "error": str(exc)[:300], "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                continue
            except CommandConflict as exc:
                log.warning("commands_conflict", extra={"error": str(exc)[:300]})
                await self._reload(None)
                continue
            except Exception:
                # A result the code cannot handle must not block the ones behind it forever.
                log.exception("commands_results_failed", extra={"results": len(items)})
            del self._pending[: len(items)]
            self._acknowledge(i.token for i in items if i.token is not None)
            if not self._pending:
                self._ready.clear()

    async def process(self, items: list[InboundResult]) -> None:
        """Apply results and commit them (with what the vehicles' plans then say)."""
        parsed = self._parse(items)
        if not parsed:
            return
        vehicles = {
            self._memory.by_id[r.id].vehicle_id for _, r in parsed if r.id in self._memory.by_id
        }
        async with self._memory.locks.hold(vehicles):
            queues = {v: self._memory.queue(v) for v in vehicles}
            current = {c.id: c for q in queues.values() for c in q}
            missing = {r.id for _, r in parsed if r.id not in current}
            stored = await self._store.get_many(missing) if missing else {}
            now = self._clock()
            decided: list[Change] = []
            for device_id, result in parsed:
                kind = self._apply(device_id, result, current, stored, now, decided)
                self._metrics.results.labels(kind).inc()
            if decided:
                await self._committer.commit(
                    {v: without_finished(q, decided) for v, q in queues.items()}, decided
                )

    def _parse(self, items: list[InboundResult]) -> list[tuple[str, DeviceResult]]:
        parsed: list[tuple[str, DeviceResult]] = []
        for item in items:
            try:
                result = DeviceResult.parse(item.payload)
            except ValueError as exc:
                self._metrics.results.labels("invalid").inc()
                log.warning(
                    "command_result_invalid",
                    extra={"device_id": item.device_id, "error": str(exc)[:200]},
                )
                continue
            if not item.device_id:
                self._metrics.results.labels("invalid").inc()
                continue
            parsed.append((item.device_id, result))
        return parsed

    def _apply(
        self,
        device_id: str,
        result: DeviceResult,
        current: dict,
        stored: dict,
        now: datetime,
        decided: list[Change],
    ) -> str:
        """Apply one result to its command (the newest version in current or stored, which
        this updates); appends the change to decided and returns what kind of result it was."""
        cmd = current.get(result.id) or stored.get(result.id)
        kind = self._refusal(cmd, device_id, result)
        if kind is not None:
            return kind
        change = machine.apply_result(cmd, result, now)
        if change is None:
            return "duplicate"
        decided.append(change)
        (current if cmd.id in current else stored)[cmd.id] = change[0]
        if not cmd.state.terminal:
            return "ack" if change[0].state is CommandState.ACKNOWLEDGED else "applied"
        log.warning(
            "command_late_result",
            extra={
                "command_id": str(cmd.id),
                "state": cmd.state.value,
                "device_status": result.status,
                "device_reason": result.reason,
            },
        )
        return "late"

    def _refusal(self, cmd: Command | None, device_id: str, result: DeviceResult) -> str | None:
        """Why a result is not applied, or None to apply it."""
        if cmd is None:
            log.info(
                "command_result_unknown",
                extra={"device_id": device_id, "command_id": str(result.id)},
            )
            return "unknown"
        if cmd.device_id != device_id:
            log.warning(
                "command_result_foreign",
                extra={
                    "device_id": device_id,
                    "command_id": str(cmd.id),
                    "addressed_to": cmd.device_id,
                },
            )
            return "foreign"
        if not cmd.state.terminal and cmd.id not in self._memory.by_id:
            return "foreign"  # open, but another dispatcher's (several processes, later)
        return None
