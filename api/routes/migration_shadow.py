"""The parallel run's HTTP intake (docs/dialects.md): a legacy platform that forwards positions
over HTTP (Traccar's `forward.type=json`) posts them here; they are stored as legacy observations,
apart from fleetgate's own positions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES
from telemetry.schema import HEADING_RANGE, LAT_RANGE, LON_RANGE, SPEED_RANGE
from telemetry.store import LegacyObservation, LegacyObservations
from telemetry.topics import DEVICE_ID_RULE

router = APIRouter(prefix="/v1/migration", tags=["migration"], responses=PROBLEM_RESPONSES)

KNOT_KMH = 1.852
SOURCE_RULE = r"^[a-z0-9][a-z0-9_-]{0,47}$"


class TraccarPosition(BaseModel):
    """The fields of Traccar's Position that fleetgate keeps (the others are ignored)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    fixTime: AwareDatetime = Field(description="when the fix was taken (RFC 3339 with offset)")
    latitude: float = Field(ge=LAT_RANGE[0], le=LAT_RANGE[1])
    longitude: float = Field(ge=LON_RANGE[0], le=LON_RANGE[1])
    speed: float | None = Field(None, ge=0, le=SPEED_RANGE[1] / KNOT_KMH, description="knots")
    course: float | None = Field(None, ge=HEADING_RANGE[0], le=HEADING_RANGE[1])
    altitude: float | None = Field(None, ge=-1000, le=100_000, description="metres")
    accuracy: float | None = Field(None, ge=0, le=1e7, description="metres")
    valid: bool | None = None
    attributes: dict = Field(default_factory=dict, description="kept as sent (battery, ...)")


class TraccarDevice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    uniqueId: str = Field(
        pattern=f"^{DEVICE_ID_RULE}$",
        description="the device's id on the legacy platform; matched to fleetgate's device id",
    )


class TraccarForward(BaseModel):
    """The body of Traccar's position forwarding with forward.type=json."""

    model_config = ConfigDict(extra="ignore")

    position: TraccarPosition
    device: TraccarDevice


class ShadowStored(BaseModel):
    stored: bool = Field(description="false: the same source, device and time was stored before")
    vehicle_matched: bool = Field(description="a fleetgate vehicle has this device id")


@router.post(
    "/shadow/{source}",
    response_model=ShadowStored,
    status_code=202,
    summary="Take a legacy platform's forwarded position (parallel run), stored apart",
    dependencies=[require("migration:write")],
)
async def shadow_position(
    request: Request,
    source: Annotated[str, Path(pattern=SOURCE_RULE, description="which legacy platform")],
    body: TraccarForward,
) -> ShadowStored:
    p = body.position
    stored, vehicle = await LegacyObservations(context(request).store).add(
        LegacyObservation(
            source=source,
            legacy_device=body.device.uniqueId,
            time=p.fixTime,
            lat=p.latitude,
            lon=p.longitude,
            speed_kmh=None if p.speed is None else p.speed * KNOT_KMH,
            heading_deg=p.course,
            altitude_m=p.altitude,
            accuracy_m=p.accuracy,
            valid=p.valid,
            attributes=p.attributes,
        )
    )
    return ShadowStored(stored=stored, vehicle_matched=vehicle is not None)
