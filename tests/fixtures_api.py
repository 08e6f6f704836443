"""The HTTP API served for real (uvicorn on a free port) against the test's own database, with
API keys of every scope."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn

from api import ApiContext, KeyCache, LiveHub, create_app
from fleetgate.embedded import free_port
from gateway.broker_auth import BrokerAccess
from gateway.commands import CommandReads, CommandStore
from telemetry.store import DeviceCredentials, TelemetryStore

KEY_SCOPES = {
    "reader": ["fleet:read"],
    "rental": ["fleet:read", "commands:write"],
    "ops": ["fleet:read", "zones:write"],
    "provisioning": ["devices:write"],
    "emqx": ["broker:auth"],
    "agency": ["mds:read"],
    "billing": ["webhooks:write"],
    "legacy": ["migration:write"],
    "admin": ["admin"],
}


@dataclass
class ApiServer:
    url: str
    store: TelemetryStore
    context: ApiContext
    keys: dict[str, str] = field(default_factory=dict)

    def client(
        self, key: str | None = "admin", headers: dict | None = None, **kw
    ) -> httpx.AsyncClient:
        auth = {} if key is None else {"Authorization": f"Bearer {self.keys[key]}"}
        return httpx.AsyncClient(
            base_url=self.url, headers={**auth, **(headers or {})}, timeout=10.0, **kw
        )


@pytest.fixture
async def api_server(pg_dsn):
    store = await TelemetryStore.open(pg_dsn)
    hub = LiveHub(store, poll_interval_s=0.1, min_interval_s=0.01)
    ctx = ApiContext(
        store=store,
        live=hub,
        key_cache=KeyCache(0),
        readiness={"database": store.check_writable},
        broker_access=BrokerAccess("fg/v1", DeviceCredentials(store).verify),
        command_reads=CommandReads(CommandStore(store.pool)),
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ctx),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
        )
    )
    server.install_signal_handlers = lambda: None
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve())
    feed = asyncio.create_task(hub.run(stop))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    api = ApiServer(f"http://127.0.0.1:{port}", store, ctx)
    for name, scopes in KEY_SCOPES.items():
        api.keys[name] = (await store.create_api_key(name, scopes))[1]
    try:
        yield api
    finally:
        server.should_exit = True
        stop.set()
        await asyncio.gather(serving, feed, return_exceptions=True)
        await store.close()
