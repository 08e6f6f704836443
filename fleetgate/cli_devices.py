"""`fleetgate devices provision|rotate|list` and `fleetgate broker-config`: device identity from
the command line (docs/device-identity.md).

Secrets are printed once, when they are issued, and stored only as hashes. Mount on the main
app with `register_device_commands(app)`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
from pathlib import Path
from typing import Annotated

import orjson
import typer

devices_app = typer.Typer(no_args_is_help=True,
                          help="Device identity: per-device secrets, stored hashed")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register_device_commands(app: typer.Typer) -> None:
    """Add `devices` and `broker-config` to the fleetgate command."""
    app.add_typer(devices_app, name="devices")
    app.command("broker-config")(broker_config)


def _settings_and_dsn():
    from fleetgate.cli import _database_url, load_settings

    s = load_settings()
    return s, _database_url(s)


def _run(dsn: str, action):
    """Run action(DeviceCredentials) against the database; store errors become exit code 2."""
    from fleetgate.cli import _with_store
    from telemetry.store import AlreadyProvisioned, DeviceCredentials, UnknownDevice

    async def main():
        return await _with_store(dsn, lambda store: action(DeviceCredentials(store)))

    try:
        return asyncio.run(main())
    except (UnknownDevice, AlreadyProvisioned) as exc:
        typer.echo(f"fleetgate: {exc.args[0] if exc.args else exc}", err=True)
        raise typer.Exit(2) from exc


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "24h", "7d"."""
    m = _DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration such as 0, 90s, 15m, 24h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _print_secrets(issued, as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps([{"device_id": i.device_id, "secret": i.secret,
                                  "previous_valid_until": i.previous_valid_until}
                                 for i in issued]).decode())
    else:
        for i in issued:
            typer.echo(f"{i.device_id}\t{i.secret}")
    if issued:
        typer.echo("fleetgate: secrets are shown only now; the database keeps their hashes",
                   err=True)


@devices_app.command("provision")
def provision(
    device_ids: Annotated[list[str] | None, typer.Argument(help="registered device ids")] = None,
    missing: Annotated[bool, typer.Option(
        "--missing", help="every registered device that has no valid secret")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of lines")] = False,
) -> None:
    """Issue each device its first secret (MQTT password and CoAP token), printed once as
    `device_id<TAB>secret`."""
    if not device_ids and not missing:
        raise typer.BadParameter("name device ids, or use --missing")
    _, dsn = _settings_and_dsn()

    async def action(creds):
        ids = list(device_ids or [])
        if missing:
            ids += [c.device_id for c in await creds.list() if c.valid == 0]
        if not ids:
            return []
        return await creds.provision_many(ids, skip_provisioned=missing)

    _print_secrets(_run(dsn, action), as_json)


@devices_app.command("rotate")
def rotate(
    device_id: Annotated[str, typer.Argument(help="a registered device id")],
    grace: Annotated[str, typer.Option(
        help="how long the old secret keeps working for CoAP and HTTP auth (0: revoked now). "
             "The broker's password file holds the new one from its next generation")] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a line")] = False,
) -> None:
    """Issue a new secret for a device, printed once; the old one expires after the grace."""
    grace_s = parse_duration(grace)
    _, dsn = _settings_and_dsn()
    issued = _run(dsn, lambda creds: creds.rotate(device_id, grace_s=grace_s))
    _print_secrets([issued], as_json)
    if issued.previous_valid_until is not None:
        typer.echo(f"fleetgate: the previous secret works until "
                   f"{issued.previous_valid_until.isoformat()}", err=True)


@devices_app.command("list")
def list_devices(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Registered devices and their credentials (never a secret or a hash)."""
    _, dsn = _settings_and_dsn()
    infos = _run(dsn, lambda creds: creds.list())
    if as_json:
        typer.echo(orjson.dumps([dataclasses.asdict(i) for i in infos]).decode())
        return
    typer.echo(f"{'device_id':<24} {'vehicle_ref':<24} {'valid':>5}  issued_at / grace_until")
    for i in infos:
        when = i.issued_at.isoformat(timespec="seconds") if i.issued_at else "not provisioned"
        if i.valid > 1 and i.grace_until:
            when += f" / {i.grace_until.isoformat(timespec='seconds')}"
        typer.echo(f"{i.device_id:<24} {i.vehicle_ref:<24} {i.valid:>5}  {when}")


def broker_config(
    out: Annotated[Path, typer.Option(help="folder for passwd, acl, gateway-users, "
                                      "fleetgate.conf and the subscription plugin")],
    gateway_user: Annotated[list[str] | None, typer.Option(
        "--gateway-user", help="a gateway process's broker user (repeat for several; default "
        "FLEETGATE_MQTT_USERNAME); its password is FLEETGATE_MQTT_PASSWORD")] = None,
    plugin: Annotated[Path | None, typer.Option(
        help="Mosquitto's subscription plugin built elsewhere (where the broker runs, if its "
             "C library differs); default: built into --out with the C compiler here")] = None,
    reload_pidfile: Annotated[Path | None, typer.Option(
        help="send SIGHUP to the broker with this pid file, so it reloads the files")] = None,
) -> None:
    """Generate Mosquitto's password file, ACL and subscription plugin from the device
    registry (docs/device-identity.md)."""
    from gateway.broker_auth import PluginBuildError, generate, write_files

    s, dsn = _settings_and_dsn()
    users = list(gateway_user or ([s.mqtt_username] if s.mqtt_username else []))
    if not users:
        typer.echo("fleetgate: no gateway account: set FLEETGATE_MQTT_USERNAME and "
                   "FLEETGATE_MQTT_PASSWORD, the account `fleetgate run` logs in with (the "
                   "generated files let no anonymous client in, the gateway neither), or name "
                   "the users with --gateway-user", err=True)
        raise typer.Exit(2)
    if s.mqtt_password is None:
        typer.echo("fleetgate: FLEETGATE_MQTT_PASSWORD is not set: the gateway users' password, "
                   "the one `fleetgate run` logs in with", err=True)
        raise typer.Exit(2)
    password = s.mqtt_password.get_secret_value()
    directory = out.resolve()

    async def action(creds):
        return await generate(creds, topic_root=s.mqtt_topic_root, directory=directory,
                              gateway_users={u: password for u in users},
                              plugin=plugin.resolve() if plugin else None)

    try:
        files = _run(dsn, action)
        written = write_files(files, directory)
    except (ValueError, PluginBuildError) as exc:
        typer.echo(f"fleetgate: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"wrote {', '.join(str(p) for p in written)}: {files.devices} devices, "
               f"{files.gateway_users} gateway users")
    if reload_pidfile is not None:
        pid = int(reload_pidfile.read_text().strip())
        os.kill(pid, signal.SIGHUP)
        typer.echo(f"sent SIGHUP to {pid}")
