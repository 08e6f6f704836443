"""The `fleetgate` command: run the gateway, drive the simulator, migrate the database, demo.

Every subcommand reads the one Settings object (FLEETGATE_* environment, optional env file and
TOML config file); where no database or broker is configured, `run` and `demo` start embedded
ones in data_dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from fleetgate.logs import setup_logging
from fleetgate.settings import Settings, SettingsError, sources

if TYPE_CHECKING:
    from firmware_sim import FleetOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="fleetgate: IoT fleet gateway and telemetry backend",
)
db_app = typer.Typer(no_args_is_help=True, help="Database schema")
config_app = typer.Typer(no_args_is_help=True, help="Settings")
zones_app = typer.Typer(no_args_is_help=True, help="Geofencing zones (GBFS v3 rules)")
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(zones_app, name="zones")
log = logging.getLogger(__name__)


def load_settings(**overrides) -> Settings:
    try:
        return Settings.load(**overrides)
    except SettingsError as exc:
        typer.echo(f"fleetgate: {exc}", err=True)
        raise typer.Exit(2) from exc


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


def _install_signal_handlers(stop, grace_s: float | None = None, on_forced_exit=None) -> None:
    """The first SIGTERM/SIGINT calls stop(); a second one, or grace_s later, exits at once."""
    from fleetgate.shutdown import StopSignals

    StopSignals(stop, grace_s, on_forced_exit).install()


async def _migrate(dsn: str, s: Settings):
    from telemetry.store import migrate

    report = await migrate(dsn, storage=s.storage, retention_days=s.retention_days)
    log.info("database_migrated", extra={"report": str(report)})
    return report


@db_app.command("migrate")
def db_migrate(
    storage: Annotated[str | None, typer.Option(help="auto | timescaledb | native")] = None,
) -> None:
    """Create or upgrade the schema (idempotent, versioned)."""
    s = load_settings(storage=storage)
    setup_logging(s.log_level, s.log_format)
    dsn = _database_url(s)
    from telemetry.store import MigrationError, StoreUnavailable

    try:
        report = asyncio.run(_migrate(dsn, s))
    except (MigrationError, StoreUnavailable) as exc:
        typer.echo(f"fleetgate: migration failed: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(str(report))


@config_app.command("show")
def config_show(
    with_sources: Annotated[
        bool,
        typer.Option(
            "--sources",
            help="each value with where it came from: default, environment, env file "
            "or config file",
        ),
    ] = False,
) -> None:
    """Print the effective settings (JSON), secrets masked."""
    shown = load_settings().masked()
    if with_sources:
        origin = sources()
        shown = {k: {"value": v, "source": origin.get(k, "default")} for k, v in shown.items()}
    typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())


@app.command()
def run(
    migrate: Annotated[bool, typer.Option(help="apply migrations before starting")] = True,
) -> None:
    """Run the gateway (MQTT ingress into the telemetry store) until SIGTERM/SIGINT."""
    from gateway.service import GatewayFailed

    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    services = resolve_services(s)
    try:
        asyncio.run(_run_gateway(s, services, migrate=migrate))
    except GatewayFailed as exc:  # logged with its traceback as gateway_failed
        typer.echo(f"fleetgate: the gateway failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        services.close()


async def _run_gateway(s: Settings, services: Services, *, migrate: bool, fleet=None) -> None:
    from gateway.service import Gateway, GatewayConfig

    if migrate:
        await _migrate(services.database_url, s)
    gateway = Gateway(
        GatewayConfig.from_settings(
            s, services.database_url, services.mqtt_host, services.mqtt_port
        )
    )
    _install_signal_handlers(gateway.stop, s.shutdown_grace_s, services.close)
    tasks = [asyncio.create_task(gateway.run(), name="gateway")]
    if s.metrics_port:
        tasks.append(asyncio.create_task(_serve_ops(s, gateway), name="ops"))
    if s.api_port:
        tasks.append(
            asyncio.create_task(
                _serve_api(s, services.database_url, gateway.stopping, gateway=gateway), name="api"
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


@app.command()
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
        typer.echo(f"fleetgate: {error}", err=True)
        raise typer.Exit(1)


async def _drain_session(
    s: Settings, services: Services, timeout: float, force: bool
) -> str | None:
    from gateway.mqtt_ingress import read_presence
    from gateway.service import Gateway, GatewayConfig

    config = GatewayConfig.from_settings(
        s, services.database_url, services.mqtt_host, services.mqtt_port
    )
    presence = await read_presence(
        config.mqtt_host,
        config.mqtt_port,
        config.mqtt_topic_root,
        config.mqtt_client_id,
        username=config.mqtt_username,
        password=config.mqtt_password,
        protocol=config.mqtt_protocol,
    )
    if presence is not None and presence.get("state") == "online" and not force:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(presence.get("t", 0) / 1000))
        return (
            f"client id {config.mqtt_client_id} is online (pid {presence.get('pid')} on "
            f"{presence.get('host')} since {since}): a gateway process still runs with it; "
            "stop that process first (--force if the presence is stale)"
        )
    config.drain = True
    gateway = Gateway(config)
    _install_signal_handlers(gateway.stop, s.shutdown_grace_s, services.close)
    run = asyncio.create_task(gateway.run())
    try:
        await asyncio.wait_for(asyncio.shield(run), timeout)
    except TimeoutError:
        gateway.stop()
        await run
        return (
            f"session {s.mqtt_client_id} not drained within {timeout:g} s; what was stored "
            "is acknowledged, the rest stays in the session: run drain again"
        )
    if gateway.drain_error:
        return gateway.drain_error
    if gateway.drain_report is None or not gateway.ingress.drained:
        return f"stopped before session {s.mqtt_client_id} was drained; run drain again"
    typer.echo(orjson.dumps({**gateway.drain_report, "session_ended": True}).decode())
    return None


async def _serve_ops(s: Settings, gateway) -> None:
    """The operator's port (/metrics, /healthz, /readyz) until the gateway stops."""
    from gateway.ops_http import ops_app

    server = _http_server(
        ops_app(gateway.readiness, gateway.metrics.registry),
        s.metrics_host,
        s.metrics_port,
        s.shutdown_grace_s,
    )
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


