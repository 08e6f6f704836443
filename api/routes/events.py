"""Events about vehicles (device, geofence, battery, command, presence, alarm, trip): a query and
a live stream (SSE)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api import queries
from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem
from api.routes._params import next_page, parse_bbox, time_range
from api.schemas import Event, EventPage
from outbound import outbound_type

router = APIRouter(tags=["events"], responses=PROBLEM_RESPONSES)

KEEPALIVE_S = 15.0


@router.get(
    "/v1/events",
    response_model=EventPage,
    summary="Query events",
    dependencies=[require("fleet:read")],
)
async def list_events(
    request: Request,
    vehicle: Annotated[str | None, Query(description="vehicle_ref")] = None,
    type: Annotated[str | None, Query(pattern=r"^[a-z0-9_.]{1,48}$")] = None,
    source: Annotated[
        str | None, Query(pattern="^(device|geofence|battery|gateway|command|vehicle|alarm|trip)$")
    ] = None,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    after: Annotated[int | None, Query(ge=0, description="cursor: the last event id seen")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EventPage:
    store = context(request).store
    vehicle_id = None
    if vehicle is not None:
        vehicle_id = await queries.vehicle_id(store, vehicle)
        if vehicle_id is None:
            raise Problem(404, "unknown-vehicle", f"no vehicle {vehicle!r}")
    if start is not None or end is not None:
        start, end = time_range(start, end)
    rows = await queries.events(
        store,
        vehicle=vehicle_id,
        type=type,
        source=source,
        start=start,
        end=end,
        after=after,
        limit=limit + 1,
        commit_ordered=True,  # a page never skips an event that commits late
    )
    items = [
        Event.model_validate(
            {**r, "outbound_type": outbound_type(r["source"], r["type"], r["detail"])}
        )
        for r in rows[:limit]
    ]
    next_url = next_page(request, len(rows), items, "id")
    return EventPage(items=items, next=next_url)


@router.get(
    "/v1/stream",
    summary="Live positions and events (Server-Sent Events)",
    dependencies=[require("fleet:read")],
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "SSE: `positions` (a JSON array of vehicles' new "
            "state), `event` (one event), `dropped` (events "
            "lost to a slow reader), and keep-alive comments",
        }
    },
)
async def stream(
    request: Request,
    vehicle: Annotated[list[str] | None, Query(description="only these vehicle_refs")] = None,
    bbox: Annotated[str | None, Query(description="min_lon,min_lat,max_lon,max_lat")] = None,
    positions: bool = True,
    events: bool = True,
) -> StreamingResponse:
    hub = context(request).live
    sub = hub.subscribe(
        vehicles=frozenset(vehicle) if vehicle else None,
        bbox=parse_bbox(bbox),
        positions=positions,
        events=events,
    )

    async def body():
        try:
            yield b": fleetgate live stream\n\n"
            while True:
                messages = await sub.take(KEEPALIVE_S)
                for name, data in messages:
                    yield b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
                if sub.closed:  # the server is stopping: end the response, the reader reconnects
                    yield b": server stopping\n\n"
                    return
                if not messages:
                    yield b": keep-alive\n\n"
        finally:
            hub.unsubscribe(sub)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def sse_data(payload: bytes) -> object:  # for clients and tests reading the stream
    return orjson.loads(payload)
