"""The command contract as pydantic models: what a caller asks for, what a command is at any time,
what the device answers, and the vehicle state the interlocks judge by. No IO here.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal

import cbor2
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    field_validator,
    model_validator,
)

from commands._time import to_ms


class CommandType(str, Enum):
    LOCK = "lock"
    UNLOCK = "unlock"
    IMMOBILISE = "immobilise"
    MOBILISE = "mobilise"
    LOCATE = "locate"  # beep and/or flash, and report the position now
    SET_SPEED_LIMIT = "set_speed_limit"  # e-bike assist cap, car limiter (slow zones)
    SET_CONFIG = "set_config"  # a few firmware settings


class CommandState(str, Enum):
    QUEUED = "queued"  # accepted, not delivered yet
    WAITING_FOR_SAFE_STATE = "waiting_for_safe_state"  # an interlock holds it back
    SENT = "sent"  # published to the device (maybe again)
    ACKNOWLEDGED = "acknowledged"  # the device said it has it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # refused (by the device or an interlock)
    TIMED_OUT = "timed_out"  # sent, no answer by the deadline
    EXPIRED = "expired"  # never delivered before the deadline
    CANCELLED = "cancelled"  # by the caller, before delivery

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def in_flight(self) -> bool:
        return self in (CommandState.SENT, CommandState.ACKNOWLEDGED)


_TERMINAL = frozenset(
    {
        CommandState.SUCCEEDED,
        CommandState.FAILED,
        CommandState.TIMED_OUT,
        CommandState.EXPIRED,
        CommandState.CANCELLED,
    }
)

# Commands that change what the vehicle reports (lock, immobiliser) and the field they change.
STATE_CHANGES: dict[CommandType, tuple[str, bool]] = {
    CommandType.LOCK: ("locked", True),
    CommandType.UNLOCK: ("locked", False),
    CommandType.IMMOBILISE: ("immobilised", True),
    CommandType.MOBILISE: ("immobilised", False),
}


# --- params, validated per type -------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoParams(_Params):
    pass


class LocateParams(_Params):
    beep: bool = True
    flash: bool = True


class SpeedLimitParams(_Params):
    # km/h; None lifts the cap. 5..250 is what e-bike controllers and car limiters accept.
    kph: Annotated[float, Field(ge=5, le=250)] | None


ConfigKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
ConfigValue = bool | int | float | Annotated[str, StringConstraints(max_length=128)]


class ConfigParams(RootModel[dict[ConfigKey, ConfigValue]]):
    """A few firmware settings: at most 16 keys, at most 1 KiB as JSON."""

    @model_validator(mode="after")
    def _small(self) -> ConfigParams:
        if not self.root:
            raise ValueError("set_config needs at least one setting")
        if len(self.root) > 16:
            raise ValueError("set_config takes at most 16 settings")
        if len(orjson.dumps(self.root)) > 1024:
            raise ValueError("set_config settings are at most 1 KiB as JSON")
        return self


PARAMS: dict[CommandType, type[BaseModel]] = {
    CommandType.LOCK: NoParams,
    CommandType.UNLOCK: NoParams,
    CommandType.IMMOBILISE: NoParams,
    CommandType.MOBILISE: NoParams,
    CommandType.LOCATE: LocateParams,
    CommandType.SET_SPEED_LIMIT: SpeedLimitParams,
    CommandType.SET_CONFIG: ConfigParams,
}

MAX_TTL_S = 7 * 86_400.0  # the gateway's MQTT session expiry: longer would outlive the session

Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class CommandRequest(BaseModel):
    """What a caller (rental, billing, the geofence) asks for. Exactly one of vehicle (the
    operator's vehicle_ref), device_id or vehicle_id (vehicles.id) names the vehicle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vehicle: Name | None = None
    device_id: Name | None = None
    vehicle_id: int | None = None
    type: CommandType
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: Name
    requested_by: Name
    ttl_s: Annotated[float, Field(gt=0, le=MAX_TTL_S)] | None = None  # default: the service's
    deadline: datetime | None = None  # or an absolute one
    on_unsafe: Literal["wait", "refuse"] = "wait"

    @model_validator(mode="after")
    def _check(self) -> CommandRequest:
        named = [x for x in (self.vehicle, self.device_id, self.vehicle_id) if x is not None]
        if len(named) != 1:
            raise ValueError("name the vehicle with exactly one of vehicle, device_id, vehicle_id")
        if self.ttl_s is not None and self.deadline is not None:
            raise ValueError("give ttl_s or deadline, not both")
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError("deadline must carry a time zone")
        # Normalised params (defaults filled in) are what is stored, sent and fingerprinted.
        checked = PARAMS[self.type].model_validate(self.params).model_dump()
        object.__setattr__(self, "params", checked)
        return self

    def fingerprint(self, vehicle_id: int) -> str:
        """What must match for a repeated idempotency key to be the same request."""
        body = orjson.dumps(
            {
                "vehicle": vehicle_id,
                "type": self.type.value,
                "params": self.params,
                "on_unsafe": self.on_unsafe,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return hashlib.sha256(body).hexdigest()[:32]


class Command(BaseModel):
    """A command and where it stands. Changed only through commands.machine."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    seq: int | None = None  # submission order, assigned by the store
    vehicle_id: int
    vehicle_ref: str
    device_id: str
    type: CommandType
    params: dict[str, Any]
    idempotency_key: str
    requested_by: str
    request_hash: str
    on_unsafe: Literal["wait", "refuse"]
    state: CommandState = CommandState.QUEUED
    reason: str | None = None
    created_at: datetime
    deadline: datetime
    sent_at: datetime | None = None
    last_sent_at: datetime | None = None
    acknowledged_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    device_status: str | None = None  # the device's own answer (also a late one)
    device_reason: str | None = None
    device_t: datetime | None = None
    updated_at: datetime

    def downlink(self) -> dict:
        """The payload published on {root}/{device_id}/cmd (docs/protocol.md, Commands)."""
        return {
            "id": str(self.id),
            "type": self.type.value,
            "params": self.params,
            "deadline": to_ms(self.deadline),
        }


class HistoryEntry(BaseModel):
    """One row of a command's history: a state change, or a note (from_state == to_state: a
    retry, a changed waiting reason, a late answer from the device)."""

    model_config = ConfigDict(frozen=True)

    command_id: uuid.UUID
    at: datetime
    from_state: CommandState | None
    to_state: CommandState
    reason: str | None = None
    detail: dict[str, Any] | None = None


class CommandPage(BaseModel):
    items: list[Command]
    next_cursor: int | None  # pass as `before` for the next (older) page


# --- what devices answer ----------------------------------------------------------------------

Reason = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class DeviceResult(BaseModel):
    """`{root}/{device_id}/cmd/result`: {"id", "status", "t", "reason"}. status "received" is
    the optional acknowledgement a device sends on receipt (an additive protocol extension)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: uuid.UUID
    status: Literal["received", "succeeded", "failed"]
    t: int | None = Field(None, ge=0)
    reason: Reason | None = None

    @field_validator("t", mode="before")
    @classmethod
    def _int_ms(cls, v):
        if isinstance(v, bool) or (v is not None and not isinstance(v, int)):
            raise ValueError("t is an integer, ms since the epoch")
        return v

    @classmethod
    def parse(cls, payload: bytes) -> DeviceResult:
        """A result from JSON or CBOR bytes; ValueError (pydantic's included) when it is not one."""
        try:
            body = (
                orjson.loads(payload)
                if payload.lstrip()[:1] in (b"{", b"[")
                else cbor2.loads(payload)
            )
        except (cbor2.CBORError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"result payload is neither JSON nor CBOR: {exc}") from exc
        if not isinstance(body, dict):
            raise ValueError("a result is an object")
        return cls.model_validate(body)


# --- what the interlocks judge by ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VehicleSnapshot:
    """A vehicle's latest known state (vehicle_state) and its last actuation, at one moment.

    state_time is the newest sample's time (device clock); last_actuation the device time of
    the newest state-changing command that succeeded. A sample older than that actuation
    cannot tell what the actuation did.
    """

    vehicle_id: int
    vehicle_type: str | None = None  # vehicle_types.id: "ebike", "scooter", "car", ...
    online: bool = False
    state_time: datetime | None = None
    speed_kmh: float | None = None
    ignition: bool | None = None
    locked: bool | None = None
    immobilised: bool | None = None
    last_actuation: datetime | None = None
    form_factor: str | None = None  # its type's GBFS form factor (None: the type's id tells)
    # The platform holding its command authority when not fleetgate (a fleet migration):
    # nothing is delivered then, a command not sent yet fails with reason not_held.
    held_by: str | None = None