async def _serve_api(s: Settings, dsn: str, stop: asyncio.Event, *, gateway=None) -> None:
    """The HTTP API until stop is set; beside a gateway its live feed follows every commit."""
    from api import ApiContext, KeyCache, LiveHub, create_app
    from gateway.broker_auth import BrokerAccess, gateway_accounts
    from gateway.coap import TokenVerifier
    from gateway.commands import CommandReads, CommandStore
    from telemetry.store import DeviceCredentials

    store = await _open_store_retrying(dsn, stop)
    if store is None:
        return
    hub = LiveHub(store)
    # EMQX's hooks let the gateway's own account in (FLEETGATE_MQTT_USERNAME / _PASSWORD).
    gateways = gateway_accounts(
        s.mqtt_username, s.mqtt_password.get_secret_value() if s.mqtt_password else None
    )
    ctx = ApiContext(
        store=store,
        live=hub,
        key_cache=KeyCache(s.api_key_cache_s),
        stopping=stop,
        map_tiles_url=s.map_tiles_url,
        map_attribution=s.map_attribution,
        broker_access=BrokerAccess(
            s.mqtt_topic_root, TokenVerifier(DeviceCredentials(store).verify).verify, gateways
        ),
        command_reads=CommandReads(CommandStore(store.pool)),
    )
    attach = None
    if gateway is not None:
        gateway.change_listeners.append(hub.notify)

        async def attach_commands() -> None:  # until then the commands routes answer 503
            await gateway.ready.wait()
            ctx.commands = gateway.commands

        attach = asyncio.create_task(attach_commands())
        # The dispatcher runs in one gateway process at a time; it may move here or away.
        gateway.commands_listeners.append(lambda service: setattr(ctx, "commands", service))
        ctx.readiness = gateway.readiness
    else:
        ctx.readiness = {"database": store.check_writable}
    server = _http_server(create_app(ctx), s.api_host, s.api_port, s.shutdown_grace_s)
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
        for task in (feed, attach):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (feed, attach) if t), return_exceptions=True)
        await store.close()
    if serving.done() and not serving.cancelled() and serving.exception():
        raise serving.exception()


