"""`fleetgate migrate bridge-config`: the Mosquitto bridge that mirrors a legacy broker's device
uplinks into fleetgate's broker, read-only (docs/dialects.md).

Exit codes: 0 written, 2 bad options or dialect file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetgate.cli.shared import fail


def bridge_config(
    legacy_url: Annotated[
        str, typer.Option(help="the legacy broker, mqtt://host:port or mqtts://host:port")
    ],
    dialect: Annotated[
        list[str],
        typer.Option(
            help="a dialect whose uplink topics are mirrored: a TOML file or a shipped name "
            "(fleetgate, traccar-osmand, flat-json); repeat for several"
        ),
    ],
    out: Annotated[Path, typer.Option(help="the file to write (included in mosquitto.conf)")],
    username: Annotated[str | None, typer.Option(help="account on the legacy broker")] = None,
    password: Annotated[
        str | None,
        typer.Option(help="its password", envvar="FLEETGATE_LEGACY_MQTT_PASSWORD"),
    ] = None,
    cafile: Annotated[
        Path | None, typer.Option(help="CA certificate of the legacy broker (turns on TLS)")
    ] = None,
    name: Annotated[str, typer.Option(help="the bridge's connection name")] = "legacy",
) -> None:
    """Write a Mosquitto bridge configuration mirroring the legacy broker's device uplinks
    (the dialects' topics, `in` only: no command reaches the legacy broker)."""
    from gateway.broker_bridge import BridgeConfigError, LegacyBroker
    from gateway.broker_bridge import bridge_config as generate
    from telemetry.dialect import DialectError, load_dialects

    try:
        legacy = LegacyBroker.from_url(
            legacy_url,
            username=username,
            password=password,
            cafile=str(cafile.resolve()) if cafile else None,
        )
        if cafile is not None and not cafile.is_file():
            raise BridgeConfigError(f"--cafile {cafile}: no such file")
        text = generate(legacy, load_dialects(dialect), name=name)
    except (BridgeConfigError, DialectError) as exc:
        fail(str(exc))
    try:
        out.write_text(text)
        if password is not None:
            out.chmod(0o600)  # it holds the legacy broker's password
    except OSError as exc:
        fail(f"cannot write {out}: {exc}")
    typer.echo(f"wrote {out}: mirrors {', '.join(dialect)} from {legacy.host}:{legacy.port}")


app = typer.Typer(no_args_is_help=True, help="Migrate a fleet from another platform")
app.command("bridge-config")(bridge_config)


def mount(root: typer.Typer) -> None:
    """`fleetgate migrate bridge-config`: in the `migrate` group another module mounted before
    (issue 18's fleetgate/cli/migrate.py), else in this module's own group of that name."""
    for group in root.registered_groups:
        if group.name == "migrate" and group.typer_instance is not None:
            group.typer_instance.command("bridge-config")(bridge_config)
            return
    root.add_typer(app, name="migrate")
