"""`fleetgate broker-config`: Mosquitto's password file, ACL and subscription plugin, generated
from the device registry (docs/device-identity.md), and the broker told to reload them.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store


def broker_config(
    out: Annotated[
        Path,
        typer.Option(
            help="folder for passwd, acl, gateway-users, fleetgate.conf and the subscription plugin"
        ),
    ],
    gateway_user: Annotated[
        list[str] | None,
        typer.Option(
            "--gateway-user",
            help="a gateway process's broker user (repeat for several; default "
            "FLEETGATE_MQTT_USERNAME); its password is FLEETGATE_MQTT_PASSWORD",
        ),
    ] = None,
    plugin: Annotated[
        Path | None,
        typer.Option(
            help="Mosquitto's subscription plugin built elsewhere (where the broker runs, if its "
            "C library differs); default: built into --out with the C compiler here"
        ),
    ] = None,
    reload_pidfile: Annotated[
        Path | None,
        typer.Option(help="send SIGHUP to the broker with this pid file, so it reloads the files"),
    ] = None,
) -> None:
    """Generate Mosquitto's password file, ACL and subscription plugin from the device
    registry (docs/device-identity.md)."""
    from gateway.broker_auth import PluginBuildError, generate, write_files
    from telemetry.store import DeviceCredentials

    s = load_settings()
    dsn = database_url(s)
    users = list(gateway_user or ([s.mqtt_username] if s.mqtt_username else []))
    if not users:
        fail(
            "no gateway account: set FLEETGATE_MQTT_USERNAME and "
            "FLEETGATE_MQTT_PASSWORD, the account `fleetgate run` logs in with (the "
            "generated files let no anonymous client in, the gateway neither), or name "
            "the users with --gateway-user"
        )
    if s.mqtt_password is None:
        fail(
            "FLEETGATE_MQTT_PASSWORD is not set: the gateway users' password, "
            "the one `fleetgate run` logs in with"
        )
    password = s.mqtt_password.get_secret_value()
    directory = out.resolve()

    async def action(store):
        return await generate(
            DeviceCredentials(store),
            topic_root=s.mqtt_topic_root,
            directory=directory,
            gateway_users={u: password for u in users},
            plugin=plugin.resolve() if plugin else None,
        )

    try:
        files = asyncio.run(with_store(dsn, action))
        written = write_files(files, directory)
    except (ValueError, PluginBuildError) as exc:
        fail(str(exc))
    typer.echo(
        f"wrote {', '.join(str(p) for p in written)}: {files.devices} devices, "
        f"{files.gateway_users} gateway users"
    )
    if reload_pidfile is not None:
        pid = int(reload_pidfile.read_text().strip())
        os.kill(pid, signal.SIGHUP)
        typer.echo(f"sent SIGHUP to {pid}")
