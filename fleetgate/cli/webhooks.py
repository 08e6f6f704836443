"""`fleetgate webhooks create|list|types|update|delete|deliveries|replay|redrive`: webhook
subscriptions, as the API's /v1/webhooks (docs/webhooks.md), straight on the database."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Annotated

import typer

from api.webhook_urls import check_url
from fleetgate.cli.shared import database_url, fail, load_settings, with_store
from fleetgate.settings import Settings
from outbound import CATALOGUE, InvalidWebhookUrl, UnknownEventType, check_types, new_secret
from telemetry.store import Subscription, UnknownOutboxEvent, UnknownSubscription, Webhooks

app = typer.Typer(no_args_is_help=True, help="webhook subscriptions (outbound events)")

TypeOption = Annotated[
    list[str] | None,
    typer.Option("--type", help="a catalogue name to deliver; repeat for several; none: all"),
]


def _checked(s: Settings, url: str | None, types: list[str] | None) -> list[str] | None:
    try:
        if url is not None:
            own_ports = {p for p in (s.api_port, s.metrics_port) if p}
            asyncio.run(check_url(url, own_ports))
        return check_types(types) if types else None
    except (InvalidWebhookUrl, UnknownEventType) as exc:
        fail(str(exc))


def _run(s: Settings, action):
    async def guarded(store):
        try:
            return await action(Webhooks(store))
        except UnknownSubscription as exc:
            fail(f"no webhook subscription {exc.args[0]!r}")
        except UnknownOutboxEvent as exc:
            fail(f"no outbound event with id {exc.args[0]} or later in the outbox")

    return asyncio.run(with_store(database_url(s), guarded))


def _line(sub: Subscription) -> str:
    state = "enabled" if sub.enabled else f"disabled ({sub.disabled_reason or 'by hand'})"
    types = ",".join(sub.event_types) if sub.event_types else "all types"
    return f"{sub.id:<20} {state:<10} {types:<40} {sub.url}"


@app.command("create")
def create(
    url: Annotated[str, typer.Argument(help="http(s) URL the events are POSTed to")],
    types: TypeOption = None,
    description: Annotated[str, typer.Option(help="what it is for")] = "",
) -> None:
    """Subscribe a URL; prints the signing secret once."""
    s = load_settings()
    checked = _checked(s, url, types)
    secret = new_secret()
    sub = _run(s, lambda hooks: hooks.create(url, checked, description, secret))
    typer.echo(_line(sub))
    typer.echo(f"signing secret (shown once): {secret}")


@app.command("list")
def list_() -> None:
    """Every subscription: id, state, types, URL."""
    s = load_settings()
    for sub in _run(s, lambda hooks: hooks.list()):
        typer.echo(_line(sub))


@app.command("types")
def types_() -> None:
    """The catalogue of outbound event types."""
    for name, meaning in CATALOGUE.items():
        typer.echo(f"{name:<34} {meaning}")


@app.command("update")
def update(
    sub_id: Annotated[str, typer.Argument(help="the subscription's id")],
    url: Annotated[str | None, typer.Option(help="a new URL")] = None,
    types: TypeOption = None,
    all_types: Annotated[bool, typer.Option("--all-types", help="deliver every type")] = False,
    enable: Annotated[bool, typer.Option("--enable", help="enable it again (after a 410)")] = False,
    description: Annotated[str | None, typer.Option(help="a new description")] = None,
) -> None:
    """Change a subscription's URL, types or description, or enable it again."""
    s = load_settings()
    changes: dict = {}
    checked = _checked(s, url, types)
    if url is not None:
        changes["url"] = url
    if types:
        changes["event_types"] = checked
    if all_types:
        changes["event_types"] = None
    if enable:
        changes["enabled"] = True
    if description is not None:
        changes["description"] = description
    if not changes:
        fail("nothing to change: give --url, --type, --all-types, --enable or --description")
    typer.echo(_line(_run(s, lambda hooks: hooks.update(sub_id, changes))))


@app.command("delete")
def delete(sub_id: Annotated[str, typer.Argument(help="the subscription's id")]) -> None:
    """Delete a subscription and its delivery records."""
    s = load_settings()
    _run(s, lambda hooks: hooks.delete(sub_id))
    typer.echo(f"deleted {sub_id}")


@app.command("deliveries")
def deliveries(
    sub_id: Annotated[str, typer.Argument(help="the subscription's id")],
    state: Annotated[str | None, typer.Option(help="delivered, retrying or dead")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """A subscription's latest deliveries."""
    if state not in (None, "delivered", "retrying", "dead"):
        fail("--state is delivered, retrying or dead")
    s = load_settings()
    for d in _run(s, lambda hooks: hooks.deliveries(sub_id, state=state, limit=limit)):
        status = d["last_status"] if d["last_status"] is not None else "-"
        typer.echo(
            f"{d['event_id']:<10} {d['type']:<30} {d['vehicle_ref']:<16} {d['state']:<9} "
            f"attempts {d['attempts']:<3} status {status} {d['last_error'] or ''}".rstrip()
        )


@app.command("replay")
def replay(
    sub_id: Annotated[str, typer.Argument(help="the subscription's id")],
    from_event_id: Annotated[int, typer.Option(min=0, help="deliver again from this id on")],
) -> None:
    """Deliver again every event from an event id on."""
    s = load_settings()
    count = _run(s, lambda hooks: hooks.replay(sub_id, from_event_id))
    typer.echo(f"{count} events to deliver again to {sub_id}")


@app.command("redrive")
def redrive(
    sub_id: Annotated[str, typer.Argument(help="the subscription's id")],
    event_id: Annotated[
        list[int] | None, typer.Option(help="a dead letter's event id; repeat; none: all")
    ] = None,
) -> None:
    """Put dead letters back to delivery."""
    s = load_settings()
    count = _run(s, lambda hooks: hooks.redrive(sub_id, event_id or None))
    typer.echo(f"{count} dead letters back to delivery for {sub_id}")


@app.command("worker")
def worker(
    supervised: Annotated[
        bool,
        typer.Option(
            "--supervised",
            help="started by `fleetgate run`: report on stdout, end when stdin closes",
        ),
    ] = False,
) -> None:
    """Run the webhook delivery worker in this process (under the webhook lease) until SIGTERM.

    `fleetgate run` starts this itself as its child (`--supervised`). Alone (e.g. on another
    machine) it competes for the same lease as the gateways' workers; FLEETGATE_WEBHOOKS_ENABLED
    =false on the gateways leaves the deliveries to it."""
    from fleetgate.cli.shared import install_signal_handlers
    from fleetgate.logs import setup_logging
    from fleetgate.wiring import webhook_config
    from gateway.webhooks.process import serve_worker
    from telemetry.store import StoreUnavailable

    s = load_settings()
    setup_logging(s.log_level, s.log_format)
    dsn = database_url(s)
    if supervised and s.webhook_nice:
        # Beside its gateway on the same cores: ingestion first, deliveries with what is left.
        os.nice(s.webhook_nice)

    async def main() -> None:
        task = asyncio.ensure_future(serve_worker(dsn, webhook_config(s), supervised=supervised))
        if not supervised:
            install_signal_handlers(task.cancel, s.shutdown_grace_s)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    except StoreUnavailable as exc:
        fail(f"the database is unavailable: {exc}", 1)