def _http_server(app, host: str, port: int, grace_s: float):
    """uvicorn for one of our apps. Requests in flight when it stops get half the grace period
    (live streams and command waits end at once, see _serve_api), then they are cancelled.

    It leaves the signals alone: while serving, uvicorn's own handlers would stand beside the
    process's (StopSignals), and it raises a caught signal again when it has stopped, which would
    count as a second signal.
    """
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=grace_s / 2,
        )
    )
    server.capture_signals = contextlib.nullcontext
    return server


async def _open_store_retrying(dsn: str, stop: asyncio.Event):
    from telemetry.store import StoreUnavailable, TelemetryStore

    while not stop.is_set():
        try:
            return await TelemetryStore.open(dsn)
        except StoreUnavailable as exc:
            log.warning("database_unavailable", extra={"operation": "api", "error": str(exc)[:200]})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
    return None


@app.command("api")
def api_alone() -> None:
    """Serve the HTTP API and live map alone (the gateway runs elsewhere)."""
    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    dsn = _database_url(s)

    async def main() -> None:
        stop = asyncio.Event()
        _install_signal_handlers(stop.set, s.shutdown_grace_s)
        await _serve_api(s, dsn, stop)

    asyncio.run(main())


keys_app = typer.Typer(no_args_is_help=True, help="API keys of the HTTP API")
app.add_typer(keys_app, name="api-keys")


