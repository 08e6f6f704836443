"""`fleetgate config show`: the effective settings and where each came from."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from fleetgate.cli.shared import load_settings
from fleetgate.settings import sources

app = typer.Typer(no_args_is_help=True, help="Settings")


@app.command("show")
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
