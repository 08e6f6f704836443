"""The transaction every decision goes through: some vehicles' open commands, with the changes
already decided for them, are planned by the core (commands.scheduler) and persisted together;
only after the commit does memory follow, are commands published and waiting callers told.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from commands import machine
from commands.errors import NotHeld
from commands.interlocks import InterlockPolicy
from commands.model import Command, VehicleSnapshot
from commands.scheduler import DeliveryPolicy, Plan, plan_vehicle
from gateway.commands.delivery import Deliveries
from gateway.commands.memory import Change, OpenCommands, Waiters, without_finished
from gateway.commands.metrics import CommandMetrics
from gateway.commands.store import CommandStore

Queues = dict[int, list[Command]]


class Committer:
    def __init__(
        self,
        *,
        store: CommandStore,
        memory: OpenCommands,
        waiters: Waiters,
        deliveries: Deliveries,
        metrics: CommandMetrics,
        delivery: DeliveryPolicy,
        interlocks: InterlockPolicy,
        pull: Callable[[str], bool],
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._memory = memory
        self._waiters = waiters
        self._deliveries = deliveries
        self._metrics = metrics
        self._delivery = delivery
        self._interlocks = interlocks
        self._pull = pull  # device ids served by pull delivery (sleeping CoAP devices)
        self._clock = clock

    async def commit(
        self,
        queues: Queues,
        decided: list[Change],
        *,
        inserts: Sequence[Command] = (),
        present: bool = False,
    ) -> Any:
        """Persist and carry out decisions about some vehicles, whose locks the caller holds.
        `queues` are their open commands with `decided` (changes made already: results, a
        cancel) applied; each vehicle with open commands is planned (commands.scheduler).

        inserts: new commands, each for the end of its vehicle's queue; returns each as
        planned, None where its idempotency key is taken, or NotHeld where another platform
        holds its vehicle (nothing of it is written in either case).
        present: a pull device is talking to us now; returns the commands to hand it.

        Atomically: the writes already decided, the vehicles' snapshots (seeing those writes),
        the plans' writes. When nothing decided must be seen first, the snapshots are read
        before and everything is written at once, often in one statement. Then memory,
        publish, waiters.
        """
        if decided and inserts:
            raise ValueError("new commands and decided changes are committed separately")
        now = self._clock()
        for cmd in inserts:
            queues[cmd.vehicle_id] = [*queues.get(cmd.vehicle_id, ()), cmd]
        busy = [v for v, q in queues.items() if q]
        results: list[Command | None] = []
        if decided and busy:
            plans = await self._write_decided_first(queues, busy, decided, now, present)
        else:
            plans, results = await self._write_at_once(queues, busy, decided, inserts, now, present)
        self._adopt(queues, decided, plans, publish=not present)
        if present:
            return [c for p in plans.values() for c in p.send]
        return results

    def _plan(
        self,
        queues: Queues,
        busy: list[int],
        snaps: dict[int, VehicleSnapshot],
        now: datetime,
        present: bool,
    ) -> dict[int, Plan]:
        plans: dict[int, Plan] = {v: Plan() for v in queues}
        for v in busy:
            queue, snap = queues[v], snaps.get(v)
            pull = self._pull(queue[0].device_id)
            if present and snap is not None:
                snap = replace(snap, online=True)
            plans[v] = plan_vehicle(
                queue,
                snap,
                now,
                delivery=self._delivery,
                interlocks=self._interlocks,
                push=present or not pull,
            )
            if present:
                _hand_over_again(plans[v], queue, now)
        return plans

    async def _write_decided_first(
        self, queues: Queues, busy: list[int], decided: list[Change], now: datetime, present: bool
    ) -> dict[int, Plan]:
        async with self._store.transaction() as tx:
            # Read after what is decided: the interlocks see the answers just written.
            plans = self._plan(
                queues, busy, await tx.write(decided, then_snapshots=busy), now, present
            )
            await tx.write([c for p in plans.values() for c in p.changes])
        return plans

    async def _write_at_once(
        self,
        queues: Queues,
        busy: list[int],
        decided: list[Change],
        inserts: Sequence[Command],
        now: datetime,
        present: bool,
    ) -> tuple[dict[int, Plan], list[Command | NotHeld | None]]:
        """Nothing written yet that the interlocks must see: judge, then write once. A new
        command is inserted in the state its plan gives it, with that history."""
        snaps = await self._store.snapshots(busy) if busy else {}
        # The authority is read with the snapshots, in this joint write, not once per caller.
        refused = _refuse_held(queues, inserts, snaps)
        accepted = [c for c in inserts if c.id not in refused]
        plans = self._plan(queues, [v for v in busy if queues[v]], snaps, now, present)
        planned = {c.id: (c, [machine.created(c)]) for c in accepted}
        for p in plans.values():
            for cmd, entry in p.changes:
                if cmd.id in planned:
                    planned[cmd.id] = (cmd, [*planned[cmd.id][1], entry])
        changes = [
            *decided,
            *(c for p in plans.values() for c in p.changes if c[0].id not in planned),
        ]
        stored_inserts = await self._store.apply(list(planned.values()), changes)
        settled = {
            new.id: self._settle_insert(queues, plans[new.vehicle_id], new, planned[new.id][0], s)
            for new, s in zip(accepted, stored_inserts)
        }
        return plans, [refused.get(c.id) or settled.get(c.id) for c in inserts]

    def _settle_insert(
        self,
        queues: Queues,
        plan: Plan,
        new: Command,
        planned: Command,
        stored: Command | None,
    ) -> Command | None:
        """A new command as the database took it (with its seq), or None where its key was
        taken: then it is forgotten and its vehicle judged again."""
        v = new.vehicle_id
        if stored is None:
            queues[v] = [c for c in queues[v] if c.id != new.id]
            plan.changes = [c for c in plan.changes if c[0].id != new.id]
            plan.send = [c for c in plan.send if c.id != new.id]
            self._memory.touch([v])
            return None
        queues[v] = [
            c.model_copy(update={"seq": stored.seq}) if c.id == new.id else c for c in queues[v]
        ]
        _set_seq(plan, new.id, stored.seq)
        return planned.model_copy(update={"seq": stored.seq})

    def _adopt(
        self, queues: Queues, decided: list[Change], plans: dict[int, Plan], publish: bool
    ) -> None:
        """Committed: make memory say what the database says, then act on it."""
        for v, queue in queues.items():
            self._memory.adopt(v, queue, plans[v])
        for cmd, entry in [*decided, *(c for p in plans.values() for c in p.changes)]:
            self._metrics.account(cmd, entry)
            if cmd.state.terminal:
                self._memory.forget(cmd.id)
                self._deliveries.forget(cmd.id)
                self._waiters.finished(cmd)
        if publish:
            for plan in plans.values():
                for cmd in plan.send:
                    self._deliveries.publish(cmd)


def _refuse_held(
    queues: Queues, inserts: Sequence[Command], snaps: dict[int, VehicleSnapshot]
) -> dict[uuid.UUID, NotHeld]:
    """New commands for vehicles another platform holds (a fleet migration): refused before
    anything of them is written, and taken out of their vehicles' queues."""
    refused = {}
    for cmd in inserts:
        snap = snaps.get(cmd.vehicle_id)
        if snap is not None and snap.held_by is not None:
            refused[cmd.id] = NotHeld(cmd.vehicle_ref, snap.held_by)
    if refused:
        for v in {c.vehicle_id for c in inserts if c.id in refused}:
            queues[v] = [c for c in queues[v] if c.id not in refused]
    return refused


def _set_seq(plan: Plan, command_id: uuid.UUID, seq: int) -> None:
    """The seq the database gave a new command, on the plan's copies of it."""

    def fix(c: Command) -> Command:
        return c.model_copy(update={"seq": seq}) if c.id == command_id else c

    plan.changes = [(fix(c), e) for c, e in plan.changes]
    plan.send = [fix(c) for c in plan.send]


def _hand_over_again(plan: Plan, queue: list[Command], now: datetime) -> None:
    """Pull delivery: the device is here now; an in-flight head it has not answered is handed
    over again (same id; the device answers an id it knows with its earlier result)."""
    if plan.send:
        return
    remaining = without_finished(queue, plan.changes)
    if remaining and remaining[0].state.in_flight and now < remaining[0].deadline:
        again = machine.resend(remaining[0], now)
        plan.changes.append(again)
        plan.send.append(again[0])
