"""GBFS v3.0 feeds, public (no key, as the standard expects): /gbfs/v3/manifest.json and
/gbfs/v3/{system_id}/{file}.json. Each file is built by the feeds core from live state, kept
for its ttl (FeedCache) and rate-limited per client address; an unconfigured system is 404."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response

from api import feed_queries
from api.context import ApiContext, context
from api.problems import PROBLEM_RESPONSES, Problem
from feeds import FeedSystem, GbfsFeeds
from feeds.gbfs import STATIC_TTL_S, manifest

router = APIRouter(prefix="/gbfs/v3", tags=["feeds"], responses=PROBLEM_RESPONSES)
# Files that follow the fleet: cached for the system's ttl; the rest for STATIC_TTL_S.
LIVE_FILES = frozenset({"vehicle_status", "station_status", "system_alerts"})


def rate_limited(request: Request) -> None:
    service = context(request).feeds
    client = request.client.host if request.client else "unknown"
    wait = service.limiter.admit(client)
    if wait > 0:
        raise Problem(
            429,
            "rate-limited",
            "too many feed requests from this address; the ttl of each file says how often "
            "it changes",
            headers={"Retry-After": str(max(1, round(wait)))},
        )


def configured_system(request: Request) -> FeedSystem:
    system = context(request).feeds.system
    if system is None:
        raise Problem(
            404,
            "feeds-not-configured",
            "no GBFS system is configured here (FLEETGATE_FEEDS, docs/feeds.md)",
        )
    return system


@router.get(
    "/manifest.json",
    summary="GBFS manifest: the systems served here",
    dependencies=[Depends(rate_limited)],
)
async def gbfs_manifest(request: Request) -> Response:
    system = configured_system(request)
    service = context(request).feeds

    async def build() -> bytes:
        return orjson.dumps(manifest([system], service.clock()))

    body, _ = await service.cache.get("manifest", STATIC_TTL_S, build)
    return _json(body, STATIC_TTL_S)


@router.get(
    "/{system_id}/{name}.json",
    summary="One GBFS v3.0 file of a system (gbfs.json lists them)",
    dependencies=[Depends(rate_limited)],
)
async def gbfs_file(
    request: Request,
    system_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
    name: Annotated[str, Path(pattern=r"^[a-z_]{1,40}$")],
) -> Response:
    system = configured_system(request)
    if system_id != system.system_id:
        raise Problem(404, "unknown-feed-system", f"no GBFS system {system_id!r} here")
    ctx = context(request)
    builder = BUILDERS.get(name)
    if builder is None:
        raise Problem(404, "unknown-feed", f"GBFS has no file {name}.json")
    ttl = system.ttl_s if name in LIVE_FILES else STATIC_TTL_S

    async def build() -> bytes:
        feeds = await _feeds(ctx, system)
        document = await builder(ctx, feeds, ctx.feeds.clock())
        return b"" if document is None else orjson.dumps(document)

    body, _ = await ctx.feeds.cache.get(name, ttl, build)
    if not body:
        raise Problem(404, "unknown-feed", f"system {system_id!r} does not publish {name}.json")
    return _json(body, ttl)


def _json(body: bytes, ttl: int) -> Response:
    return Response(
        body, media_type="application/json", headers={"Cache-Control": f"public, max-age={ttl}"}
    )


async def _feeds(ctx: ApiContext, system: FeedSystem) -> GbfsFeeds:
    types = await ctx.store.vehicle_types()
    _, stations = await feed_queries.zones_and_stations(ctx.store, system.language)
    return GbfsFeeds(system, types, has_stations=bool(stations))


Builder = Callable[[ApiContext, GbfsFeeds, datetime], Awaitable[dict[str, Any] | None]]


async def _discovery(ctx, feeds, now):
    return feeds.discovery(now)


async def _versions(ctx, feeds, now):
    return feeds.versions(now)


async def _system_information(ctx, feeds, now):
    return feeds.system_information(now, manifest_url=_manifest_url(feeds.system))


async def _vehicle_types(ctx, feeds, now):
    return feeds.vehicle_types_file(now)


async def _vehicle_status(ctx, feeds, now):
    _, stations = await feed_queries.zones_and_stations(ctx.store, feeds.system.language)
    fleet = await feed_queries.fleet_state(ctx.store, [s.station_id for s in stations])
    return feeds.vehicle_status(fleet, now)


async def _station_information(ctx, feeds, now):
    _, stations = await feed_queries.zones_and_stations(ctx.store, feeds.system.language)
    return feeds.station_information(stations, now) if stations else None


async def _station_status(ctx, feeds, now):
    _, stations = await feed_queries.zones_and_stations(ctx.store, feeds.system.language)
    if not stations:
        return None
    fleet = await feed_queries.fleet_state(ctx.store, [s.station_id for s in stations])
    return feeds.station_status(stations, fleet, now)


async def _geofencing_zones(ctx, feeds, now):
    document, _ = await feed_queries.zones_and_stations(ctx.store, feeds.system.language)
    return feeds.geofencing_zones(document, now)


async def _pricing_plans(ctx, feeds, now):
    return feeds.pricing_plans(now) if feeds.system.pricing_plans else None


async def _alerts(ctx, feeds, now):
    return feeds.alerts(now) if feeds.system.alerts else None


def _manifest_url(system: FeedSystem) -> str:
    return f"{system.base_url.rstrip('/')}/gbfs/v3/manifest.json"


BUILDERS: dict[str, Builder] = {
    "gbfs": _discovery,
    "gbfs_versions": _versions,
    "system_information": _system_information,
    "vehicle_types": _vehicle_types,
    "vehicle_status": _vehicle_status,
    "station_information": _station_information,
    "station_status": _station_status,
    "geofencing_zones": _geofencing_zones,
    "system_pricing_plans": _pricing_plans,
    "system_alerts": _alerts,
}
