"""The `fleetgate` command: run the gateway, drive the simulator, migrate the database, demo.

Every subcommand reads the one Settings object (FLEETGATE_* environment, optional env file and
TOML config file); where no database or broker is configured, `run` and `demo` start embedded
ones in data_dir. Each command group is a module of this package; this one mounts them.
"""

from __future__ import annotations

import typer

from fleetgate.cli import (
    api_keys,
    broker_config,
    config,
    db,
    demo,
    devices,
    migrate,
    migrate_bridge,
    migrate_cutover,
    migrate_gate,
    migrate_shadow,
    run,
    sim,
    vehicle_types,
    webhooks,
    zones,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="fleetgate: IoT fleet gateway and telemetry backend",
)
# In this order in `fleetgate --help`: the commands, then the groups.
app.command("run")(run.run)
app.command("drain")(run.drain)
app.command("api")(run.api_alone)
app.command("sim")(sim.sim)
app.command("demo")(demo.demo)
app.command("broker-config")(broker_config.broker_config)
app.add_typer(db.app, name="db")
app.add_typer(config.app, name="config")
app.add_typer(zones.app, name="zones")
app.add_typer(api_keys.app, name="api-keys")
app.add_typer(devices.app, name="devices")
app.add_typer(vehicle_types.app, name="vehicle-types")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(migrate.app, name="migrate")
migrate_gate.mount(migrate.app)
# After every add_typer: bridge-config joins the `migrate` group if one is mounted, else brings
# a group of that name of its own.
migrate_bridge.mount(app)
migrate_cutover.mount(migrate.app)
migrate_shadow.mount(app)  # migrate shadow start|status|stop, migrate validate


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="fleetgate")
