"""`fleetgate db migrate`: create or upgrade the database schema."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from fleetgate.cli.shared import database_url, fail, load_settings
from fleetgate.logs import setup_logging
from fleetgate.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Database schema")
log = logging.getLogger(__name__)


async def migrate_database(dsn: str, s: Settings):
    """Apply the migrations with the configured storage and retention; the report."""
    from telemetry.store import migrate

    report = await migrate(dsn, storage=s.storage, retention_days=s.retention_days)
    log.info("database_migrated", extra={"report": str(report)})
    return report


@app.command("migrate")
def db_migrate(
    storage: Annotated[str | None, typer.Option(help="auto | timescaledb | native")] = None,
) -> None:
    """Create or upgrade the schema (idempotent, versioned)."""
    s = load_settings(storage=storage)
    setup_logging(s.log_level, s.log_format)
    dsn = database_url(s)
    from telemetry.store import MigrationError, StoreUnavailable

    try:
        report = asyncio.run(migrate_database(dsn, s))
    except (MigrationError, StoreUnavailable) as exc:
        fail(f"migration failed: {exc}")
    typer.echo(str(report))
