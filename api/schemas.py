"""The API's contract: pydantic models of what it returns and accepts (the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from telemetry.vehicle_types import VEHICLE_TYPE_ID_RULE

Status = Literal["available", "on_trip", "low_battery", "offline", "immobilised"]
VehicleType = Annotated[
    str, Field(pattern=VEHICLE_TYPE_ID_RULE, description="a vehicle type's id (/v1/vehicle-types)")
]


class Vehicle(BaseModel):
    """A vehicle's latest known state (vehicle_overview). Null: not reported yet."""

    vehicle_ref: str
    device_id: str
    vehicle_type: VehicleType
    status: Status
    online: bool
    time: datetime | None = Field(None, description="newest sample")
    lat: float | None = None
    lon: float | None = None
    fix_time: datetime | None = Field(None, description="time of lat/lon")
    speed_kmh: float | None = None
    heading_deg: float | None = None
    soc_pct: float | None = None
    range_m: float | None = Field(None, description="battery core estimate")
    soh_pct: float | None = Field(None, description="battery core estimate")
    aux_v: float | None = None
    aux_hours_to_threshold: float | None = None
    odometer_m: float | None = None
    locked: bool | None = None
    ignition: bool | None = None
    immobilised: bool | None = None
    charging: bool | None = None
    last_seen: datetime | None = None
    zones: list[str] = Field(default_factory=list, description="zones the vehicle is in")


class Page(BaseModel):
    next: str | None = Field(None, description="URL of the next page; null on the last")


class VehiclePage(Page):
    items: list[Vehicle]


class TrackPoint(BaseModel):
    t: datetime
    lat: float | None
    lon: float | None
    speed_kmh: float | None = None
    soc_pct: float | None = None
    samples: int = 1
    implausible: int = Field(
        0,
        description="samples of the point whose fix is flagged as an "
        "implausible jump (raw: 1 when this fix is one)",
    )


class Track(BaseModel):
    vehicle_ref: str
    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    bucket: str
    points: list[TrackPoint]
    truncated: bool = Field(False, description="more points than max_points in the range")

    model_config = ConfigDict(populate_by_name=True)


class Event(BaseModel):
    id: int
    time: datetime
    vehicle_ref: str
    source: str
    type: str
    detail: dict[str, Any] | None = None
    received_at: datetime


class EventPage(Page):
    items: list[Event]


class Health(BaseModel):
    status: Literal["ok", "unready"]
    checks: dict[str, str] = Field(default_factory=dict)
