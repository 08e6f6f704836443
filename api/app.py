"""The HTTP API: create_app(context) builds the FastAPI application with every router.

`fleetgate run` serves it beside the gateway; `fleetgate api` serves it alone. Either way the
routes only see an ApiContext, never settings or the gateway itself.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from api import problems
from api.context import ApiContext
from api.input_guard import RefuseUnstorableInput
from api.routes import (
    broker,
    commands,
    devices,
    events,
    gbfs,
    health,
    keys,
    map,
    mds,
    migration,
    migration_gate,
    migration_shadow,
    migration_validation,
    trips,
    usage,
    vehicle_types,
    vehicles,
    webhooks,
    zones,
)

DESCRIPTION = """fleetgate's HTTP API for rental, billing, fleet operations and administrators.

Every route but `/healthz`, `/readyz` and the public GBFS feeds (`/gbfs/v3/…`) needs an API
key (`Authorization: Bearer fgk_…` or `X-API-Key`) with the scope the route names. Errors are
RFC 9457 problem details (`application/problem+json`). Lists are paginated with a cursor:
follow `next`. The MDS Provider API (`/mds/…`, scope `mds:read`) answers in MDS's own format.
"""


def _installed_version() -> str:
    """The fleetgate distribution's version, as OpenAPI reports it."""
    try:
        return version("fleetgate")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="fleetgate",
        version=_installed_version(),
        description=DESCRIPTION,
        openapi_tags=[
            {"name": n}
            for n in (
                "vehicles",
                "vehicle-types",
                "trips",
                "commands",
                "zones",
                "events",
                "webhooks",
                "devices",
                "usage",
                "feeds",
                "mds",
                "migration",
                "health",
            )
        ],
    )
    app.state.fleetgate = ctx
    problems.install(app)
    mds.install(app)
    app.add_middleware(RefuseUnstorableInput)
    for module in (
        health,
        keys,
        vehicles,
        vehicle_types,
        trips,
        commands,
        usage,
        events,
        webhooks,
        zones,
        devices,
        broker,
        map,
        gbfs,
        mds,
        migration,
        migration_gate,
        migration_shadow,
        migration_validation,
    ):
        app.include_router(module.router)
    return app
