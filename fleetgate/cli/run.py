"""`fleetgate run`, `fleetgate api` and `fleetgate drain`: the gateway process with its HTTP API
and operator's port, the API alone, and the draining of a retired process's broker session.

Where no database or broker is configured, run and drain start embedded ones in data_dir
(resolve_services); the demo runs its gateway with run_gateway too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from fleetgate.cli.db import migrate_database
from fleetgate.cli.shared import database_url, fail, install_signal_handlers, load_settings
from fleetgate.logs import setup_logging
from fleetgate.settings import Settings

if TYPE_CHECKING:
    from gateway.service import Gateway, GatewayConfig
    from telemetry.store import TelemetryStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Where the database and broker are, after starting embedded ones where none is configured."""

    database_url: str
    mqtt_host: str
    mqtt_port: int
    embedded: list = field(default_factory=list)

    def close(self) -> None:
        for svc in reversed(self.embedded):
            svc.stop()


DEMO_DATABASE = "fleetgate_demo"


def resolve_services(s: Settings, *, fresh_demo: bool = False) -> Services:
    """Configured services as they are; embedded ones started in data_dir. With fresh_demo the
    embedded ones start empty: a new demo database, a broker without earlier runs' sessions."""
    from fleetgate.embedded import Mosquitto, embedded_postgres_dsn

    embedded = []
    if s.database_url is not None:
        dsn = s.database_url.get_secret_value()
    else:
        dsn = embedded_postgres_dsn(
            s.data_dir / "postgres", fresh_database=DEMO_DATABASE if fresh_demo else None
        )
        log.info("embedded_postgres_started", extra={"dsn": dsn})
    if s.mqtt_url is not None:
        host, port = s.mqtt_host_port
    else:
        broker_dir = (s.data_dir / ("mosquitto-demo" if fresh_demo else "mosquitto")).resolve()
        if fresh_demo:
            (broker_dir / "mosquitto.db").unlink(missing_ok=True)
        broker = Mosquitto(datadir=broker_dir).start()
        embedded.append(broker)
        host, port = broker.host, broker.port
        log.info("embedded_broker_started", extra={"url": broker.url})
    return Services(dsn, host, port, embedded)


# --- the gateway process ----------------------------------------------------------------------


def run(
    migrate: Annotated[bool, typer.Option(help="apply migrations before starting")] = True,
) -> None:
    """Run the gateway (MQTT ingress into the telemetry store) until SIGTERM/SIGINT."""
    from gateway.service import GatewayFailed

    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    services = resolve_services(s)
    try:
        asyncio.run(run_gateway(s, services, migrate=migrate))
    except GatewayFailed as exc:  # logged with its traceback as gateway_failed
        fail(f"the gateway failed: {exc}", 1)
    finally:
        services.close()


async def run_gateway(
    s: Settings,
    services: Services,
    *,
    migrate: bool,
    fleet: Callable[[Gateway], Awaitable[None]] | None = None,
) -> None:
    """The gateway with its operator's port and HTTP API (where their ports are set) until it
    stops; fleet(gateway), where given, runs beside them (the demo's simulated fleet)."""
    from fleetgate.wiring import gateway_config
    from gateway.service import Gateway

    if migrate:
        await migrate_database(services.database_url, s)
    gateway = Gateway(
        gateway_config(s, services.database_url, services.mqtt_host, services.mqtt_port)
    )
    install_signal_handlers(gateway.stop, s.shutdown_grace_s, services.close)
    tasks = [asyncio.create_task(gateway.run(), name="gateway")]
    if s.metrics_port:
        tasks.append(asyncio.create_task(serve_ops(s, gateway), name="ops"))
    if s.api_port:
        tasks.append(
            asyncio.create_task(
                serve_api(s, services.database_url, gateway.stopping, gateway=gateway), name="api"
            )
        )
    if fleet is not None:
        tasks.append(asyncio.create_task(fleet(gateway), name="fleet"))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    gateway.stop()
    for task in tasks:
        if task.done() and task.exception():
            raise task.exception()
    await asyncio.gather(*tasks, return_exceptions=True)


