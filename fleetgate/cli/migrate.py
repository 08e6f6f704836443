"""`fleetgate migrate analyse|import|rehearse|status`: a legacy platform's fleet (Traccar, GBFS,
CSV) checked, imported, rehearsed on throw-away services and accounted for (docs/migration.md).

Exit codes: 0 everything importable (or imported), 1 problems (listed; without --skip-invalid
nothing was imported), 2 unreadable input, unknown source or no database.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import orjson
import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store
from fleetgate.cli.traccar_live import (
    LiveOptionError,
    LivePull,
    PasswordOption,
    SinceOption,
    TokenOption,
    UntilOption,
    UrlOption,
    UserOption,
)
from fleetgate.logs import setup_logging

app = typer.Typer(
    no_args_is_help=True,
    help="Migrate a fleet from another platform: analyse, import, rehearse, status",
)

IMPORTED = ("vehicles", "devices", "zones", "positions")  # migration.report.IMPORTED_KEYS
SourceOption = Annotated[str, typer.Option("--source", help="traccar | gbfs | csv")]
PathArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="PATH_OR_URL",
        help="the export: a folder, a file or a URL (none with --url, a live Traccar)",
        show_default=False,
    ),
]
MappingOption = Annotated[
    str | None, typer.Option("--mapping", metavar="FILE", help="TOML mapping file")
]
ReportOption = Annotated[
    str | None, typer.Option("--report", metavar="FILE", help="write the report as JSON")
]


def _read(source: str, path: str | None, mapping_file: str | None, live: LivePull | None = None):
    """(export, mapping), or exit 2 saying what could not be read. With live, the export is
    pulled from a Traccar server (fleetgate/cli/traccar_live.py) instead of read from path."""
    from migration.errors import UnreadableInput
    from migration.mapping import MappingError
    from migration.readers import UnknownSource, read_export, read_mapping_file

    try:
        mapping = read_mapping_file(mapping_file)
        if live is not None:
            from fleetgate.cli.traccar_live import pull_export

            return pull_export(live, load_settings().retention_days), mapping
        return read_export(source, path), mapping
    except (UnknownSource, MappingError, LiveOptionError) as exc:
        fail(str(exc))
    except UnreadableInput as exc:
        fail(f"cannot read {exc}; nothing imported")


def _live(source: str, path: str | None, url: str | None, *credentials) -> LivePull | None:
    """The live pull --url asks for (None: read PATH); exit 2 when the options clash."""
    try:
        return LivePull.from_options(source, path, url, *credentials)
    except LiveOptionError as exc:
        fail(str(exc))


def _finish(report, report_file: str | None) -> None:
    for line in report.summary():
        typer.echo(line)
    if report_file is not None:
        Path(report_file).write_bytes(
            orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
        )
    raise typer.Exit(report.exit_code)


def _unreadable(exc) -> None:
    fail(f"cannot read {exc}; nothing imported")


@app.command("analyse")
def analyse(
    source: SourceOption,
    path: PathArgument = None,
    mapping_file: MappingOption = None,
    report_file: ReportOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
    password: PasswordOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Check an export and say what an import would take and refuse; changes nothing. With
    a database configured, the registry (devices fitted elsewhere) and retention count too."""
    from migration.analysis import analyse as analyse_source
    from migration.errors import UnreadableInput
    from migration.importer import known_vehicle_types, map_export, time_window

    live = _live(source, path, url, token, user, password, since, until)
    export, mapping = _read(source, path, mapping_file, live)
    s = load_settings()

    async def run(store):
        fitted = None
        mapped = map_export(export, mapping)
        if store is not None:
            fitted = {d: r.vehicle_ref for d, r in (await store.load_registry()).items()}
            mapped.reject_unknown_types(await known_vehicle_types(store), mapped.origin)
        window = await time_window(store, None)
        return analyse_source(mapped, mapping, window, fitted)

    try:
        if s.database_url is None:
            report = asyncio.run(run(None))
        else:
            report = asyncio.run(with_store(database_url(s), run))
    except UnreadableInput as exc:
        _unreadable(exc)
    _finish(report, report_file)


