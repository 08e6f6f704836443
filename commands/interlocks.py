"""Safety interlocks and no-op checks: what may be sent to a vehicle now, judged only by its latest
known state (a VehicleSnapshot). Pure functions; the numbers come from an InterlockPolicy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import NamedTuple

from commands.model import STATE_CHANGES, Command, CommandType, VehicleSnapshot
from telemetry.vehicle_types import BUILTIN_BY_ID, TWO_WHEELED


@dataclass(frozen=True, slots=True)
class InterlockPolicy:
    fresh_s: float = 60.0  # a sample older than this (device time vs now) is not evidence
    moving_kmh: float = 3.0  # above this a vehicle moves (GPS speed jitters around zero)


class Motion(str, Enum):
    MOVING = "moving"
    STILL = "still"
    UNKNOWN = "unknown"


class Action(str, Enum):
    SEND = "send"  # deliver it now
    NOOP = "noop"  # already in the asked state: succeeded without a round trip
    WAIT = "wait"  # not safe (or not known to be safe): hold it, judge again later
    REFUSE = "refuse"  # not safe, and the caller asked not to wait: failed
    OFFLINE = "offline"  # fine to send, but the vehicle is not connected: hold it


class Verdict(NamedTuple):
    action: Action
    reason: str | None = None


def is_recent(snap: VehicleSnapshot | None, now: datetime, policy: InterlockPolicy) -> bool:
    """The newest sample is younger than fresh_s."""
    return (
        snap is not None
        and snap.state_time is not None
        and now - snap.state_time <= timedelta(seconds=policy.fresh_s)
    )


def knows_current(snap: VehicleSnapshot | None, now: datetime, policy: InterlockPolicy) -> bool:
    """Recent, and taken at or after the last command that changed the vehicle's state: a
    sample from before an unlock cannot say whether the vehicle is unlocked now."""
    return is_recent(snap, now, policy) and (
        snap.last_actuation is None or snap.state_time >= snap.last_actuation
    )


def motion(snap: VehicleSnapshot | None, now: datetime, policy: InterlockPolicy) -> Motion:
    """Moving = ignition on or speed above the threshold, from a recent sample; else unknown."""
    if not is_recent(snap, now, policy):
        return Motion.UNKNOWN
    if snap.ignition:
        return Motion.MOVING
    if snap.speed_kmh is None:
        return Motion.UNKNOWN
    return Motion.MOVING if snap.speed_kmh > policy.moving_kmh else Motion.STILL


def judge(
    cmd: Command, snap: VehicleSnapshot | None, now: datetime, policy: InterlockPolicy
) -> Verdict:
    """What to do with a command that is next in its vehicle's queue."""
    change = STATE_CHANGES.get(cmd.type)
    if change is not None and knows_current(snap, now, policy):
        field, value = change
        if getattr(snap, field) is value:
            return Verdict(
                Action.NOOP,
                "already_"
                + {
                    ("locked", True): "locked",
                    ("locked", False): "unlocked",
                    ("immobilised", True): "immobilised",
                    ("immobilised", False): "mobile",
                }[change],
            )
    unsafe = _unsafe(cmd, snap, now, policy)
    if unsafe is not None:
        return Verdict(Action.WAIT if cmd.on_unsafe == "wait" else Action.REFUSE, unsafe)
    if snap is None or not snap.online:
        return Verdict(Action.OFFLINE, "vehicle_offline")
    return Verdict(Action.SEND)


def _unsafe(
    cmd: Command, snap: VehicleSnapshot | None, now: datetime, policy: InterlockPolicy
) -> str | None:
    """Why sending it now would not be safe, or None."""
    if cmd.type is CommandType.IMMOBILISE:
        # Never while moving; a state too old to tell counts as not safe.
        m = motion(snap, now, policy)
        if m is Motion.MOVING:
            return "vehicle_moving"
        if m is Motion.UNKNOWN:
            return "state_unknown"
    elif cmd.type is CommandType.LOCK and _two_wheeled(snap):
        # A wheel lock bolt cannot engage into turning spokes (e-bikes, scooters, mopeds). Only
        # a known ride holds it back: the lock refuses by itself when unsure, and parked
        # two-wheelers report rarely.
        if motion(snap, now, policy) is Motion.MOVING:
            return "vehicle_moving"
    return None


def _two_wheeled(snap: VehicleSnapshot | None) -> bool:
    if snap is None:
        return False
    form_factor = snap.form_factor
    if form_factor is None and snap.vehicle_type in BUILTIN_BY_ID:
        form_factor = BUILTIN_BY_ID[snap.vehicle_type].form_factor
    return form_factor in TWO_WHEELED