@keys_app.command("create")
def api_keys_create(
    name: Annotated[str, typer.Argument(help="who uses it, e.g. rental-service")],
    scope: Annotated[
        list[str],
        typer.Option(
            help="fleet:read, commands:write, zones:write, "
            "devices:write or admin; repeat for several"
        ),
    ],
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    s = load_settings()

    async def action(store):
        try:
            return await store.create_api_key(name, scope)
        except ValueError as exc:
            typer.echo(f"fleetgate: {exc}", err=True)
            raise typer.Exit(2) from exc

    record, key = asyncio.run(_with_store(_database_url(s), action))
    typer.echo(f"API key '{record.name}' with scopes {', '.join(record.scopes)} (shown once):")
    typer.echo(key)


@keys_app.command("list")
def api_keys_list() -> None:
    """Name, id, scopes, state and last use of every key."""
    s = load_settings()
    for k in asyncio.run(_with_store(_database_url(s), lambda store: store.list_api_keys())):
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        typer.echo(f"{k.name:<24} {k.id:<14} {','.join(k.scopes):<36} {state:<18} used {used}")


@keys_app.command("revoke")
def api_keys_revoke(name: Annotated[str, typer.Argument(help="the key's name or id")]) -> None:
    """Revoke a key (servers stop accepting it within FLEETGATE_API_KEY_CACHE_S)."""
    s = load_settings()
    if not asyncio.run(_with_store(_database_url(s), lambda store: store.revoke_api_key(name))):
        typer.echo(f"fleetgate: no active key {name!r}", err=True)
        raise typer.Exit(2)
    typer.echo(f"revoked {name}")


# --- zones -------------------------------------------------------------------------------


def _database_url(s: Settings) -> str:
    if s.database_url is None:
        typer.echo("fleetgate: FLEETGATE_DATABASE_URL is not set", err=True)
        raise typer.Exit(2)
    return s.database_url.get_secret_value()


async def _with_store(dsn: str, action):
    from telemetry.store import StoreUnavailable, TelemetryStore

    try:
        store = await TelemetryStore.open(dsn)
    except StoreUnavailable as exc:
        typer.echo(f"fleetgate: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        return await action(store)
    finally:
        await store.close()


def _read_zone_document(path: str, kinds: dict[str, str]):
    """A GBFS v3 geofencing_zones.json, or fleetgate's {"zones": [...], "global_rules": [...]},
    with the zones named in `kinds` (id or name -> kind) given those kinds."""
    from geofence import InvalidZone, ZoneSet, assign_kinds

    try:
        doc = orjson.loads(sys.stdin.buffer.read() if path == "-" else open(path, "rb").read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
    try:
        if isinstance(doc, dict) and "geofencing_zones" in (doc.get("data") or {}):
            zoneset = ZoneSet.from_gbfs(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("zones"), list):
            zoneset = ZoneSet.from_rows(doc["zones"], global_rules=doc.get("global_rules") or [])
        else:
            raise typer.BadParameter(
                f"{path} is neither a GBFS geofencing_zones.json nor a fleetgate zones document "
                '({"zones": [...], "global_rules": [...]})'
            )
        if kinds:
            zoneset = ZoneSet(
                assign_kinds(list(zoneset.zones), kinds), global_rules=zoneset.global_rules
            )
        return zoneset
    except InvalidZone as exc:
        typer.echo(f"fleetgate: rejected, nothing changed: {exc}", err=True)
        raise typer.Exit(2) from exc


def _zone_kinds(pairs: list[str], path: str | None) -> dict[str, str]:
    """--kinds FILE (a JSON object), then every --kind NAME_OR_ID=KIND (replacing the file's
    entry for the same key)."""
    kinds: dict[str, str] = {}
    if path is not None:
        try:
            loaded = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--kinds") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise typer.BadParameter(
                f"{path} is not a JSON object of zone id or name -> kind", param_hint="--kinds"
            )
        kinds.update(loaded)
    for pair in pairs:
        key, sep, kind = pair.rpartition("=")
        if not sep or not key or not kind:
            raise typer.BadParameter(f"{pair!r} is not NAME_OR_ID=KIND", param_hint="--kind")
        kinds[key] = kind
    return kinds


@zones_app.command("import")
def zones_import(
    path: Annotated[str, typer.Argument(help="file to read, - for standard input")],
    replace: Annotated[
        bool,
        typer.Option(
            help="the file becomes the whole zone set (zones not "
            "in it are deleted, global rules replaced)"
        ),
    ] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            metavar="NAME_OR_ID=KIND",
            help="give the zone(s) with this id, or else this name, a kind (operating_area, "
            "no_parking, slow, no_ride, station, other); repeatable. GBFS files have no kinds: "
            "their zones are 'other' without it",
        ),
    ] = None,
    kinds_file: Annotated[
        str | None,
        typer.Option(
            "--kinds", metavar="FILE", help="the same as a JSON object {name or id: kind}"
        ),
    ] = None,
) -> None:
    """Validate zones with the geofence core and store them; running gateways pick them up."""
    s = load_settings()
    zoneset = _read_zone_document(path, _zone_kinds(kind or [], kinds_file))
    rows = [z.to_row() for z in zoneset.zones]
    rules = [r.model_dump(mode="json", exclude_none=True) for r in zoneset.global_rules]

    async def action(store):
        if replace:
            return await store.replace_zones(rows, rules)
        return await store.put_zones(rows)

    version = asyncio.run(_with_store(_database_url(s), action))
    typer.echo(
        f"{len(rows)} zones {'replace the zone set' if replace else 'stored'}; "
        f"zone set version {version}"
    )


@zones_app.command("export")
def zones_export(
    gbfs: Annotated[bool, typer.Option(help="as GBFS v3 geofencing_zones.json")] = False,
) -> None:
    """Print the zone set (fleetgate's document, or GBFS v3)."""
    from geofence import ZoneSet

    s = load_settings()
    zones = asyncio.run(_with_store(_database_url(s), lambda store: store.load_zones()))
    zoneset = ZoneSet.from_rows(zones.rows, global_rules=zones.global_rules, version=zones.version)
    doc = (
        zoneset.to_gbfs()
        if gbfs
        else {
            "version": zones.version,
            "zones": zoneset.to_rows(),
            "global_rules": [
                r.model_dump(mode="json", exclude_none=True) for r in zoneset.global_rules
            ],
        }
    )
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


@zones_app.command("list")
def zones_list() -> None:
    """One line per zone: id, kind, priority, name."""
    s = load_settings()
    zones = asyncio.run(_with_store(_database_url(s), lambda store: store.load_zones()))
    typer.echo(f"zone set version {zones.version}, {len(zones.rows)} zones")
    for row in zones.rows:
        typer.echo(f"{row['id']:<24} {row['kind']:<15} {row['priority']:>5}  {row['name']}")


