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
    outbound_type: str | None = Field(
        None,
        description="the catalogue name it is announced under to webhooks (docs/webhooks.md); "
        "null: not announced",
    )


class EventPage(Page):
    items: list[Event]


class Health(BaseModel):
    status: Literal["ok", "unready"]
    checks: dict[str, str] = Field(default_factory=dict)


TripStatus = Literal["open", "closing", "ended"]


class Place(BaseModel):
    lat: float
    lon: float


class Trip(BaseModel):
    """A ride from unlock to lock. Figures are measured once the trip is closed (status
    `ended`) from its stored samples, and again when samples of it arrive late (`revision`
    counts the measurements announced); null: not measured yet, or not reported by the vehicle."""

    id: int
    vehicle_ref: str
    vehicle_type: str
    status: TripStatus
    revision: int = Field(description="1 at trip.ended, +1 for every trip.updated")
    started_at: datetime
    ended_at: datetime | None = None
    start: Place | None = None
    end: Place | None = None
    duration_s: float | None = None
    distance_m: float | None = Field(None, description="odometer where reported, else fixes")
    distance_source: Literal["odometer", "fixes", "fixes+odometer"] | None = None
    gps_distance_m: float | None = Field(None, description="from the plausible fixes alone")
    energy_wh: float | None = Field(None, description="see energy_source")
    energy_source: Literal["pack_power", "soc"] | None = Field(
        None, description="pack voltage × current integrated, or SoC used × nominal pack energy"
    )
    soc_start_pct: float | None = None
    soc_end_pct: float | None = None
    max_speed_kmh: float | None = None
    fixes_used: int | None = None
    fixes_rejected: int | None = Field(None, description="flagged fixes and GPS jumps left out")
    zones_visited: list[str] | None = None
    end_zone: str | None = Field(None, description="the zone whose rules govern the end")
    parking_allowed: bool | None = Field(None, description="GBFS ride_end_allowed at the end")
    ended_outside_operating_area: bool | None = None
    speeding_episodes: int | None = None
    unlock_command: str | None = Field(None, description="the unlock command that began it")
    lock_command: str | None = Field(None, description="the lock command that ended it")
    measured_at: datetime | None = None
    route: list[TrackPoint] | None = Field(None, description="GET /v1/trips/{id} with route")


class TripPage(Page):
    items: list[Trip]


# --- webhooks (docs/webhooks.md) ---------------------------------------------------------------


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s) URL the events are POSTed to", max_length=2048)
    event_types: list[str] | None = Field(
        None, description="catalogue names to deliver; null: every type", max_length=100
    )
    description: str = Field("", max_length=500)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=2048)
    event_types: list[str] | None = Field(None, max_length=100)
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = Field(None, description="true re-enables a subscription a 410 ended")


class Webhook(BaseModel):
    id: str
    url: str
    event_types: list[str] | None
    description: str
    enabled: bool
    disabled_reason: str | None = None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(Webhook):
    secret: str = Field(description="the signing secret: shown this once, keep it")


class WebhookList(BaseModel):
    items: list[Webhook]


class WebhookDelivery(BaseModel):
    event_id: int
    type: str
    vehicle_ref: str
    state: Literal["delivered", "retrying", "dead"]
    attempts: int
    first_attempt_at: datetime
    last_attempt_at: datetime
    next_attempt_at: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None


class WebhookDeliveryPage(Page):
    items: list[WebhookDelivery]


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_event_id: int = Field(ge=0, description="deliver again every event from this id on")


class RedriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_ids: list[int] | None = Field(
        None, description="the dead letters to re-drive; null: all of them", max_length=10_000
    )


class WebhookActionResult(BaseModel):
    events: int = Field(description="how many events are delivered again")
