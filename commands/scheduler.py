"""The per-vehicle scheduler: given a vehicle's open commands (oldest first), its latest state
and the time, decide what happens now: expiries, time-outs, no-ops, waits, the next delivery or a
retry. One command in flight per vehicle, in submission order. Pure; the IO shell persists the
plan's changes and only then publishes what it says to send.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from commands import machine
from commands.interlocks import Action, InterlockPolicy, judge
from commands.model import Command, CommandState, HistoryEntry, VehicleSnapshot

Q, W = CommandState.QUEUED, CommandState.WAITING_FOR_SAFE_STATE


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    result_timeout_s: float = 5.0  # no answer this long after a delivery: retry (same id)
    backoff: float = 2.0  # each further retry waits this much longer ...
    max_interval_s: float = 30.0  # ... up to this
    max_attempts: int = 5  # deliveries at most; then only the deadline is awaited
    # A command in flight blocks its vehicle until deadline + this: a device whose clock lags
    # might still execute it up to its own idea of the deadline, and the next command must not
    # overtake it.
    clock_grace_s: float = 2.0

    def retry_at(self, cmd: Command) -> datetime | None:
        """When an in-flight command is due for its next delivery, None if it has had them all."""
        if cmd.attempts >= self.max_attempts or cmd.last_sent_at is None:
            return None
        wait = min(
            self.result_timeout_s * self.backoff ** max(cmd.attempts - 1, 0), self.max_interval_s
        )
        return cmd.last_sent_at + timedelta(seconds=wait)

    def gives_up_at(self, cmd: Command) -> datetime:
        return cmd.deadline + timedelta(seconds=self.clock_grace_s)


@dataclass(slots=True)
class Plan:
    """What to do for one vehicle: state changes to persist (in order), the commands to publish
    once they are persisted, and when to look at the vehicle again (None: only on news)."""

    changes: list[tuple[Command, HistoryEntry]] = field(default_factory=list)
    send: list[Command] = field(default_factory=list)
    wake_at: datetime | None = None
    blocked: bool = False  # the head waits for the vehicle (offline, unsafe): judge again on news

    def change(self, pair: tuple[Command, HistoryEntry]) -> Command:
        self.changes.append(pair)
        return pair[0]

    def wake(self, at: datetime | None) -> None:
        if at is not None and (self.wake_at is None or at < self.wake_at):
            self.wake_at = at


def plan_vehicle(
    queue: Sequence[Command],
    snap: VehicleSnapshot | None,
    now: datetime,
    *,
    delivery: DeliveryPolicy = DeliveryPolicy(),
    interlocks: InterlockPolicy = InterlockPolicy(),
    push: bool = True,
) -> Plan:
    """The plan for one vehicle's open commands (queue: oldest first, none terminal).

    push=False is pull delivery (a sleeping CoAP device): the caller hands over the head only
    when the device shows up, so nothing is retried on a timer and offline does not hold it.
    """
    plan = Plan()
    open_ = _finish_overdue(plan, queue, now, delivery)
    while open_ and _decide_head(plan, open_, snap, now, delivery, interlocks, push):
        open_.pop(0)
    for cmd in open_:
        if not cmd.state.in_flight:
            plan.wake(cmd.deadline)
    return plan


def _finish_overdue(
    plan: Plan, queue: Sequence[Command], now: datetime, delivery: DeliveryPolicy
) -> list[Command]:
    """Time out the in-flight commands past their grace, expire the undelivered ones past their
    deadline; returns the others, in order."""
    open_: list[Command] = []
    for cmd in queue:
        if cmd.state.in_flight and now >= delivery.gives_up_at(cmd):
            plan.change(machine.transition(cmd, CommandState.TIMED_OUT, now, reason="no_result"))
        elif cmd.state in (Q, W) and now >= cmd.deadline:
            # Never delivered: the reason it waited is the reason it expired.
            plan.change(
                machine.transition(
                    cmd, CommandState.EXPIRED, now, reason=cmd.reason or "not_delivered"
                )
            )
        else:
            open_.append(cmd)
    return open_


def _decide_head(
    plan: Plan,
    open_: list[Command],
    snap: VehicleSnapshot | None,
    now: datetime,
    delivery: DeliveryPolicy,
    interlocks: InterlockPolicy,
    push: bool,
) -> bool:
    """What happens to the head of open_ now; True when it is finished (no-op or refused), so
    the next command becomes the head, False when the vehicle's queue stops here."""
    head = open_[0]
    if head.state.in_flight:
        _in_flight(plan, head, snap, now, delivery, push)
        return False
    if snap is not None and snap.held_by is not None:
        # Another platform commands the vehicle now (a roll-back after it was queued).
        plan.change(machine.transition(head, CommandState.FAILED, now, reason="not_held"))
        return True
    verdict = judge(head, snap, now, interlocks)
    if verdict.action is Action.NOOP:
        plan.change(machine.transition(head, CommandState.SUCCEEDED, now, reason=verdict.reason))
        return True
    if verdict.action is Action.REFUSE:
        plan.change(machine.transition(head, CommandState.FAILED, now, reason=verdict.reason))
        return True
    if verdict.action is Action.OFFLINE and not push:
        verdict = verdict._replace(action=Action.SEND)
    if verdict.action is Action.SEND:
        if push:  # (pull: handed over on the device's next uplink, not from here)
            sent = plan.change(machine.transition(head, CommandState.SENT, now))
            plan.send.append(sent)
            _in_flight(plan, sent, snap, now, delivery, push)
        return False
    # WAIT or OFFLINE: hold it (and everything behind it) and say why, once.
    to = W if verdict.action is Action.WAIT else Q
    if head.state is not to or head.reason != verdict.reason:
        open_[0] = plan.change(machine.transition(head, to, now, reason=verdict.reason))
    plan.blocked = push
    return False


def _in_flight(
    plan: Plan,
    cmd: Command,
    snap: VehicleSnapshot | None,
    now: datetime,
    delivery: DeliveryPolicy,
    push: bool,
) -> None:
    """An in-flight head: retry it when due (online, before its deadline), else wait."""
    plan.wake(delivery.gives_up_at(cmd))
    if not push:
        return
    retry_at = delivery.retry_at(cmd)
    if retry_at is None or retry_at >= cmd.deadline:
        return
    if now >= retry_at:
        if snap is not None and snap.held_by is not None:
            return  # rolled back: never delivered again; it times out unanswered
        if snap is None or not snap.online:
            plan.blocked = True  # the broker holds the last delivery; retry once it is back
            return
        again = plan.change(machine.resend(cmd, now))
        plan.send.append(again)
        retry_at = delivery.retry_at(again)
        if retry_at is None or retry_at >= again.deadline:
            return
    plan.wake(retry_at)