# --- the simulated fleet -------------------------------------------------------------------


def _fleet_options(
    s: Settings,
    host: str,
    port: int,
    *,
    vehicles: int,
    rate: float,
    seed: int,
    cars: float,
    cbor: float,
    speedup: float,
    fast: bool,
    samples: int | None,
    duration: float | None,
    misbehaviour,
) -> FleetOptions:
    from firmware_sim import FleetOptions

    return FleetOptions(
        vehicles=vehicles,
        rate_hz=rate,
        seed=seed,
        car_share=cars,
        cbor_share=cbor,
        speedup=speedup,
        fast=fast,
        samples_per_vehicle=samples,
        duration_s=duration,
        topic_root=s.mqtt_topic_root,
        host=host,
        port=port,
        misbehaviour=misbehaviour,
    )


def _misbehaviour(
    duplicates: float, malformed: float, out_of_order: float, disconnects_per_h: float
):
    from firmware_sim import Misbehaviour

    return Misbehaviour(
        duplicate_share=duplicates,
        malformed_share=malformed,
        out_of_order_share=out_of_order,
        disconnects_per_h=disconnects_per_h,
    )


# The simulated devices' secrets, device id -> secret, in data_dir: a TCU keeps its secret too.
SIM_SECRETS_FILE = "sim-secrets.json"


async def _register_fleet(dsn: str, fleet, secrets: Path | None = None) -> int:
    """Register the fleet's devices. With secrets (the simulator's secrets file), every device
    the file holds no secret for gets a new one (provisioned, or rotated at once where the
    registry holds one the file lost), kept in the file; returns how many were issued."""
    from telemetry.store import DeviceCredentials, TelemetryStore, VehicleRegistration

    store = await TelemetryStore.open(dsn)
    try:
        await store.register_vehicles(
            [
                VehicleRegistration(vehicle_ref=ref, device_id=dev, vehicle_type=kind)
                for dev, ref, kind in fleet.registrations()
            ]
        )
        if secrets is None:
            return 0
        kept = _read_sim_secrets(secrets)
        creds = DeviceCredentials(store)
        valid = {c.device_id: c.valid for c in await creds.list()}
        lacking = [d for d in fleet.device_ids if d not in kept or not valid.get(d)]
        fresh = [d for d in lacking if not valid.get(d)]
        issued = await creds.provision_many(fresh) if fresh else []
        for device_id in lacking:
            if valid.get(device_id):
                issued.append(await creds.rotate(device_id, grace_s=0))
        if issued:
            kept.update({i.device_id: i.secret for i in issued})
            _write_sim_secrets(secrets, kept)
        return len(issued)
    finally:
        await store.close()


