"""The command state machine: which state changes are allowed, and what each one does to a
command's timestamps and counters. Pure: a change returns the new command and its history entry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from commands._time import from_ms
from commands.model import Command, CommandState, DeviceResult, HistoryEntry

Q, W = CommandState.QUEUED, CommandState.WAITING_FOR_SAFE_STATE
S, A = CommandState.SENT, CommandState.ACKNOWLEDGED
OK, NO = CommandState.SUCCEEDED, CommandState.FAILED
TO, EX, CA = CommandState.TIMED_OUT, CommandState.EXPIRED, CommandState.CANCELLED

TERMINAL = frozenset({OK, NO, TO, EX, CA})

# from -> the states it may go to. A state listed for itself is a note that keeps the state:
# queued/waiting with a new reason, sent/acknowledged for a retry (attempts + 1).
TRANSITIONS: dict[CommandState, frozenset[CommandState]] = {
    Q: frozenset({Q, W, S, OK, NO, EX, CA}),
    W: frozenset({W, Q, S, OK, NO, EX, CA}),
    S: frozenset({S, A, OK, NO, TO}),
    A: frozenset({A, OK, NO, TO}),
    OK: frozenset(),
    NO: frozenset(),
    TO: frozenset(),
    EX: frozenset(),
    CA: frozenset(),
}


class IllegalTransition(ValueError):
    """A state change the machine does not allow (a bug in the caller, or a lost race)."""


def transition(
    cmd: Command,
    to: CommandState,
    now: datetime,
    *,
    reason: str | None = None,
    detail: dict[str, Any] | None = None,
    device: DeviceResult | None = None,
) -> tuple[Command, HistoryEntry]:
    """Move cmd to `to` at `now`. Entering SENT (also SENT -> SENT, a retry) counts an attempt."""
    if to not in TRANSITIONS[cmd.state]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[cmd.state])) or "nothing"
        raise IllegalTransition(
            f"command {cmd.id} cannot go from {cmd.state.value} to {to.value} (allowed: {allowed})"
        )
    update: dict[str, Any] = {"state": to, "reason": reason, "updated_at": now}
    if to is S:
        update.update(attempts=cmd.attempts + 1, last_sent_at=now, sent_at=cmd.sent_at or now)
        detail = {"attempt": cmd.attempts + 1, **(detail or {})}
    if to is A:
        update["acknowledged_at"] = cmd.acknowledged_at or now
    if to in TERMINAL:
        update["finished_at"] = now
    if device is not None:
        update.update(_device_fields(device, now))
        detail = {**_device_detail(device), **(detail or {})}
    new = cmd.model_copy(update=update)
    return new, HistoryEntry(
        command_id=cmd.id,
        at=now,
        from_state=cmd.state,
        to_state=to,
        reason=reason,
        detail=detail or None,
    )


def resend(cmd: Command, now: datetime) -> tuple[Command, HistoryEntry]:
    """A retry of an in-flight command with the same id: a note, the state stays."""
    if not cmd.state.in_flight:
        raise IllegalTransition(
            f"command {cmd.id} is {cmd.state.value}, not in flight: "
            "only sent or acknowledged commands are retried"
        )
    new = cmd.model_copy(
        update={"attempts": cmd.attempts + 1, "last_sent_at": now, "updated_at": now}
    )
    return new, HistoryEntry(
        command_id=cmd.id,
        at=now,
        from_state=cmd.state,
        to_state=cmd.state,
        reason="retry",
        detail={"attempt": cmd.attempts + 1},
    )


def created(cmd: Command) -> HistoryEntry:
    """The history's first row for a new command."""
    return HistoryEntry(
        command_id=cmd.id,
        at=cmd.created_at,
        from_state=None,
        to_state=cmd.state,
        reason=cmd.reason,
        detail={
            "requested_by": cmd.requested_by,
            "type": cmd.type.value,
            "params": cmd.params,
            "deadline": cmd.deadline.isoformat(),
        },
    )


def apply_result(
    cmd: Command, result: DeviceResult, now: datetime
) -> tuple[Command, HistoryEntry] | None:
    """What a device's answer does to a command; None when it changes nothing (a repeated
    answer, a "received" after the result).

    - in flight: "received" -> ACKNOWLEDGED; "succeeded"/"failed" -> that terminal state.
    - TIMED_OUT, EXPIRED or CANCELLED, or a terminal state the answer contradicts: the state
      stays (terminal is final: a caller that was told timed_out is never contradicted), and
      the answer is recorded as a "late_result" note and in device_status/device_reason/
      device_t, because the device did act.
    - queued or waiting (not sent by us; a device answering an id it should not know): the
      device's word is taken, recorded as unexpected.
    """
    status = result.status
    if cmd.state.in_flight or cmd.state in (Q, W):
        if status == "received":
            if cmd.state is not S:
                return None
            return transition(cmd, A, now, detail=_device_detail(result))
        to = OK if status == "succeeded" else NO
        detail = None if cmd.state.in_flight else {"unexpected": True}
        return transition(
            cmd, to, now, reason=result.reason if to is NO else None, detail=detail, device=result
        )
    # terminal
    if status == "received" or (cmd.device_status == status and cmd.device_reason == result.reason):
        return None
    new = cmd.model_copy(update={**_device_fields(result, now), "updated_at": now})
    return new, HistoryEntry(
        command_id=cmd.id,
        at=now,
        from_state=cmd.state,
        to_state=cmd.state,
        reason="late_result",
        detail=_device_detail(result),
    )


def _device_fields(result: DeviceResult, now: datetime) -> dict[str, Any]:
    # Without the device's clock, the time the answer arrived stands in for it.
    return {
        "device_status": result.status,
        "device_reason": result.reason,
        "device_t": from_ms(result.t) if result.t is not None else now,
    }


def _device_detail(result: DeviceResult) -> dict[str, Any]:
    return {"device_status": result.status, "device_reason": result.reason, "device_t": result.t}
