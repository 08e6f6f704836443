"""`fleetgate api-keys create|list|revoke`: the HTTP API's keys, stored only as hashes."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

app = typer.Typer(no_args_is_help=True, help="API keys of the HTTP API")


@app.command("create")
def api_keys_create(
    name: Annotated[str, typer.Argument(help="who uses it, e.g. rental-service")],
    scope: Annotated[
        list[str],
        typer.Option(
            help="fleet:read, commands:write, zones:write, devices:write, "
            "webhooks:write, broker:auth, mds:read or admin; repeat for several"
        ),
    ],
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    s = load_settings()

    async def action(store):
        try:
            return await store.create_api_key(name, scope)
        except ValueError as exc:
            fail(str(exc))

    record, key = asyncio.run(with_store(database_url(s), action))
    typer.echo(f"API key '{record.name}' with scopes {', '.join(record.scopes)} (shown once):")
    typer.echo(key)


@app.command("list")
def api_keys_list() -> None:
    """Name, id, scopes, state and last use of every key."""
    s = load_settings()
    for k in asyncio.run(with_store(database_url(s), lambda store: store.list_api_keys())):
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        typer.echo(f"{k.name:<24} {k.id:<14} {','.join(k.scopes):<36} {state:<18} used {used}")


@app.command("revoke")
def api_keys_revoke(name: Annotated[str, typer.Argument(help="the key's name or id")]) -> None:
    """Revoke a key (servers stop accepting it within FLEETGATE_API_KEY_CACHE_S)."""
    s = load_settings()
    if not asyncio.run(with_store(database_url(s), lambda store: store.revoke_api_key(name))):
        fail(f"no active key {name!r}")
    typer.echo(f"revoked {name}")
