"""What every command group of `fleetgate` shares: the settings, the database they name, a store
opened for one command, the stop signals, and how a command says why it failed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

import typer

from fleetgate.settings import Settings, SettingsError

if TYPE_CHECKING:
    from telemetry.store import TelemetryStore

T = TypeVar("T")


def fail(message: str, status: int = 2) -> NoReturn:
    """End the command with status, saying why on standard error as `fleetgate: <message>`."""
    typer.echo(f"fleetgate: {message}", err=True)
    raise typer.Exit(status)


def load_settings(**overrides) -> Settings:
    """The settings, with the command line's overrides; invalid ones end the command (2)."""
    try:
        return Settings.load(**overrides)
    except SettingsError as exc:
        fail(str(exc))


def database_url(s: Settings) -> str:
    """The configured database (FLEETGATE_DATABASE_URL); none ends the command (2)."""
    if s.database_url is None:
        fail("FLEETGATE_DATABASE_URL is not set")
    return s.database_url.get_secret_value()


async def with_store(dsn: str, action: Callable[[TelemetryStore], Awaitable[T]]) -> T:
    """action(store) on the database, closed afterwards; an unreachable database ends the
    command (2)."""
    from telemetry.store import StoreUnavailable, TelemetryStore

    try:
        store = await TelemetryStore.open(dsn)
    except StoreUnavailable as exc:
        fail(str(exc))
    try:
        return await action(store)
    finally:
        await store.close()


def install_signal_handlers(
    stop: Callable[[], None],
    grace_s: float | None = None,
    on_forced_exit: Callable[[], None] | None = None,
) -> None:
    """The first SIGTERM/SIGINT calls stop(); a second one, or grace_s later, exits at once."""
    from fleetgate.shutdown import StopSignals

    StopSignals(stop, grace_s, on_forced_exit).install()
