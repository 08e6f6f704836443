"""MDS 2.0 Provider API for the agencies that license the fleet: /mds/vehicles,
/mds/vehicles/status, /mds/trips, /mds/telemetry, /mds/events/historical, /mds/events/recent.

Bearer API keys with the scope `mds:read` (one key per agency). Responses carry MDS's media
type `application/vnd.mds+json;version=2.0`; an Accept header asking for another MDS version is
406. Errors are MDS error bodies ({error, error_description, error_details}); paginated lists
have `links.next` (a URL, null on the last page)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from api import feed_queries
from api.auth import require
from api.context import ApiContext, context
from api.problems import PROBLEM_RESPONSES, Problem
from feeds import MDS_MEDIA_TYPE, BadHour, MdsProvider, mds_mode, parse_hour
from feeds.mds import MDS_VERSION, NEAR_REALTIME_TTL_MS, RECENT_EVENTS_SPAN, envelope, ms

_VERSION_PARAM = re.compile(r"version\s*=\s*([0-9.]+)")
HOUR = timedelta(hours=1)


class MdsError(Exception):
    """An MDS error response: status, `error` code, description, details."""

    def __init__(self, status: int, error: str, description: str, *details: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.details = list(details) or [description]


def install(app: FastAPI) -> None:
    @app.exception_handler(MdsError)
    async def _mds_error(request: Request, exc: MdsError):
        body = {
            "error": exc.error,
            "error_description": exc.description,
            "error_details": exc.details,
        }
        return Response(orjson.dumps(body), status_code=exc.status, media_type=MDS_MEDIA_TYPE)


def negotiated(request: Request) -> None:
    """MDS: a client names the version it wants in Accept; another major.minor is 406."""
    for part in request.headers.get("accept", "").split(","):
        if "application/vnd.mds+json" in part:
            match = _VERSION_PARAM.search(part)
            if match and not MDS_VERSION.startswith(match.group(1)):
                raise MdsError(
                    406,
                    "unsupported_version",
                    f"MDS version {match.group(1)} is not served here; this is {MDS_VERSION}",
                )


def provider(
    request: Request,
    provider_id: Annotated[str | None, Query(description="this provider's id, if given")] = None,
) -> MdsProvider:
    system = context(request).feeds.system
    if system is None or system.provider_id is None:
        raise Problem(
            404, "mds-not-configured", "no MDS provider is configured here (docs/feeds.md)"
        )
    if provider_id is not None and provider_id != system.provider_id:
        raise MdsError(404, "unknown_provider", f"provider_id {provider_id!r} is not served here")
    return MdsProvider(system.provider_id)


Provider = Annotated[MdsProvider, Depends(provider)]
router = APIRouter(
    prefix="/mds",
    tags=["mds"],
    responses=PROBLEM_RESPONSES,
    dependencies=[require("mds:read"), Depends(negotiated)],
)


def _respond(document: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(document), status_code=status, media_type=MDS_MEDIA_TYPE)


def _next_link(request: Request, cursor: str | None) -> dict[str, str | None]:
    if cursor is None:
        return {"next": None}
    params = {k: v for k, v in request.query_params.items() if k != "cursor"}
    params["cursor"] = cursor
    return {"next": f"{request.url.replace(query=urlencode(params))}"}


def _page_size(ctx: ApiContext) -> int:
    return ctx.feeds.mds_page_size


@router.get("/vehicles", summary="MDS vehicles (properties that seldom change)")
async def vehicles(
    request: Request, mds: Provider, cursor: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    ctx = context(request)
    limit = _page_size(ctx)
    rows = await feed_queries.mds_vehicles(ctx.store, cursor, limit)
    items = [mds.vehicle(r) for r in rows]
    more = rows[-1]["vehicle_ref"] if len(rows) == limit else None
    return _respond(
        envelope(
            "vehicles",
            items,
            links=_next_link(request, more),
            last_updated=ms(ctx.feeds.clock()),
            ttl=NEAR_REALTIME_TTL_MS,
        )
    )


@router.get("/vehicles/status", summary="MDS vehicle status (latest event and telemetry)")
async def vehicles_status(
    request: Request, mds: Provider, cursor: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    ctx = context(request)
    limit = _page_size(ctx)
    rows = await feed_queries.mds_statuses(ctx.store, cursor, limit)
    items = []
    for row in rows:
        row["trip_ids"] = [row["open_trip"]] if row["open_trip"] else None
        items.append(mds.vehicle_status(row, mds_mode(row["form_factor"])))
    more = rows[-1]["vehicle_ref"] if len(rows) == limit else None
    return _respond(
        envelope(
            "vehicles_status",
            items,
            links=_next_link(request, more),
            last_updated=ms(ctx.feeds.clock()),
            ttl=NEAR_REALTIME_TTL_MS,
        )
    )


async def _vehicle_ref(ctx: ApiContext, mds: MdsProvider, device_id: str) -> str:
    """The vehicle a device_id names (UUIDv5s cannot be reversed: the fleet's are computed,
    and remembered until one is asked for that is not known)."""
    try:
        device_id = str(uuid.UUID(device_id))
    except ValueError:
        raise MdsError(400, "bad_param", f"device_id {device_id!r} is not a UUID") from None
    known = ctx.feeds.device_refs
    if device_id not in known:
        refs = await feed_queries.all_vehicle_refs(ctx.store)
        known.clear()
        known.update({mds.device_id(r): r for r in refs})
    if device_id not in known:
        raise MdsError(404, "not_found", f"no vehicle with device_id {device_id}")
    return known[device_id]


@router.get("/vehicles/status/{device_id}", summary="MDS status of one vehicle")
async def vehicle_status(request: Request, mds: Provider, device_id: str) -> Response:
    ctx = context(request)
    row = await feed_queries.mds_status(ctx.store, await _vehicle_ref(ctx, mds, device_id))
    if row is None:
        raise MdsError(404, "not_found", f"vehicle {device_id} has reported no position yet")
    row["trip_ids"] = [row["open_trip"]] if row["open_trip"] else None
    item = mds.vehicle_status(row, mds_mode(row["form_factor"]))
    return _respond(
        envelope(
            "vehicles_status", [item], last_updated=ms(ctx.feeds.clock()), ttl=NEAR_REALTIME_TTL_MS
        )
    )


@router.get("/vehicles/{device_id}", summary="One MDS vehicle")
async def vehicle(request: Request, mds: Provider, device_id: str) -> Response:
    ctx = context(request)
    row = await feed_queries.mds_vehicle(ctx.store, await _vehicle_ref(ctx, mds, device_id))
    if row is None:  # removed since the device ids were computed
        raise MdsError(404, "not_found", f"no vehicle with device_id {device_id}")
    return _respond(
        envelope(
            "vehicles",
            [mds.vehicle(row)],
            last_updated=ms(ctx.feeds.clock()),
            ttl=NEAR_REALTIME_TTL_MS,
        )
    )


def _past_hour(ctx: ApiContext, text: str | None, name: str) -> tuple[datetime, bool]:
    """The hour named, and whether it is over (MDS: a running hour is 202, a future one 404)."""
    try:
        hour = parse_hour(text, name)
    except BadHour as exc:
        raise MdsError(400, "bad_param", str(exc), f"{name}: expected YYYY-MM-DDTHH") from None
    now = ctx.feeds.clock()
    if hour > now:
        raise MdsError(404, "not_found", f"{name} {text} is not in the past")
    return hour, hour + HOUR <= now


@router.get("/trips", summary="MDS trips that ended in one UTC hour (end_time=YYYY-MM-DDTHH)")
async def trips(
    request: Request, mds: Provider, end_time: Annotated[str | None, Query()] = None
) -> Response:
    ctx = context(request)
    hour, over = _past_hour(ctx, end_time, "end_time")
    if not over:
        return _respond(envelope("trips", []), status=202)
    rides = await feed_queries.rides_between(ctx.store, hour, hour + HOUR)
    ended = [
        r
        for r in rides
        if r.end_time is not None and hour.timestamp() <= r.end_time < (hour + HOUR).timestamp()
    ]
    refs = await feed_queries.vehicle_refs(ctx.store, [r.vehicle for r in ended])
    items = []
    for ride in ended:
        vehicle = refs[ride.vehicle]
        if ride.figures is not None:
            # A measured trip: the regulator is told what billing was told.
            f = ride.figures
            start = {"lat": f.start_lat, "lon": f.start_lon}
            end = {"lat": f.end_lat, "lon": f.end_lon}
            distance_m = f.distance_m
        else:
            track = await feed_queries.ride_track(ctx.store, ride)
            if not track:
                continue  # no fix at all: MDS needs the start and end location
            start = {"lat": track[0][1], "lon": track[0][2]}
            end = {"lat": track[-1][1], "lon": track[-1][2]}
            distance_m = feed_queries.track_distance_m(track)
        items.append(
            mds.trip(
                ride,
                vehicle["vehicle_ref"],
                mds_mode(vehicle["form_factor"]),
                start,
                end,
                distance_m,
            )
        )
    return _respond(envelope("trips", items))


def _cursor_pair(cursor: str) -> tuple[int, int]:
    if not cursor:
        return (0, 0)
    try:
        t, v = cursor.split("_", 1)
        return int(t), int(v)
    except ValueError:
        raise MdsError(400, "bad_param", f"cursor {cursor!r} is not one this API gave") from None


@router.get("/telemetry", summary="MDS telemetry of one UTC hour (telemetry_time=YYYY-MM-DDTHH)")
async def telemetry(
    request: Request,
    mds: Provider,
    telemetry_time: Annotated[str | None, Query()] = None,
    cursor: Annotated[str, Query(max_length=100)] = "",
) -> Response:
    ctx = context(request)
    hour, _ = _past_hour(ctx, telemetry_time, "telemetry_time")
    after = _cursor_pair(cursor)
    limit = _page_size(ctx)
    rows = await feed_queries.telemetry_between(ctx.store, hour, hour + HOUR, after, limit)
    rides = await feed_queries.rides_between(ctx.store, hour, hour + HOUR)
    by_vehicle: dict[int, list] = {}
    for ride in rides:
        by_vehicle.setdefault(ride.vehicle, []).append(ride)
    items = []
    for row in rows:
        trips = [r.trip_id for r in by_vehicle.get(row["vehicle"], ()) if r.covers(row["time"])]
        items.append(mds.telemetry(row, trips or None))
    more = f"{rows[-1]['time_us']}_{rows[-1]['vehicle']}" if len(rows) == limit else None
    return _respond(envelope("telemetry", items, links=_next_link(request, more)))


async def _events(
    ctx: ApiContext, mds: MdsProvider, start: datetime, end: datetime, cursor: str
) -> tuple[list[dict], str | None]:
    try:
        after = int(cursor or 0)
    except ValueError:
        raise MdsError(400, "bad_param", f"cursor {cursor!r} is not one this API gave") from None
    limit = _page_size(ctx)
    rows = await feed_queries.events_between(ctx.store, start, end, after, limit)
    rides = await feed_queries.rides_between(ctx.store, start, end)
    by_unlock = {r.trip_id: r for r in rides}
    by_vehicle: dict[int, list] = {}
    for ride in rides:
        by_vehicle.setdefault(ride.vehicle, []).append(ride)
    items = []
    for row in rows:
        trip_id = _trip_of(row, by_unlock, by_vehicle)
        event = mds.event(row, mds_mode(row["form_factor"]), trip_id)
        if event is not None:
            items.append(event)
    more = str(rows[-1]["id"]) if len(rows) == limit else None
    return items, more


def _trip_of(row: dict, by_unlock: dict, by_vehicle: dict) -> str | None:
    """The ride an event belongs to: an unlock opens its own, a lock closes the one it ends."""
    if row["source"] == "command" and row["type"] == "unlock":
        return row["command_id"] if row["command_id"] in by_unlock else None
    if row["source"] == "command" and row["type"] == "lock":
        ended = [
            r
            for r in by_vehicle.get(row["vehicle"], ())
            if r.end_time is not None and abs(r.end_time - row["time"]) < 3600
        ]
        return min(ended, key=lambda r: abs(r.end_time - row["time"])).trip_id if ended else None
    return None


@router.get("/events/historical", summary="MDS events of one UTC hour (event_time=YYYY-MM-DDTHH)")
async def events_historical(
    request: Request,
    mds: Provider,
    event_time: Annotated[str | None, Query()] = None,
    cursor: Annotated[str, Query(max_length=40)] = "",
) -> Response:
    ctx = context(request)
    hour, over = _past_hour(ctx, event_time, "event_time")
    if not over:
        return _respond(envelope("events", []), status=202)
    items, more = await _events(ctx, mds, hour, hour + HOUR, cursor)
    return _respond(envelope("events", items, links=_next_link(request, more)))


@router.get("/events/recent", summary="MDS events between two times of the last two weeks (ms)")
async def events_recent(
    request: Request,
    mds: Provider,
    start_time: Annotated[str | None, Query()] = None,
    end_time: Annotated[str | None, Query()] = None,
    cursor: Annotated[str, Query(max_length=40)] = "",
) -> Response:
    ctx = context(request)
    start, end = _recent_range(ctx, start_time, end_time)
    items, more = await _events(ctx, mds, start, end, cursor)
    return _respond(envelope("events", items, links=_next_link(request, more)))


def _recent_range(ctx: ApiContext, start_time, end_time) -> tuple[datetime, datetime]:
    missing = [n for n, v in (("start_time", start_time), ("end_time", end_time)) if not v]
    if missing:
        raise MdsError(400, "missing_param", "a required parameter is missing", *missing)
    try:
        start_ms, end_ms = int(start_time), int(end_time)
    except ValueError:
        raise MdsError(
            400, "bad_param", "start_time and end_time are milliseconds since the epoch"
        ) from None
    now = ctx.feeds.clock()
    oldest = ms(now - RECENT_EVENTS_SPAN)
    if not start_ms < end_ms:
        raise MdsError(400, "bad_param", "start_time must be before end_time")
    if start_ms < oldest:
        raise MdsError(
            400,
            "bad_param",
            "events/recent serves the last two weeks only; use events/historical for older",
            f"start_time must be >= {oldest}",
        )
    tz = now.tzinfo
    return datetime.fromtimestamp(start_ms / 1000, tz), datetime.fromtimestamp(end_ms / 1000, tz)