@app.command("import")
def import_(
    source: SourceOption,
    batch: Annotated[str, typer.Option(help="the migration batch these vehicles belong to")],
    path: PathArgument = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="import the valid records, skip and count the rest")
    ] = False,
    provision: Annotated[
        bool, typer.Option(help="issue secrets for imported devices without one (shown once)")
    ] = False,
    since_last_run: Annotated[
        bool, typer.Option(help="only positions newer than the last run's (the cut-over delta)")
    ] = False,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="positions per write (one transaction each)")
    ] = 250_000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes reading position files (default: one CPU fewer than there are, "
            "at most 8)",
        ),
    ] = None,
    mapping_file: MappingOption = None,
    report_file: ReportOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
    password: PasswordOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """Import vehicles, devices, zones and positions; record the run."""
    from migration.errors import UnreadableInput
    from migration.importer import ImportOptions, import_export
    from telemetry.store import DataRefused, RegistrationConflict, StoreUnavailable

    live = _live(source, path, url, token, user, password, since, until)
    export, mapping = _read(source, path, mapping_file, live)
    s = load_settings()
    options = ImportOptions(
        mapping=mapping,
        skip_invalid=skip_invalid,
        provision=provision,
        since_last_run=since_last_run,
        chunk_rows=chunk_rows,
        # one CPU is left to this process, which sends the writes
        workers=workers if workers is not None else max(1, min((os.cpu_count() or 1) - 1, 8)),
    )
    try:
        report = asyncio.run(
            with_store(database_url(s), lambda store: import_export(store, export, batch, options))
        )
    except UnreadableInput as exc:
        _unreadable(exc)
    except RegistrationConflict as exc:
        fail(f"nothing registered: {exc}")
    except (StoreUnavailable, DataRefused) as exc:
        # What was committed stays, each row once; the same command again completes the import.
        fail(f"import stopped: {exc}; run it again to complete it")
    for issued in report.secrets:
        typer.echo(f"{issued.device_id}\t{issued.secret}")
    if report.secrets:
        typer.echo(
            "fleetgate: secrets are shown only now; the database keeps their hashes", err=True
        )
    _finish(report, report_file)


@app.command("rehearse")
def rehearse(
    source: SourceOption,
    path: PathArgument = None,
    skip_invalid: Annotated[
        bool, typer.Option(help="as the real import will: import the valid records only")
    ] = False,
    commands: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="share of the vehicles sent a locate (at least one)"),
    ] = 0.01,
    drive: Annotated[
        float, typer.Option(min=1.0, help="seconds the simulated fleet drives")
    ] = 10.0,
    mapping_file: MappingOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    user: UserOption = None,
    password: PasswordOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
) -> None:
    """The test run: import into a throw-away embedded PostgreSQL (never the configured
    database), run a gateway and the imported vehicles as a simulated fleet, locate some; PASS
    or FAIL. Exit 0 pass, 1 fail, 2 unreadable input. It leaves nothing behind but its verdict,
    recorded in the configured database (if any) as evidence for `migrate gate`."""
    from fleetgate.rehearsal import RehearsalOptions
    from fleetgate.rehearsal import rehearse as run_rehearsal
    from migration.errors import UnreadableInput

    s = load_settings()
    setup_logging(s.log_level if "log_level" in s.model_fields_set else "WARNING", "text")
    live = _live(source, path, url, token, user, password, since, until)
    export, mapping = _read(source, path, mapping_file, live)
    options = RehearsalOptions(skip_invalid=skip_invalid, command_share=commands, drive_s=drive)
    try:
        result = asyncio.run(
            run_rehearsal(export, mapping, s, options, lambda line: typer.echo(line))
        )
    except UnreadableInput as exc:
        _unreadable(exc)
    from fleetgate.cli.migrate_gate import record_rehearsal  # evidence for `migrate gate`

    record_rehearsal(s, result, source, url or path)
    for check in result.checks:
        typer.echo(check.line())
    typer.echo("rehearsal PASSED" if result.passed else "rehearsal FAILED")
    raise typer.Exit(0 if result.passed else 1)


@app.command("status")
def status(
    batch: Annotated[str | None, typer.Option(help="only this batch's runs")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the runs as JSON")] = False,
    cutover: Annotated[
        bool,
        typer.Option(
            "--cutover",
            help="the cut-over batches' vehicles (live, pending, not arrived, rolled back) "
            "instead of the import runs",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(min=0.0, help="seconds after its cut-over a vehicle not live is not arrived"),
    ] = 600.0,
) -> None:
    """The migration runs, newest first: what each imported, skipped and why; then each
    cut-over batch in a line (all its vehicles with --cutover)."""
    from fleetgate.cli.migrate_cutover import cutover_status

    s = load_settings()
    if cutover:
        raise typer.Exit(cutover_status(database_url(s), batch, as_json, timeout))
    runs = asyncio.run(with_store(database_url(s), lambda store: store.migration_runs(batch)))
    if as_json:
        typer.echo(orjson.dumps([_run_json(r) for r in runs], option=orjson.OPT_INDENT_2))
        return
    if not runs:
        typer.echo("no migration runs" + (f" in batch {batch!r}" if batch else ""))
    for r in runs:
        imported = ", ".join(f"{r.imported.get(k, 0)} {k}" for k in IMPORTED)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(r.skipped.items())) or "nothing"
        typer.echo(
            f"run {r.id}  {r.finished_at:%Y-%m-%d %H:%M:%S}  batch {r.batch}  {r.source} "
            f"{r.origin}{'  (delta)' if r.delta else ''}\n"
            f"  {r.outcome.replace('_', ' ')}: {imported}; skipped: {skipped}"
        )
    cutover_status(database_url(s), batch, False, timeout, summary=True)


def _run_json(r) -> dict:
    return {
        "id": r.id,
        "batch": r.batch,
        "source": r.source,
        "origin": r.origin,
        "delta": r.delta,
        "outcome": r.outcome,
        "started_at": r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat(),
        "imported": r.imported,
        "skipped": r.skipped,
        "problems": r.report.get("problems", []),
    }
