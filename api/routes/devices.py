"""Devices: registering a vehicle's TCU with its first secret, listing, rotating secrets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem
from telemetry.store import (
    AlreadyProvisioned,
    DeviceCredentials,
    RegistrationConflict,
    UnknownDevice,
    UnknownVehicleType,
    VehicleRegistration,
)
from telemetry.topics import DEVICE_ID_PATTERN
from telemetry.vehicle_types import VEHICLE_TYPE_ID_RULE

router = APIRouter(
    prefix="/v1/devices",
    tags=["devices"],
    responses=PROBLEM_RESPONSES,
    dependencies=[require("devices:write")],
)
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]


class DeviceIn(BaseModel):
    vehicle_ref: str = Field(min_length=1, max_length=128)
    device_id: str = Field(
        pattern=DEVICE_ID_PATTERN,
        description="the TCU's MQTT client id and CoAP path segment",
    )
    vehicle_type: str = Field(
        pattern=VEHICLE_TYPE_ID_RULE,
        description="a vehicle type's id (GET /v1/vehicle-types): ebike, scooter, car, ...",
    )


class Secret(BaseModel):
    device_id: str
    secret: str = Field(description="MQTT password and CoAP token; shown once, stored hashed")
    created_at: datetime
    previous_valid_until: datetime | None = Field(
        None, description="rotation: when the replaced secret stops working"
    )


class Registered(BaseModel):
    vehicle_ref: str
    device_id: str
    vehicle_type: str
    credentials: Secret | None = Field(
        None,
        description="null when the device had a valid secret already (rotate to get a new one)",
    )


class DeviceInfo(BaseModel):
    device_id: str
    vehicle_ref: str
    valid_credentials: int
    issued_at: datetime | None
    grace_until: datetime | None


@router.post(
    "",
    response_model=Registered,
    status_code=201,
    summary="Register a vehicle's device and issue its first secret",
)
async def register_device(request: Request, device: DeviceIn) -> Registered:
    store = context(request).store
    try:
        await store.register_vehicles(
            [VehicleRegistration(device.vehicle_ref, device.device_id, device.vehicle_type)]
        )
    except RegistrationConflict as exc:
        raise Problem(409, "device-conflict", str(exc)) from None
    except UnknownVehicleType as exc:
        raise Problem(
            422,
            "unknown-vehicle-type",
            str(exc),
            errors=[
                {"loc": ["body", "vehicle_type"], "msg": str(exc), "type": "unknown-vehicle-type"}
            ],
            known_vehicle_types=exc.known,
        ) from None
    try:
        issued = await DeviceCredentials(store).provision(device.device_id)
        secret = Secret(**issued.__dict__)
    except AlreadyProvisioned:
        secret = None
    return Registered(**device.model_dump(), credentials=secret)


@router.get("", response_model=list[DeviceInfo], summary="Devices and their credentials' state")
async def list_devices(request: Request) -> list[DeviceInfo]:
    infos = await DeviceCredentials(context(request).store).list()
    return [
        DeviceInfo(
            device_id=i.device_id,
            vehicle_ref=i.vehicle_ref,
            valid_credentials=i.valid,
            issued_at=i.issued_at,
            grace_until=i.grace_until,
        )
        for i in infos
    ]


@router.post(
    "/{device_id}/credentials",
    response_model=Secret,
    summary="Rotate a device's secret (the old one stays valid for grace_s)",
)
async def rotate(
    request: Request,
    device_id: DeviceId,
    grace_s: Annotated[float, Query(ge=0, le=30 * 86_400)] = 86_400.0,
) -> Secret:
    try:
        issued = await DeviceCredentials(context(request).store).rotate(device_id, grace_s=grace_s)
    except UnknownDevice:
        raise Problem(404, "unknown-device", f"no device {device_id!r}") from None
    return Secret(**issued.__dict__)
