"""`fleetgate migrate shadow start|status|stop` and `fleetgate migrate validate`: the parallel
run (docs/migration.md): a reproducible sample of the fleet watched by both platforms, and what
fleetgate observed of it compared with what the legacy platform observed.

Exit codes: 0 started / stopped / every metric green, 1 a metric yellow or red, 2 bad options,
unknown batch, an overlapping shadow run or no database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import orjson
import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

BatchOption = Annotated[
    str,
    typer.Option("--batch", help="the batch's name (letters, digits, _ . : -)", show_default=False),
]
# Tests drive the clock forward (a parallel run lasts two weeks); operators leave it alone.
NowOption = Annotated[
    datetime | None, typer.Option("--now", hidden=True, formats=["%Y-%m-%dT%H:%M:%S%z"])
]
ThresholdOption = Annotated[
    list[str] | None,
    typer.Option(
        "--threshold",
        metavar="NAME=VALUE",
        help="override a threshold (docs/migration.md): coverage.green=0.999, match_s=20, ...; "
        "repeat for several",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="the report as JSON")]

shadow_app = typer.Typer(
    no_args_is_help=True, help="The parallel run's shadow batches: start, status, stop"
)


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


@shadow_app.command("start")
def shadow_start(
    batch: BatchOption,
    percent: Annotated[
        float, typer.Option(help="share of the fleet, by vehicle type (go-live needs ≥ 10)")
    ] = 10.0,
    days: Annotated[float, typer.Option(help="how long the parallel run lasts")] = 14.0,
    seed: Annotated[
        int, typer.Option(min=0, max=2**63 - 1, help="the same seed picks the same vehicles")
    ] = 0,
    as_json: JsonOption = False,
    now: NowOption = None,
) -> None:
    """Pick a reproducible sample of the fleet, stratified by vehicle type, and start its
    parallel run. A vehicle already in a running batch, or a batch of that name running, is
    refused (exit 2)."""
    from parity import GO_LIVE_MIN_PERCENT, SampleError, start_shadow_batch
    from telemetry.store import ShadowBatches, ShadowConflict

    if not 0.01 <= days <= 366:
        fail(f"--days {days:g} is not in [0.01, 366]")
    started = _now(now)

    async def run(store):
        return await start_shadow_batch(
            ShadowBatches(store), batch, percent=percent, days=days, seed=seed, now=started
        )

    _check_name(batch)
    try:
        b = asyncio.run(with_store(database_url(load_settings()), run))
    except (SampleError, ShadowConflict) as exc:
        fail(f"shadow batch {batch!r} not started: {exc}")
    below = b.percent < GO_LIVE_MIN_PERCENT
    if as_json:
        typer.echo(orjson.dumps(_batch_json(b, started), option=orjson.OPT_INDENT_2))
    else:
        by_type = ", ".join(f"{n} {t}" for t, n in b.by_type.items())
        typer.echo(
            f"shadow batch {b.name} started: {len(b.vehicles)} of {b.fleet_size} vehicles "
            f"({b.percent:g} %: {by_type}), seed {b.seed}, until {b.ends_at:%Y-%m-%d %H:%M} UTC"
        )
    if below:
        typer.echo(
            f"fleetgate: {b.percent:g} % is below the go-live minimum of "
            f"{GO_LIVE_MIN_PERCENT:g} %: this batch cannot pass the go-live gate",
            err=True,
        )


@shadow_app.command("status")
def shadow_status(as_json: JsonOption = False, now: NowOption = None) -> None:
    """The shadow batches, newest first: running or ended, vehicles, share."""
    from parity import GO_LIVE_MIN_PERCENT
    from telemetry.store import ShadowBatches

    at = _now(now)
    batches = asyncio.run(
        with_store(database_url(load_settings()), lambda store: ShadowBatches(store).all())
    )
    if as_json:
        typer.echo(orjson.dumps([_batch_json(b, at) for b in batches], option=orjson.OPT_INDENT_2))
        return
    if not batches:
        typer.echo("no shadow batches")
    for b in batches:
        state = "running" if b.running(at) else "stopped" if b.stopped_at else "ended"
        below = "  below the go-live minimum" if b.percent < GO_LIVE_MIN_PERCENT else ""
        typer.echo(
            f"{b.name}  {state}  {len(b.vehicles)} vehicles ({b.percent:g} %){below}  "
            f"{b.started_at:%Y-%m-%d %H:%M} .. {b.until(at):%Y-%m-%d %H:%M} UTC"
        )


@shadow_app.command("stop")
def shadow_stop(batch: BatchOption, now: NowOption = None) -> None:
    """Stop a running batch (its vehicles may join another); validate still compares what it
    observed until the stop."""
    from telemetry.store import ShadowBatches, UnknownShadowBatch

    at = _now(now)
    try:
        b = asyncio.run(
            with_store(
                database_url(load_settings()), lambda store: ShadowBatches(store).stop(batch, at)
            )
        )
    except UnknownShadowBatch as exc:
        fail(str(exc))
    typer.echo(f"shadow batch {b.name} stopped at {b.stopped_at:%Y-%m-%d %H:%M:%S} UTC")


def validate(
    batch: BatchOption,
    as_json: JsonOption = False,
    threshold: ThresholdOption = None,
    now: NowOption = None,
) -> None:
    """Compare what fleetgate observed of a shadow batch with what the legacy platform observed
    (coverage, positions, state, presence, latency, gaps, usage per ride), per vehicle and in
    aggregate; record the result as go-live evidence. Exit 0 every metric green, 1 otherwise."""
    from parity import DEFAULT_THRESHOLDS, summary, validate_shadow_batch
    from telemetry.store import ShadowBatches, UnknownShadowBatch

    try:
        thresholds = DEFAULT_THRESHOLDS.with_overrides(_overrides(threshold or []))
    except ValueError as exc:
        fail(str(exc))
    at = _now(now)
    try:
        b, report, _ = asyncio.run(
            with_store(
                database_url(load_settings()),
                lambda store: validate_shadow_batch(
                    ShadowBatches(store), store, batch, thresholds, at
                ),
            )
        )
    except UnknownShadowBatch as exc:
        fail(str(exc))
    if as_json:
        doc = {"batch": b.name, "vehicles": len(b.vehicles), **report.to_json()}
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    else:
        typer.echo(
            f"shadow batch {b.name}: {len(b.vehicles)} vehicles ({b.percent:g} %), "
            f"{report.days:.2f} of {b.days:g} days compared"
        )
        for line in summary(report):
            typer.echo(line)
    raise typer.Exit(0 if report.passed else 1)


def _overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            fail(f"--threshold {item!r}: say NAME=NUMBER")
        if not eq:
            fail(f"--threshold {item!r}: say NAME=NUMBER")
    return out


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
        fail(f"--batch {name!r}: 1 to 64 letters, digits, _ . : -")


def _batch_json(b, at: datetime) -> dict:
    from parity import GO_LIVE_MIN_PERCENT

    return {
        "name": b.name,
        "state": "running" if b.running(at) else "stopped" if b.stopped_at else "ended",
        "percent": b.percent,
        "below_minimum": b.percent < GO_LIVE_MIN_PERCENT,
        "days": b.days,
        "seed": b.seed,
        "started_at": b.started_at.isoformat(),
        "ends_at": b.ends_at.isoformat(),
        "stopped_at": b.stopped_at.isoformat() if b.stopped_at else None,
        "fleet_size": b.fleet_size,
        "by_type": b.by_type,
        "vehicles": b.vehicles,
    }


def mount(root: typer.Typer) -> None:
    """`migrate shadow ...` and `migrate validate` in the `migrate` group (fleetgate/cli/
    migrate.py), which must be mounted before."""
    for group in root.registered_groups:
        if group.name == "migrate" and group.typer_instance is not None:
            group.typer_instance.add_typer(shadow_app, name="shadow")
            group.typer_instance.command("validate")(validate)
            return
    raise RuntimeError("mount the migrate group first")
