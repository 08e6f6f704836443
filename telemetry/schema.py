"""The device payloads of docs/protocol.md as pydantic models.

These models are the readable contract (and its JSON Schema); the hot path validates columns with
numpy in telemetry.decoder and is tested to agree with them on generated payloads.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

# The rule lives in telemetry.topics; decoders of earlier revisions import it from here, as
# benchmarks/decoder.py --compare-with loads them beside today's schema.
from telemetry.topics import DEVICE_ID_PATTERN as DEVICE_ID_PATTERN

# Limits the protocol states; decoder.py uses the same numbers.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_SAMPLES_PER_MESSAGE = 1000
LAT_RANGE = (-90.0, 90.0)
LON_RANGE = (-180.0, 180.0)
SOC_RANGE = (0.0, 100.0)
SPEED_RANGE = (0.0, 400.0)
HEADING_RANGE = (0.0, 360.0)
# Times the store can write as a timestamp: 1970 to the end of the year 9999, where Python's
# datetime ends.
STORABLE_TIME_MS = (0, 253_402_300_799_999)
EVENT_TYPE_PATTERN = r"^[a-z0-9_]{1,48}$"

Number = float | int


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class Sample(BaseModel):
    """One telemetry sample (docs/protocol.md, "Telemetry samples")."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    t: StrictInt = Field(description="sample time, ms since the Unix epoch, UTC")
    lat: Annotated[Number | None, Field(ge=LAT_RANGE[0], le=LAT_RANGE[1])] = None
    lon: Annotated[Number | None, Field(ge=LON_RANGE[0], le=LON_RANGE[1])] = None
    speed_kmh: Annotated[Number | None, Field(ge=SPEED_RANGE[0], le=SPEED_RANGE[1])] = None
    heading_deg: Annotated[Number | None, Field(ge=HEADING_RANGE[0], le=HEADING_RANGE[1])] = None
    soc_pct: Annotated[Number | None, Field(ge=SOC_RANGE[0], le=SOC_RANGE[1])] = None
    pack_v: Number | None = None
    pack_a: Number | None = None
    aux_v: Number | None = None
    odometer_m: Number | None = None
    locked: StrictBool | None = None
    ignition: StrictBool | None = None
    immobilised: StrictBool | None = None
    charging: StrictBool | None = None

    _check_finite = field_validator(
        "lat",
        "lon",
        "speed_kmh",
        "heading_deg",
        "soc_pct",
        "pack_v",
        "pack_a",
        "aux_v",
        "odometer_m",
        mode="before",
    )(_finite)

    @model_validator(mode="after")
    def _fix_is_whole(self) -> Sample:
        if (self.lat is None) != (self.lon is None):
            raise ValueError("lat and lon come together or not at all")
        return self


class DeviceEventPayload(BaseModel):
    """One device event (docs/protocol.md, "Device events")."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    t: StrictInt
    type: Annotated[str, Field(pattern=EVENT_TYPE_PATTERN)]
    detail: dict[str, Any] | None = None


class Status(BaseModel):
    """Presence, retained on {root}/{device_id}/status (docs/protocol.md, "Presence")."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    online: StrictBool
    t: Annotated[StrictInt, Field(ge=STORABLE_TIME_MS[0], le=STORABLE_TIME_MS[1])] | None = None
    fw: str | None = None