async def serve_ops(s: Settings, gateway: Gateway) -> None:
    """The operator's port (/metrics, /healthz, /readyz) until the gateway stops."""
    from fleetgate.wiring import http_server, operator_app

    server = http_server(operator_app(gateway), s.metrics_host, s.metrics_port, s.shutdown_grace_s)
    serving = asyncio.create_task(server.serve(), name="ops-uvicorn")
    log.info(
        "metrics_listening", extra={"url": f"http://{s.metrics_host}:{s.metrics_port}/metrics"}
    )
    try:
        await asyncio.wait(
            {serving, asyncio.ensure_future(gateway.stopping.wait())},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if serving.done():
            serving.result()  # it could not listen: say why
    finally:
        server.should_exit = True
        await asyncio.gather(serving, return_exceptions=True)


# --- the HTTP API -----------------------------------------------------------------------------


async def serve_api(
    s: Settings, dsn: str, stop: asyncio.Event, *, gateway: Gateway | None = None
) -> None:
    """The HTTP API until stop is set; beside a gateway its live feed follows every commit."""
    from api import LiveHub, create_app
    from fleetgate.wiring import api_alone, api_beside_gateway, api_context, http_server

    store = await open_store_retrying(dsn, stop, s.api_db_deadline_s)
    if store is None:
        return
    hub = LiveHub(store)
    ctx = api_context(s, store, hub, stop)
    attach = None
    if gateway is not None:
        attach = api_beside_gateway(ctx, gateway)
    else:
        api_alone(ctx)
    server = http_server(create_app(ctx), s.api_host, s.api_port, s.shutdown_grace_s)
    feed = asyncio.create_task(hub.run(stop), name="live-feed")
    serving = asyncio.create_task(server.serve(), name="uvicorn")
    log.info("api_listening", extra={"url": f"http://{s.api_host}:{s.api_port}"})
    try:
        await asyncio.wait(
            {serving, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        server.should_exit = True
        hub.close()  # open streams end now; uvicorn would wait for them
        await asyncio.gather(serving, return_exceptions=True)
        companions = [task for task in (feed, attach) if task is not None]
        for task in companions:
            task.cancel()
        await asyncio.gather(*companions, return_exceptions=True)
        await store.close()
    if serving.done() and not serving.cancelled() and serving.exception():
        raise serving.exception()


async def open_store_retrying(
    dsn: str, stop: asyncio.Event, deadline_s: float
) -> TelemetryStore | None:
    """The API's store, once the database answers (None when stop is set first), with
    deadline_s for each request's database work."""
    from telemetry.store import TelemetryStore, retry_while_unavailable

    def unavailable(exc: Exception, retry_in_s: float) -> None:
        log.warning("database_unavailable", extra={"operation": "api", "error": str(exc)[:200]})

    return await retry_while_unavailable(
        lambda: TelemetryStore.open(dsn, operation_deadline_s=deadline_s),
        unavailable,
        first_s=2.0,
        max_s=2.0,
        stop=stop,
    )


def api_alone() -> None:
    """Serve the HTTP API and live map alone (the gateway runs elsewhere)."""
    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    dsn = database_url(s)

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop.set, s.shutdown_grace_s)
        await serve_api(s, dsn, stop)

    asyncio.run(main())


# --- draining a retired process's session -----------------------------------------------------


def drain(
    client_id: Annotated[
        str,
        typer.Argument(help="the MQTT client id of a gateway process that was stopped for good"),
    ],
    timeout: Annotated[
        float,
        typer.Option(
            help="give up after this many seconds; the session then stays, with what is left"
        ),
    ] = 600.0,
    force: Annotated[
        bool,
        typer.Option(
            help="drain even though the id's retained presence says online (a stale message, e.g. "
            "after the broker lost the process's last will)"
        ),
    ] = False,
) -> None:
    """Store what the broker still holds for a retired gateway process's session, then end it.

    Mosquitto keeps sending a share of the telemetry to a stopped process's persistent session
    until it expires, and then discards it. Run this after the remaining processes are up: it
    resumes the session, leaves the shared subscription, stores everything the session held
    (exactly as `fleetgate run` would) and ends the session. Stop the process first: a client
    id still in use (its retained presence says online) is refused. Exit status 0 when the session
    was emptied and ended.
    """
    s = load_settings(mqtt_client_id=client_id)
    setup_logging(s.log_level, s.log_format)
    services = resolve_services(s)
    try:
        error = asyncio.run(_drain_session(s, services, timeout, force))
    finally:
        services.close()
    if error:
        fail(error, 1)


async def _drain_session(
    s: Settings, services: Services, timeout: float, force: bool
) -> str | None:
    from fleetgate.wiring import gateway_config
    from gateway.service import Gateway

    config = gateway_config(s, services.database_url, services.mqtt_host, services.mqtt_port)
    in_use = await _client_id_in_use(config)
    if in_use and not force:
        return in_use
    config.drain = True
    gateway = Gateway(config)
    install_signal_handlers(gateway.stop, s.shutdown_grace_s, services.close)
    draining = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(asyncio.shield(draining), timeout)
    except TimeoutError:
        gateway.stop()
        await draining
        return (
            f"session {s.mqtt_client_id} not drained within {timeout:g} s; what was stored "
            "is acknowledged, the rest stays in the session: run drain again"
        )
    if gateway.drain_error:
        return gateway.drain_error
    if gateway.drain_report is None:  # set once the session is empty, and only then
        return f"stopped before session {s.mqtt_client_id} was drained; run drain again"
    typer.echo(orjson.dumps({**gateway.drain_report, "session_ended": True}).decode())
    return None


async def _client_id_in_use(config: GatewayConfig) -> str | None:
    """Why the client id's retained presence says a process still runs with it, or None."""
    from gateway.mqtt_ingress import read_presence

    presence = await read_presence(config.mqtt, config.mqtt_topic_root)
    if presence is None or presence.get("state") != "online":
        return None
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(presence.get("t", 0) / 1000))
    return (
        f"client id {config.mqtt_client_id} is online (pid {presence.get('pid')} on "
        f"{presence.get('host')} since {since}): a gateway process still runs with it; "
        "stop that process first (--force if the presence is stale)"
    )
