"""Remote commands for the rental and billing modules: lock, unlock, immobilise, mobilise, locate,
set_speed_limit, set_config. Created with an Idempotency-Key; the call waits up to `wait`
seconds for the device's answer (200) and otherwise returns 202 with the command's URL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem, field_errors, invalid
from commands import (
    Command,
    CommandDispatcher,
    CommandNotFound,
    CommandReader,
    CommandRequest,
    CommandState,
    CommandType,
    IdempotencyConflict,
    InvalidDeadline,
    NotCancellable,
    NotHeld,
    UnknownVehicle,
)
from commands.model import MAX_TTL_S, PARAMS
from telemetry.store import ApiKey

router = APIRouter(tags=["commands"], responses=PROBLEM_RESPONSES)
MAX_WAIT_S = 30.0


class CommandIn(BaseModel):
    type: CommandType
    params: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description=(
            'set_speed_limit: {"kph": 5..250 | null}; locate: {"beep", "flash"}; '
            "set_config: {key: scalar}; others: {}"
        ),
    )
    ttl_s: float | None = Field(
        None,
        gt=0,
        le=MAX_TTL_S,
        description="deadline from now; default: the gateway's FLEETGATE_COMMAND_TTL_S",
    )
    deadline: datetime | None = Field(None, description="absolute deadline (RFC 3339) instead")
    on_unsafe: Literal["wait", "refuse"] = Field(
        "wait", description="immobilise of a moving vehicle: wait for a safe state, or fail"
    )

    @field_validator("params")
    @classmethod
    def _params_of_the_type(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Checked here so that bad params are a request validation error, every reason listed
        # with its place (body.params.kph); the command service normalises them.
        command_type = info.data.get("type")
        if command_type is not None:
            PARAMS[command_type].model_validate(params)
        return params


class CommandOut(BaseModel):
    id: uuid.UUID
    vehicle_ref: str
    device_id: str
    type: CommandType
    params: dict[str, Any]
    idempotency_key: str
    requested_by: str
    on_unsafe: Literal["wait", "refuse"]
    state: CommandState
    reason: str | None = None
    created_at: datetime
    deadline: datetime
    sent_at: datetime | None = None
    acknowledged_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int
    device_status: str | None = Field(
        None, description="the device's own answer, also a late one after timed_out"
    )
    device_reason: str | None = None
    device_t: datetime | None = Field(None, description="device time of the execution")


class CommandList(BaseModel):
    items: list[CommandOut]
    next: str | None = None


class HistoryOut(BaseModel):
    at: datetime
    from_state: CommandState | None
    to_state: CommandState
    reason: str | None = None
    detail: dict[str, Any] | None = None


def _service(request: Request) -> CommandDispatcher:
    """The dispatcher, for creating and cancelling commands."""
    service = context(request).commands
    if service is None:
        raise Problem(
            503,
            "commands-unavailable",
            "commands are created and cancelled by the "
            "process that runs the gateway (`fleetgate run`), not by the API alone",
            headers={"Retry-After": "30"},
        )
    return service


def _reads(request: Request) -> CommandReader:
    """Reading commands needs only the database: the dispatcher where it runs here, else the
    read side alone."""
    ctx = context(request)
    return ctx.commands or ctx.command_reads or _service(request)


def _out(command: Command) -> CommandOut:
    return CommandOut.model_validate(command.model_dump())


@router.post(
    "/v1/vehicles/{vehicle_ref}/commands",
    response_model=CommandOut,
    status_code=200,
    summary="Send a command to a vehicle",
    responses={
        202: {
            "model": CommandOut,
            "description": "accepted, not finished within `wait`; follow Location",
        }
    },
)
async def create_command(
    request: Request,
    vehicle_ref: str,
    body: CommandIn,
    idempotency_key: Annotated[
        str,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=64,
            pattern=r"^[A-Za-z0-9_.:-]+$",
            description="the same key returns the same command, never a second one",
        ),
    ],
    key: ApiKey = require("commands:write"),
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for the device's answer")
    ] = 0.0,
):
    service = _service(request)
    try:
        command = await service.submit(
            CommandRequest(
                vehicle=vehicle_ref,
                type=body.type,
                params=body.params,
                ttl_s=body.ttl_s,
                deadline=body.deadline,
                on_unsafe=body.on_unsafe,
                idempotency_key=idempotency_key,
                requested_by=key.name,
            )
        )
    except UnknownVehicle:
        raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle_ref!r}") from None
    except IdempotencyConflict as exc:
        raise Problem(409, "idempotency-conflict", str(exc)) from None
    except NotHeld as exc:
        # During a fleet migration: the legacy platform commands this vehicle, not fleetgate.
        raise Problem(409, "not-held", str(exc), holder=exc.holder) from None
    except InvalidDeadline as exc:
        field = "deadline" if body.deadline is not None else "ttl_s"
        raise invalid("invalid-deadline", str(exc), ("body", field)) from None
    except ValidationError as exc:
        errors = field_errors(exc.errors(), ("body",))
        where = ".".join(map(str, errors[0]["loc"]))
        raise Problem(
            422, "invalid-command", f"{where}: {errors[0]['msg']}", errors=errors
        ) from None
    if wait > 0 and not command.state.terminal:
        command = await _wait_unless_stopping(request, service, command, wait)
    out = _out(command).model_dump(mode="json")
    location = f"/v1/commands/{command.id}"
    if command.state.terminal:
        return JSONResponse(out, status_code=200, headers={"Location": location})
    return JSONResponse(out, status_code=202, headers={"Location": location})


async def _wait_unless_stopping(
    request: Request, service: CommandDispatcher, command: Command, wait: float
) -> Command:
    """The command once final or after `wait` s; as it was accepted if the server stops first
    (the caller gets 202 and follows Location, rather than a cut connection)."""
    waiting = asyncio.ensure_future(service.wait(command.id, wait))
    stopping = asyncio.ensure_future(context(request).stopping.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        return waiting.result() if waiting.done() else command
    finally:
        for task in (waiting, stopping):
            task.cancel()


@router.get(
    "/v1/commands/{command_id}",
    response_model=CommandOut,
    summary="A command",
    dependencies=[require("fleet:read")],
)
async def get_command(request: Request, command_id: uuid.UUID) -> CommandOut:
    try:
        return _out(await _reads(request).get(command_id))
    except CommandNotFound:
        raise Problem(404, "unknown-command", f"no command {command_id}") from None


@router.get(
    "/v1/commands/{command_id}/history",
    response_model=list[HistoryOut],
    summary="Every state change of a command, with its time",
    dependencies=[require("fleet:read")],
)
async def command_history(request: Request, command_id: uuid.UUID) -> list[HistoryOut]:
    try:
        entries = await _reads(request).history(command_id)
    except CommandNotFound:
        raise Problem(404, "unknown-command", f"no command {command_id}") from None
    return [HistoryOut.model_validate(e.model_dump()) for e in entries]


@router.get(
    "/v1/commands",
    response_model=CommandList,
    summary="Commands, newest first",
    dependencies=[require("fleet:read")],
)
async def list_commands(
    request: Request,
    vehicle: Annotated[str | None, Query(description="vehicle_ref")] = None,
    state: Annotated[list[CommandState] | None, Query()] = None,
    type: CommandType | None = None,
    requested_by: str | None = None,
    before: Annotated[int | None, Query(ge=0, description="cursor from `next`")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> CommandList:
    try:
        page = await _reads(request).list(
            vehicle=vehicle,
            states=state,
            type=type,
            requested_by=requested_by,
            before=before,
            limit=limit,
        )
    except UnknownVehicle:
        raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle!r}") from None
    next_url = None
    if page.next_cursor is not None:
        next_url = str(request.url.include_query_params(before=page.next_cursor))
    return CommandList(items=[_out(c) for c in page.items], next=next_url)


@router.post(
    "/v1/commands/{command_id}/cancel",
    response_model=CommandOut,
    summary="Cancel a command that has not been sent yet",
)
async def cancel_command(
    request: Request, command_id: uuid.UUID, key: ApiKey = require("commands:write")
) -> CommandOut:
    try:
        return _out(await _service(request).cancel(command_id, by=key.name))
    except CommandNotFound:
        raise Problem(404, "unknown-command", f"no command {command_id}") from None
    except NotCancellable as exc:
        raise Problem(409, "not-cancellable", str(exc)) from None
