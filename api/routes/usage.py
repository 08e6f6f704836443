"""Usage per booking for billing: distance, duration and energy of each ride between a
succeeded unlock and the following succeeded lock (by the device's execution times)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api import queries
from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem
from api.routes._params import time_range
from telemetry.earth import haversine_m

router = APIRouter(
    tags=["usage"], responses=PROBLEM_RESPONSES, dependencies=[require("fleet:read")]
)


class Ride(BaseModel):
    unlock_command: uuid.UUID
    lock_command: uuid.UUID | None = Field(None, description="null: not locked yet (ongoing)")
    started_at: datetime
    ended_at: datetime | None
    duration_s: float
    distance_m: float | None = Field(
        None, description="odometer difference, else the sum of distances between plausible fixes"
    )
    distance_source: str | None = None
    soc_start_pct: float | None = None
    soc_end_pct: float | None = None
    energy_wh: float | None = Field(
        None,
        description="pack voltage x current integrated over "
        "the ride where reported, else SoC used x nominal pack energy",
    )
    energy_source: str | None = None
    samples: int
    unlocked_again: bool = Field(False, description="another unlock came before any lock")


class Usage(BaseModel):
    vehicle_ref: str
    rides: list[Ride]


@router.get(
    "/v1/vehicles/{vehicle_ref}/usage",
    response_model=Usage,
    summary="Rides (unlock to lock) overlapping a time range, with distance, duration and energy",
)
async def vehicle_usage(
    request: Request,
    vehicle_ref: str,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    unlock_command: Annotated[
        uuid.UUID | None, Query(description="only the ride this unlock started (a booking's start)")
    ] = None,
) -> Usage:
    start, end = time_range(start, end, default=timedelta(days=1))
    store = context(request).store
    rows = await queries.vehicle(store, vehicle_ref)
    if rows is None:
        raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle_ref!r}")
    vehicle = await queries.vehicle_id(store, vehicle_ref)
    sessions = await queries.usage_sessions(store, vehicle, start, end, unlock_command)
    vehicle_type = (await store.vehicle_types()).get(rows["vehicle_type"])
    capacity_wh = vehicle_type.battery_capacity_wh if vehicle_type is not None else None
    rides = []
    for s in sessions:
        until = s["ended_at"] or datetime.now(UTC)
        samples = await queries.samples_between(store, vehicle, s["started_at"], until)
        rides.append(_ride(s, until, samples, capacity_wh))
    return Usage(vehicle_ref=vehicle_ref, rides=rides)


def _ride(session: dict, until: datetime, samples: list[dict], capacity_wh: float | None) -> Ride:
    ride = Ride(
        unlock_command=session["unlock_command"],
        lock_command=session["lock_command"],
        started_at=session["started_at"],
        ended_at=session["ended_at"],
        duration_s=(until - session["started_at"]).total_seconds(),
        samples=len(samples),
        unlocked_again=bool(session["unlocked_again"]),
    )
    if not samples:
        return ride
    col = {
        k: np.array([r[k] for r in samples], dtype=float)
        for k in ("lat", "lon", "odometer_m", "soc_pct", "pack_v", "pack_a")
    }
    t = np.array([r["time"].timestamp() for r in samples])
    plausible = np.array([(r["flags"] or 0) & 1 == 0 for r in samples])
    odo = col["odometer_m"][~np.isnan(col["odometer_m"])]
    fix = plausible & ~np.isnan(col["lat"])
    if len(odo) >= 2:
        ride.distance_m, ride.distance_source = float(odo[-1] - odo[0]), "odometer"
    elif fix.sum() >= 2:
        lat, lon = col["lat"][fix], col["lon"][fix]
        ride.distance_m = float(haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:]).sum())
        ride.distance_source = "fixes"
    soc = col["soc_pct"][~np.isnan(col["soc_pct"])]
    if len(soc):
        ride.soc_start_pct, ride.soc_end_pct = float(soc[0]), float(soc[-1])
    power = col["pack_v"] * col["pack_a"]  # W, positive while discharging
    known = ~np.isnan(power)
    if known.sum() >= 2 and known.mean() >= 0.8:
        p, tk = np.clip(power[known], 0, None), t[known]
        ride.energy_wh = float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(tk)) / 3600.0)
        ride.energy_source = "pack_power"
    elif len(soc) >= 2 and capacity_wh is not None:
        used = max(float(soc[0] - soc[-1]), 0.0)
        ride.energy_wh = used / 100.0 * capacity_wh
        ride.energy_source = "soc_x_nominal_capacity"
    return ride