def _read_sim_secrets(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        kept = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        typer.echo(f"fleetgate: cannot read the simulator's secrets from {path}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not isinstance(kept, dict) or not all(isinstance(v, str) for v in kept.values()):
        typer.echo(
            f"fleetgate: {path} is not the simulator's secrets file "
            '({"device id": "secret", ...})',
            err=True,
        )
        raise typer.Exit(2)
    return kept


def _write_sim_secrets(path: Path, secrets: dict[str, str]) -> None:
    """Write the file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover keeps its mode; a new file gets 0600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(secrets, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    os.replace(tmp, path)


async def _broker_refusal(fleet, issued: int, secrets: Path) -> str | None:
    """Why the broker would not let the simulated devices in, in one line, or None: one
    CONNECT as the first device, which resumes its session and leaves it as it was."""
    from gateway.mqtt import MqttClient, MqttError

    o, device_id = fleet.options, fleet.device_ids[0]
    where = f"{o.host}:{o.port}"
    probe = MqttClient(
        o.host,
        o.port,
        client_id=device_id,
        protocol=o.protocol,
        clean_start=False,
        session_expiry_s=o.session_expiry_s,
        manual_ack=True,
        on_messages=lambda messages: None,
        **fleet.mqtt_login(device_id),
    )
    try:
        await probe.connect(timeout=o.connect_timeout_s)
    except MqttError as exc:
        probe.abort()
        refused = f"the broker at {where} refused simulated device {device_id} ({exc})"
        if o.credentials is None:
            return (
                f"{refused}: it wants device credentials; run the simulator with --register "
                "(registers the simulated devices and gives them secrets), then "
                "`fleetgate broker-config` so that the broker knows them"
            )
        if issued:
            return (
                f"{refused}: {issued} simulated devices got new secrets (kept in {secrets}) "
                "that the broker does not know yet; run `fleetgate broker-config` (with "
                "--reload-pidfile) and then the simulator again"
            )
        return (
            f"{refused} with its secret from {secrets}: regenerate the broker's password file "
            "(`fleetgate broker-config`), or run with --register to issue missing secrets"
        )
    except (OSError, TimeoutError) as exc:
        probe.abort()
        return f"cannot reach the broker at {where}: {exc or type(exc).__name__}"
    await probe.disconnect()
    return None


async def _drive_fleet(fleet, stop: asyncio.Event, report_every_s: float, report) -> None:
    """Connect, run until done or stopped, flush; call report() every report_every_s."""

    async def reporter() -> None:
        while True:
            await asyncio.sleep(report_every_s)
            await report()

    ticker = asyncio.create_task(reporter())
    try:
        await fleet.start()
        await fleet.run(stop)
    finally:
        ticker.cancel()
        await fleet.stop(flush=True)
        await report()


Vehicles = Annotated[int, typer.Option(min=1, help="number of simulated vehicles")]
Rate = Annotated[float, typer.Option(min=0.001, max=500, help="samples per vehicle per second")]
Seed = Annotated[int, typer.Option(help="seed: the same seed gives the same fleet and samples")]
Cars = Annotated[float, typer.Option(min=0, max=1, help="share of cars; the rest are e-bikes")]
Cbor = Annotated[float, typer.Option(min=0, max=1, help="share of devices sending CBOR")]


@app.command()
def sim(
    vehicles: Vehicles = 10,
    rate: Rate = 1.0,
    seed: Seed = 0,
    cars: Cars = 0.5,
    cbor: Cbor = 0.0,
    speedup: Annotated[float, typer.Option(min=0.001, help="simulated seconds per second")] = 1.0,
    fast: Annotated[
        bool, typer.Option(help="no pacing: as fast as the broker acknowledges")
    ] = False,
    samples: Annotated[
        int | None, typer.Option(min=1, help="stop after this many samples per vehicle")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="stop after this many simulated seconds")
    ] = None,
    duplicates: Annotated[
        float, typer.Option(min=0, max=1, help="share of samples sent twice")
    ] = 0.0,
    malformed: Annotated[
        float, typer.Option(min=0, max=1, help="share of samples followed by a malformed message")
    ] = 0.0,
    out_of_order: Annotated[
        float, typer.Option(min=0, max=1, help="share of buffered uploads sent out of order")
    ] = 0.0,
    disconnects_per_h: Annotated[
        float, typer.Option(min=0, help="connection drops per vehicle per simulated hour")
    ] = 0.0,
    register: Annotated[
        bool,
        typer.Option(
            help="register the fleet's devices in FLEETGATE_DATABASE_URL first and give those "
            "without one a secret (kept in FLEETGATE_DATA_DIR/sim-secrets.json)"
        ),
    ] = False,
    register_only: Annotated[
        bool,
        typer.Option(
            help="as --register, then stop: run `fleetgate broker-config` next, so that a broker "
            "with a password file knows the new secrets"
        ),
    ] = False,
    report_every: Annotated[
        float, typer.Option(min=0.5, help="seconds between progress lines")
    ] = 5.0,
) -> None:
    """Run simulated e-bike and car TCUs against the broker (FLEETGATE_MQTT_URL).

    The devices log in with their own secrets where FLEETGATE_DATA_DIR/sim-secrets.json holds
    them (--register issues them), else without credentials."""
    from firmware_sim import Fleet

    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    host, port = s.mqtt_host_port
    opts = _fleet_options(
        s,
        host,
        port,
        vehicles=vehicles,
        rate=rate,
        seed=seed,
        cars=cars,
        cbor=cbor,
        speedup=speedup,
        fast=fast,
        samples=samples,
        duration=duration,
        misbehaviour=_misbehaviour(duplicates, malformed, out_of_order, disconnects_per_h),
    )
    register = register or register_only
    if register and s.database_url is None:
        typer.echo("fleetgate: --register needs FLEETGATE_DATABASE_URL", err=True)
        raise typer.Exit(2)
    secrets = s.data_dir / SIM_SECRETS_FILE

    async def main() -> None:
        fleet = Fleet(opts)
        issued = 0
        if register:
            issued = await _register_fleet(s.database_url.get_secret_value(), fleet, secrets)
        if register_only:
            typer.echo(
                f"{len(fleet.device_ids)} simulated devices registered, {issued} new "
                f"secrets kept in {secrets}; run `fleetgate broker-config` so that the "
                "broker knows them"
            )
            return
        if secrets.exists():
            opts.credentials = _read_sim_secrets(secrets)
        refusal = await _broker_refusal(fleet, issued, secrets)
        if refusal is not None:
            typer.echo(f"fleetgate: {refusal}", err=True)
            raise typer.Exit(2)
        stop = asyncio.Event()
        _install_signal_handlers(stop.set, s.shutdown_grace_s)

        async def report() -> None:
            log.info("sim_progress", extra={**fleet.stats.summary()})

        await _drive_fleet(fleet, stop, report_every, report)

    try:
        asyncio.run(main())
    except TimeoutError as exc:  # not every device got in: the devices' side, not a crash
        typer.echo(f"fleetgate: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command()
def demo(
    vehicles: Vehicles = 200,
    rate: Rate = 1.0,
    seed: Seed = 0,
    cars: Cars = 0.5,
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

    s = load_settings(api_port=api_port, metrics_port=metrics_port, coap_port=coap_port)
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
        _misbehaviour(0.02, 0.01, 0.3, 2.0) if misbehave else _misbehaviour(0.0, 0.0, 0.0, 0.0)
    )
    opts = _fleet_options(
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
    )
    typer.echo(
        f"fleetgate demo: {vehicles} simulated vehicles at {rate} samples/s each. Ctrl-C stops."
    )
    for line in _demo_endpoints(s, services):
        typer.echo(f"  {line}")

    async def main() -> None:
        await _migrate(services.database_url, s)
        fleet = Fleet(opts)
        await _register_fleet(services.database_url, fleet)
        if s.database_url is not None:
            others = await _with_store(
                services.database_url, lambda store: _vehicles_besides(store, fleet.device_ids)
            )
            if others:
                typer.echo(
                    f"  the configured database holds {others} more vehicles (earlier "
                    "runs, or your own): the demo deletes nothing there, so they show "
                    "beside its fleet"
                )
        if s.api_port:
            # A key for this demo run, so the map opens at once (never do this in production).
            _, key = await _with_store(
                services.database_url,
                lambda store: store.create_api_key(
                    f"demo-{time.strftime('%Y%m%d-%H%M%S')}", ["admin"]
                ),
            )
            typer.echo(f"live map: http://{s.api_host}:{s.api_port}/map/#key={key}")

        async def run_fleet(gateway) -> None:
            await gateway.ready.wait()
            await gateway.ingress.subscribed.wait()
            last = {"stored": 0.0, "at": time.monotonic()}

            async def report() -> None:
                typer.echo(_demo_status(gateway, fleet, last))

            await _drive_fleet(fleet, gateway.stopping, report_every, report)

        await _run_gateway(s, services, migrate=False, fleet=run_fleet)

    try:
        asyncio.run(main())
    finally:
        services.close()


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


def _demo_status(gateway, fleet, last: dict) -> str:
    m = gateway.metrics.registry
    stored = _counter_total(m, "fleetgate_samples_stored_total")
    dupes = _counter_total(m, "fleetgate_samples_duplicate_total")
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
        f"unacknowledged {gateway.pipeline.unacknowledged if gateway.pipeline else 0}"
    )


def _counter_total(registry, name: str) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


from fleetgate.cli_devices import register_device_commands  # noqa: E402 (uses this module)

register_device_commands(app)


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="fleetgate")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
