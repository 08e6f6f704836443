"""What the API's routes need, handed to create_app() by whoever runs it (`fleetgate run` with
the gateway in the same process, or the API alone)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from api.feed_service import FeedService
from commands.ports import CommandDispatcher, CommandReader
from telemetry.store import TelemetryStore

if TYPE_CHECKING:
    from api.key_cache import KeyCache
    from api.live import LiveHub


@dataclass
class ApiContext:
    store: TelemetryStore
    live: LiveHub
    key_cache: KeyCache
    commands: CommandDispatcher | None = None  # where the dispatcher runs in this process
    command_reads: CommandReader | None = None  # reading commands needs only the database
    broker_access: Any = None  # gateway.broker_auth.BrokerAccess, for EMQX's HTTP hooks
    # Readiness checks: name -> coroutine returning None when fine, else the reason.
    readiness: dict[str, Callable[[], Awaitable[str | None]]] = field(default_factory=dict)
    map_tiles_url: str | None = None
    map_attribution: str = ""
    # The public GBFS feeds and the MDS Provider API (system None: not configured, 404).
    feeds: FeedService = field(default_factory=lambda: FeedService(None))
    map_style_url: str | None = None  # a MapLibre style (vector tiles) for the map's background
    # The ports this process serves on besides the API's own (the operator's): a webhook URL
    # pointing at one of them is refused (api/routes/webhooks.py).
    own_ports: frozenset[int] = frozenset()
    # The go-live gate of a migration batch (GET /v1/migration/gate), handed over by the roof
    # (fleetgate/go_live.py): (store, batch) -> the verdict as JSON, None for an unknown batch.
    migration_gate: Callable[[TelemetryStore, str], Awaitable[dict[str, Any] | None]] | None = None
    # Set when the server stops: responses that wait (a command's `wait`) answer at once.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


def context(request: Request) -> ApiContext:
    return request.app.state.fleetgate
