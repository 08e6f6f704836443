"""`fleetgate demo`: the gateway and a simulated fleet in one process, on embedded PostgreSQL and
Mosquitto unless configured, with a status line every few seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer

from fleetgate.cli.db import migrate_database
from fleetgate.cli.run import DEMO_DATABASE, Services, resolve_services, run_gateway
from fleetgate.cli.shared import load_settings, with_store
from fleetgate.cli.sim import (
    Cars,
    Mix,
    Rate,
    Seed,
    Vehicles,
    drive_fleet,
    fleet_misbehaviour,
    fleet_mix,
    fleet_options,
    register_fleet,
)
from fleetgate.logs import setup_logging
from fleetgate.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from firmware_sim import Fleet
    from gateway.service import Gateway


DEMO_CLIENT_ID = "fleetgate-demo"


def _demo_settings(**overrides) -> Settings:
    """The settings, with the demo's own MQTT client id unless one is configured: with the
    default id of `fleetgate run`, a demo on a configured broker would take a real gateway's
    persistent session over (and acknowledge what it holds)."""
    s = load_settings(**overrides)
    if "mqtt_client_id" in s.model_fields_set:
        return s
    return load_settings(**overrides, mqtt_client_id=DEMO_CLIENT_ID)


def demo(
    vehicles: Vehicles = 200,
    rate: Rate = 1.0,
    seed: Seed = 0,
    cars: Cars = 0.5,
    mix: Mix = None,
    misbehave: Annotated[
        bool,
        typer.Option(
            help="devices send duplicates, garbage, out-of-order "
            "uploads and drop their connections now and then"
        ),
    ] = False,
    api_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="HTTP API and live map (default: FLEETGATE_API_PORT, else 8080; 0: off)",
            show_default=False,
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="the operator's port: /metrics, /healthz, /readyz (default: "
            "FLEETGATE_METRICS_PORT, else 9108; 0: off)",
            show_default=False,
        ),
    ] = None,
    coap_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="CoAP over UDP (default: FLEETGATE_COAP_PORT, else 5683; "
            "FLEETGATE_COAP_ENABLED=false: off)",
            show_default=False,
        ),
    ] = None,
    report_every: Annotated[
        float, typer.Option(min=0.5, help="seconds between status lines")
    ] = 5.0,
) -> None:
    """Gateway + a simulated fleet, on embedded PostgreSQL and Mosquitto unless configured.

    Each run starts with exactly the fleet asked for: the embedded database and broker start
    empty; a configured database is never cleared (vehicles of earlier runs stay there).
    """
    from firmware_sim import Fleet

    s = _demo_settings(api_port=api_port, metrics_port=metrics_port, coap_port=coap_port)
    explicit_format = "log_format" in s.model_fields_set
    setup_logging(
        "WARNING" if "log_level" not in s.model_fields_set else s.log_level,
        s.log_format if explicit_format else "text",
    )
    if busy := _busy_ports(s):
        for problem in busy:
            typer.echo(f"fleetgate: {problem}", err=True)
        raise typer.Exit(2)
    services = resolve_services(s, fresh_demo=True)
    misbehaviour = (
        fleet_misbehaviour(0.02, 0.01, 0.3, 2.0)
        if misbehave
        else fleet_misbehaviour(0.0, 0.0, 0.0, 0.0)
    )
    opts = fleet_options(
        s,
        services.mqtt_host,
        services.mqtt_port,
        vehicles=vehicles,
        rate=rate,
        seed=seed,
        cars=cars,
        cbor=0.2,
        speedup=1.0,
        fast=False,
        samples=None,
        duration=None,
        misbehaviour=misbehaviour,
        mix=fleet_mix(mix),
    )
    typer.echo(
        f"fleetgate demo: {vehicles} simulated vehicles at {rate} samples/s each. Ctrl-C stops."
    )
    for line in _demo_endpoints(s, services):
        typer.echo(f"  {line}")

    try:
        asyncio.run(_run_demo(s, services, Fleet(opts), report_every))
    finally:
        services.close()


async def _run_demo(s: Settings, services: Services, fleet, report_every: float) -> None:
    """Prepare the database for the fleet, then run the gateway with the fleet beside it until
    Ctrl-C; a status line every report_every seconds and a last one once everything stopped."""
    await migrate_database(services.database_url, s)
    await register_fleet(services.database_url, fleet)
    await _say_what_else_the_database_holds(s, services, fleet)
    if s.api_port:
        # A key for this demo run, so the map opens at once (never do this in production).
        _, key = await with_store(
            services.database_url,
            lambda store: store.create_api_key(f"demo-{time.strftime('%Y%m%d-%H%M%S')}", ["admin"]),
        )
        typer.echo(f"live map: http://{s.api_host}:{s.api_port}/map/#key={key}")

    last = {"stored": 0.0, "at": time.monotonic()}
    running: list[Gateway] = []

    async def run_fleet(gateway: Gateway) -> None:
        running.append(gateway)
        await _until_subscribed(gateway)

        async def report() -> None:
            typer.echo(_demo_status(gateway, fleet, last))

        await drive_fleet(fleet, gateway.stopping, report_every, report)

    await run_gateway(s, services, migrate=False, fleet=run_fleet)
    if running:  # after the graceful stop: what it held is committed and acknowledged now
        typer.echo(_demo_status(running[0], fleet, last))


async def _say_what_else_the_database_holds(s: Settings, services: Services, fleet) -> None:
    if s.database_url is None:
        return
    others = await with_store(
        services.database_url, lambda store: _vehicles_besides(store, fleet.device_ids)
    )
    if others:
        typer.echo(
            f"  the configured database holds {others} more vehicles (earlier "
            "runs, or your own): the demo deletes nothing there, so they show "
            "beside its fleet"
        )


def _demo_endpoints(s: Settings, services: Services) -> list[str]:
    """What the demo binds and uses, and how to change each."""
    where = s.data_dir.resolve()
    database = (
        "configured (FLEETGATE_DATABASE_URL)"
        if s.database_url is not None
        else f"embedded, a fresh database {DEMO_DATABASE!r} per run in {where / 'postgres'}"
    )
    broker = f"mqtt://{services.mqtt_host}:{services.mqtt_port} " + (
        "(FLEETGATE_MQTT_URL)"
        if s.mqtt_url is not None
        else f"(embedded, empty at each run, in {where / 'mosquitto-demo'})"
    )
    api = f"http://{s.api_host}:{s.api_port}" if s.api_port else "off"
    ops = f"http://{s.metrics_host}:{s.metrics_port}" if s.metrics_port else "off"
    coap = f"udp {s.coap_host}:{s.coap_port}" if s.coap_enabled else "off"
    return [
        f"database:        {database}",
        f"broker:          {broker}",
        f"HTTP API, map:   {api:<28} --api-port or FLEETGATE_API_PORT (0: off)",
        f"operator's port: {ops:<28} --metrics-port or FLEETGATE_METRICS_PORT (0: off)",
        f"CoAP:            {coap:<28} --coap-port or FLEETGATE_COAP_PORT",
    ]


def _busy_ports(s: Settings) -> list[str]:
    """The ports the gateway would listen on that something else holds, each with its knob."""
    import socket

    wanted = [
        (
            s.api_host,
            s.api_port,
            socket.SOCK_STREAM,
            "HTTP API",
            "--api-port",
            "FLEETGATE_API_PORT",
        ),
        (
            s.metrics_host,
            s.metrics_port,
            socket.SOCK_STREAM,
            "operator's port",
            "--metrics-port",
            "FLEETGATE_METRICS_PORT",
        ),
        (
            s.coap_host,
            s.coap_port if s.coap_enabled else 0,
            socket.SOCK_DGRAM,
            "CoAP (UDP)",
            "--coap-port",
            "FLEETGATE_COAP_PORT",
        ),
    ]
    busy = []
    for host, port, kind, what, option, variable in wanted:
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as probe:
            # As the servers bind: a port a closed connection still waits on is free to them.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                busy.append(
                    f"{what} port {port} on {host} is not free ({exc.strerror}): choose "
                    f"another with {option} or {variable}"
                )
    return busy


async def _vehicles_besides(store, device_ids: list[str]) -> int:
    """How many registered vehicles have none of these devices."""
    registry = await store.load_registry()
    return len(registry.keys() - set(device_ids))


async def _until_subscribed(gateway: Gateway) -> None:
    """Until the gateway takes the fleet's telemetry (its broker readiness check passes), or
    stops; the fleet's first samples then do not wait in the broker."""
    await gateway.ready.wait()
    while not gateway.stopping.is_set() and await gateway.check_subscribed() is not None:
        await asyncio.sleep(0.05)


def _demo_status(gateway: Gateway, fleet: Fleet, last: dict) -> str:
    """One status line from the gateway's metrics and the fleet's connections."""
    m = gateway.metrics.registry
    stored = _metric_total(m, "fleetgate_samples_stored_total")
    dupes = _metric_total(m, "fleetgate_samples_duplicate_total")
    unacknowledged = _metric_total(m, "fleetgate_pipeline_pending_messages")
    rejected: dict[str, int] = {}
    for metric in m.collect():
        if metric.name == "fleetgate_samples_rejected":
            for s in metric.samples:
                if s.name.endswith("_total") and s.value:
                    reason = s.labels["reason"]
                    rejected[reason] = rejected.get(reason, 0) + int(s.value)
    now = time.monotonic()
    rate = (stored - last["stored"]) / max(now - last["at"], 1e-9)
    last.update(stored=stored, at=now)
    online = fleet.connected
    return (
        f"{time.strftime('%H:%M:%S')} stored {int(stored):,} samples ({rate:,.0f}/s), "
        f"duplicates ignored {int(dupes):,}, rejected {rejected or 0}, "
        f"vehicles connected {online}/{len(fleet.device_ids)}, "
        f"unacknowledged {int(unacknowledged)}"
    )


def _metric_total(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)
