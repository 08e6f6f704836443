"""`fleetgate migrate validation-sample|signoff|failover-drill|load-evidence|gate`: the evidence a
batch needs before go-live, and the gate that reads it (docs/migration.md "The go-live gate").

Each command but `gate` records one piece of evidence (migration_evidence) in the configured
database; `gate` reads them with the evaluation of migration/gate.py.

Exit codes: gate 0 every criterion met, 1 some unmet (each listed); the others 0 recorded and
passed, 1 recorded and failed; all 2 for bad input (unknown batch, an altered sample file, ...)
with nothing recorded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import orjson
import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store


def mount(group: typer.Typer) -> None:
    """Add this module's commands to the `migrate` group."""
    from fleetgate.cli import migrate_drill, migrate_sample

    group.command("validation-sample")(migrate_sample.validation_sample)
    group.command("signoff")(migrate_sample.signoff)
    group.command("failover-drill")(migrate_drill.failover_drill)
    group.command("load-evidence")(load_evidence)
    group.command("gate")(gate)


def unknown_batch(batch: str) -> None:
    fail(
        f"unknown batch {batch!r}: no migration run or evidence of that name "
        "(`fleetgate migrate status` lists the batches imported)"
    )


# --- gate ----------------------------------------------------------------------------------------


def _windows(values: list[str]) -> dict[str, float]:
    from migration.gate import GateThresholds

    windows = dict(GateThresholds().windows_days)
    for value in values:
        kind, sep, days = value.partition("=")
        if not sep or kind not in windows:
            fail(f"--window {value!r}: expected KIND=DAYS with KIND one of {', '.join(windows)}")
        try:
            windows[kind] = float(days)
        except ValueError:
            fail(f"--window {value!r}: {days!r} is not a number of days")
        if not windows[kind] > 0:
            fail(f"--window {value!r}: the window must be more than 0 days")
    return windows


def gate(
    batch: Annotated[str, typer.Option(help="the migration batch to go live")],
    ready_url: Annotated[
        list[str] | None,
        typer.Option(
            "--ready-url",
            metavar="URL",
            help="a process's readiness URL (http://host:9108/readyz); repeat for every gateway "
            "and API process of the deployment (default: FLEETGATE_MIGRATION_READY_URLS)",
        ),
    ] = None,
    window: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KIND=DAYS",
            help="how old evidence of a kind may be (default 30 days each), e.g. rehearsal=14",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the verdict as JSON")] = False,
) -> None:
    """Exit 0 only when every go-live criterion is met by fresh evidence; else 1 and each unmet
    criterion with what is missing."""
    from fleetgate.go_live import gate_verdict, ready_urls_setting
    from migration.gate import GateThresholds

    thresholds = GateThresholds(windows_days=_windows(window or []))
    s = load_settings()
    urls = list(ready_url or ready_urls_setting(s.migration_ready_urls))

    async def run(store):
        return await gate_verdict(store, batch, urls, thresholds)

    verdict = asyncio.run(with_store(database_url(s), run))
    if verdict is None:
        unknown_batch(batch)
    if as_json:
        typer.echo(orjson.dumps(verdict.to_json(), option=orjson.OPT_INDENT_2))
    else:
        for criterion in verdict.criteria:
            typer.echo(criterion.line())
        unmet = len(verdict.unmet)
        typer.echo(
            f"batch {batch}: go-live gate "
            + ("OPEN" if verdict.passed else f"CLOSED ({unmet} of {len(verdict.criteria)} unmet)")
        )
    raise typer.Exit(0 if verdict.passed else 1)


# --- load evidence -------------------------------------------------------------------------------


def load_evidence(
    expected_rate: Annotated[
        float,
        typer.Option(min=0.0, help="samples per second the deployment must take in production"),
    ],
    benchmark: Annotated[
        Path,
        typer.Option(
            metavar="FILE",
            help="the JSON `python -m benchmarks.ingest` printed on the deployment's hardware",
        ),
    ],
    factor: Annotated[
        float, typer.Option(min=1.0, help="the multiple of the expected rate to be shown")
    ] = 1.5,
) -> None:
    """Record load evidence from an ingest benchmark: its paced run (a steady offered rate,
    every acknowledged sample stored once) must sustain factor x the expected rate."""
    from migration.gate import load_from_benchmark

    if not expected_rate > 0:
        fail("--expected-rate must be more than 0 samples per second")
    try:
        document = orjson.loads(benchmark.read_bytes())
    except OSError as exc:
        fail(f"cannot read {benchmark}: {exc.strerror or exc}")
    except orjson.JSONDecodeError as exc:
        fail(f"{benchmark} is not JSON: {exc}")
    try:
        load = load_from_benchmark(document, expected_rate, factor)
    except ValueError as exc:
        fail(f"{benchmark}: {exc}")
    load.detail["file"] = str(benchmark)
    s = load_settings()
    evidence = asyncio.run(
        with_store(
            database_url(s),
            lambda store: store.record_migration_evidence(
                "load",
                batch=None,
                passed=load.passed,
                detail=load.detail,
                recorded_at=load.measured_at,
            ),
        )
    )
    typer.echo(f"{'PASS' if load.passed else 'FAIL'}  load: {load.summary()} (evidence {evidence})")
    raise typer.Exit(0 if load.passed else 1)


# --- the rehearsal's verdict ---------------------------------------------------------------------


def record_rehearsal(s, result, source: str, origin: str | None) -> None:
    """`migrate rehearse` ran on services of its own: its verdict goes into the configured
    database (where there is one) as evidence for the gate. A database that cannot take it is
    said, not fatal: the rehearsal's own verdict stands."""
    from telemetry.store import TelemetryStore

    if s.database_url is None:
        typer.echo("no database configured: the verdict is not recorded as evidence", err=True)
        return
    failed = [c for c in result.checks if not c.passed]
    detail = {
        "source": source,
        "origin": origin,
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in result.checks],
    }
    if failed:
        detail["reason"] = "; ".join(f"{c.name}: {c.detail}" for c in failed)

    async def record() -> int:
        async with await TelemetryStore.open(s.database_url.get_secret_value()) as store:
            return await store.record_migration_evidence(
                "rehearsal", batch=None, passed=result.passed, detail=detail
            )

    try:
        evidence = asyncio.run(record())
    except Exception as exc:  # noqa: BLE001 - said, not fatal: the rehearsal's verdict stands
        typer.echo(
            f"fleetgate: the verdict could not be recorded as evidence: {exc}"[:400], err=True
        )
        return
    typer.echo(f"verdict recorded as evidence {evidence}")
