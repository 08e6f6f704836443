"""`fleetgate sim`: simulated TCUs (e-bikes, cargo e-bikes, scooters, mopeds, cars) against the
broker, with their registration and secrets; the demo drives its fleet with the same pieces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from fleetgate.cli.shared import fail, install_signal_handlers, load_settings
from fleetgate.logs import setup_logging
from fleetgate.settings import Settings

if TYPE_CHECKING:
    from firmware_sim import FleetOptions, Misbehaviour

log = logging.getLogger(__name__)


def fleet_options(
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
    misbehaviour: Misbehaviour,
    mix: dict[str, float] | None = None,
) -> FleetOptions:
    """The simulator's options: the fleet the command line asks for, on the broker at
    host:port under the configured topic root."""
    from firmware_sim import FleetOptions

    return FleetOptions(
        vehicles=vehicles,
        rate_hz=rate,
        seed=seed,
        car_share=cars,
        mix=mix,
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


def dialect_file(spec: str) -> str:
    """The TOML file of a dialect (the simulator reads the file itself), checked as the gateway
    checks it; a bad one ends the command (2) naming the file and key."""
    from importlib import resources

    from telemetry.dialect import SHIPPED, DialectError, load_dialect

    try:
        load_dialect(spec)
    except DialectError as exc:
        fail(str(exc))
    if spec in SHIPPED:
        return str(resources.files("telemetry").joinpath(f"dialects/{spec}.toml"))
    return spec


def fleet_misbehaviour(
    duplicates: float, malformed: float, out_of_order: float, disconnects_per_h: float
) -> Misbehaviour:
    """How often the simulated devices misbehave, as shares of their samples and drops per hour."""
    from firmware_sim import Misbehaviour

    return Misbehaviour(
        duplicate_share=duplicates,
        malformed_share=malformed,
        out_of_order_share=out_of_order,
        disconnects_per_h=disconnects_per_h,
    )


# The simulated devices' secrets, device id -> secret, in data_dir: a TCU keeps its secret too.
SIM_SECRETS_FILE = "sim-secrets.json"


async def register_fleet(dsn: str, fleet, secrets: Path | None = None) -> int:
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
        fail(f"cannot read the simulator's secrets from {path}: {exc}")
    if not isinstance(kept, dict) or not all(isinstance(v, str) for v in kept.values()):
        fail(f'{path} is not the simulator\'s secrets file ({{"device id": "secret", ...}})')
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
    from gateway.mqtt import ConnectOptions, MqttClient, MqttError

    o, device_id = fleet.options, fleet.device_ids[0]
    where = f"{o.host}:{o.port}"
    probe = MqttClient(
        ConnectOptions(
            o.host,
            o.port,
            device_id,
            protocol=o.protocol,
            session_expiry_s=o.session_expiry_s,
            **fleet.mqtt_login(device_id),
        ),
        clean_start=False,
        manual_ack=True,
        on_messages=lambda messages: None,
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


async def drive_fleet(fleet, stop: asyncio.Event, report_every_s: float, report) -> None:
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
Mix = Annotated[
    str | None,
    typer.Option(
        help="a mixed fleet instead of --cars: shares by vehicle type, e.g. "
        "ebike=60,scooter=30,car=10 (types: ebike, cargo_ebike, scooter, moped, car)"
    ),
]


def fleet_mix(text: str | None) -> dict[str, float] | None:
    """--mix as shares by vehicle type; a bad mix is a usage error naming the problem."""
    if text is None:
        return None
    from firmware_sim import parse_mix

    try:
        return parse_mix(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mix") from None


def sim(
    vehicles: Vehicles = 10,
    rate: Rate = 1.0,
    seed: Seed = 0,
    cars: Cars = 0.5,
    mix: Mix = None,
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
    dialect: Annotated[
        str | None,
        typer.Option(
            help="the devices speak this legacy payload dialect (a TOML file or a shipped name: "
            "fleetgate, traccar-osmand, flat-json; docs/dialects.md) on its topics"
        ),
    ] = None,
) -> None:
    """Run simulated TCUs against the broker (FLEETGATE_MQTT_URL): e-bikes and cars (--cars), or
    a mixed fleet of e-bikes, cargo e-bikes, scooters, mopeds and cars (--mix).

    The devices log in with their own secrets where FLEETGATE_DATA_DIR/sim-secrets.json holds
    them (--register issues them), else without credentials."""
    from firmware_sim import Fleet

    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    host, port = s.mqtt_host_port
    opts = fleet_options(
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
        misbehaviour=fleet_misbehaviour(duplicates, malformed, out_of_order, disconnects_per_h),
        mix=fleet_mix(mix),
    )
    opts.dialect = dialect_file(dialect) if dialect else None
    register = register or register_only
    if register and s.database_url is None:
        fail("--register needs FLEETGATE_DATABASE_URL")
    secrets = s.data_dir / SIM_SECRETS_FILE

    async def main() -> None:
        fleet = Fleet(opts)
        issued = 0
        if register:
            issued = await register_fleet(s.database_url.get_secret_value(), fleet, secrets)
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
            fail(refusal)
        stop = asyncio.Event()
        install_signal_handlers(stop.set, s.shutdown_grace_s)

        async def report() -> None:
            log.info("sim_progress", extra={**fleet.stats.summary()})

        await drive_fleet(fleet, stop, report_every, report)

    try:
        asyncio.run(main())
    except TimeoutError as exc:  # not every device got in: the devices' side, not a crash
        fail(str(exc), 1)
