"""A migration's test run on throw-away services (`fleetgate migrate rehearse`).

The export is analysed and imported into an embedded PostgreSQL of its own (never the
configured database); a gateway runs on a private Mosquitto; the simulator drives the imported
vehicles (their device ids and types) on from where the export last saw them; a `locate` goes
to 1 % of them (at least one) through the command service. The verdict: positions, vehicles
and zones imported against exported, the commands that succeeded, every live sample stored, and
a sample vehicle's track as stored against the export (within 1 m and 1 s). Everything the
rehearsal starts it stops, and its folder is removed, whatever happens.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetgate.embedded import EmbeddedPostgres, Mosquitto
from fleetgate.settings import Settings

TRACK_TOLERANCE_M = 1.0
TRACK_TOLERANCE_MS = 1000


@dataclass(frozen=True)
class RehearsalOptions:
    """How the rehearsal runs.

    Args:
        batch: the migration batch name the import records.
        skip_invalid: import the valid records and skip the rest, as `migrate import
            --skip-invalid` would; without it a problem in the export fails the rehearsal.
        command_share: the share of imported vehicles sent a `locate` (at least one).
        drive_s: how long the simulated fleet drives after connecting.
        command_timeout_s: how long a command may take to succeed.
    """

    batch: str = "rehearsal"
    skip_invalid: bool = False
    command_share: float = 0.01
    drive_s: float = 10.0
    command_timeout_s: float = 30.0


@dataclass(frozen=True)
class Check:
    """One line of the verdict."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass
class Rehearsal:
    """The verdict: every check, and the import's report."""

    checks: list[Check] = field(default_factory=list)
    report: Any = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)


@contextmanager
def throwaway_services(say: Callable[[str], None]) -> Iterator[tuple[str, Mosquitto]]:
    """(dsn, broker) of an embedded PostgreSQL and a private Mosquitto in a temporary folder;
    both stopped and the folder removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="fleetgate-rehearse-"))
    postgres = EmbeddedPostgres(root / "postgres")
    broker = Mosquitto(datadir=root / "mosquitto")
    try:
        say(f"throw-away services in {root}: embedded PostgreSQL, private Mosquitto")
        postgres.start()
        broker.start()
        yield postgres.dsn, broker
    finally:
        broker.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


async def rehearse(
    export: Any,
    mapping: Any,
    settings: Settings,
    options: RehearsalOptions,
    say: Callable[[str], None],
) -> Rehearsal:
    """The whole rehearsal of importing `export` with `mapping` (see the module docstring)."""
    with throwaway_services(say) as (dsn, broker):
        return await _rehearse_on(dsn, broker, export, mapping, settings, options, say)


async def _rehearse_on(dsn, broker, export, mapping, settings, options, say) -> Rehearsal:
    from migration.importer import ImportOptions, import_export, map_export
    from telemetry.store import TelemetryStore, migrate

    await migrate(dsn, storage="auto", retention_days=settings.retention_days)
    result = Rehearsal()
    async with await TelemetryStore.open(dsn) as store:
        say("analysing and importing the export")
        # The throw-away fleet is commanded at once: fleetgate holds it (no cut-over rehearsed).
        import_options = ImportOptions(
            mapping=mapping, skip_invalid=options.skip_invalid, legacy_holds=False
        )
        result.report = report = await import_export(store, export, options.batch, import_options)
        result.checks.append(_counts_check(report))
        if report.outcome == "refused":
            return result
        registry = await store.load_registry()
    vehicles = sorted((d.vehicle_ref, d.device_id, d.vehicle_type) for d in registry.values())
    source = map_export(export, mapping)
    fixes = _ExportFixes.read(export, source) if hasattr(export, "devices") else None
    last = fixes.last_fixes() if fixes is not None else {}
    result.checks += await _drive(dsn, broker, settings, vehicles, last, options, say)
    if fixes is not None:
        result.checks.append(await _track_check(dsn, fixes, registry))
    return result


# --- what was imported ---------------------------------------------------------------------


def _counts_check(report) -> Check:
    """Every exported position imported (or already stored) or skipped for a listed reason."""
    exported = report.counts.get("positions", 0)
    skipped = sum(report.skipped.values())
    imported = report.imported
    accounted = imported["positions"] + skipped + report.duplicates
    detail = (
        f"{imported['vehicles']} vehicles, {imported['devices']} devices, {imported['zones']} "
        f"zones, {imported['positions']:,} of {exported:,} positions imported"
        + (f", {skipped:,} skipped ({_reasons(report.skipped)})" if skipped else "")
    )
    if report.outcome == "refused":
        return Check(
            "import",
            False,
            f"refused: {len(report.problems) + report.problems_not_listed} problems in the "
            "export (see `fleetgate migrate analyse`; --skip-invalid imports the rest)",
        )
    # `skipped` counts rejected vehicles and zones beside positions: every position is stored
    # or could be one of the skipped, and none is stored that was not exported.
    stored = imported["positions"] + report.duplicates
    passed = report.outcome == "imported" and stored <= exported <= accounted
    return Check("import", passed, detail)


def _reasons(skipped: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {why}" for why, n in sorted(skipped.items()))


# --- the export's own view of each device ----------------------------------------------------


@dataclass
class _ExportFixes:
    """Per device id (fleetgate's), the valid fixes of the export as Traccar wrote them: the
    last one of each, and the whole track of the device with the most."""

    last: dict[str, tuple[int, float, float]]
    sample_device: str | None
    sample_track: list[tuple[int, float, float]]

    @classmethod
    def read(cls, export, source) -> _ExportFixes:
        device_of = {str(k): r.device_id for k, r in source.vehicle_of_source_id.items()}
        last: dict[str, tuple[int, float, float]] = {}
        counts: dict[str, int] = {}
        for fix_device, fix in _valid_fixes(export, device_of):
            counts[fix_device] = counts.get(fix_device, 0) + 1
            if fix_device not in last or fix[0] > last[fix_device][0]:
                last[fix_device] = fix
        sample = max(counts, key=lambda d: (counts[d], d), default=None)
        track = sorted(f for d, f in _valid_fixes(export, device_of) if d == sample)
        return cls(last, sample, track)

    def last_fixes(self) -> dict[str, tuple[float, float]]:
        return {d: (lat, lon) for d, (_, lat, lon) in self.last.items()}


def _valid_fixes(export, device_of: dict[str, str]):
    """(device id, (fixTime ms, lat, lon)) of every position with a fix of an imported device."""
    for chunk in export.positions:
        for p in chunk:
            device = device_of.get(str(p.get("deviceId")))
            lat, lon, fix_time = p.get("latitude"), p.get("longitude"), p.get("fixTime")
            if device is None or p.get("valid") is False or not isinstance(fix_time, str):
                continue
            if not isinstance(lat, int | float) or not isinstance(lon, int | float):
                continue
            try:
                ms = round(
                    datetime.fromisoformat(fix_time.replace("Z", "+00:00")).timestamp() * 1e3
                )
            except ValueError:
                continue
            yield device, (ms, float(lat), float(lon))


async def _track_check(dsn: str, fixes: _ExportFixes, registry) -> Check:
    """The sample device's stored history equals its export: as many fixes, each within 1 m
    and 1 s of the exported one."""
    from telemetry.earth import haversine_m
    from telemetry.store import TelemetryStore

    if fixes.sample_device is None or fixes.sample_device not in registry:
        return Check("track", False, "no imported vehicle has a position with a fix to compare")
    device = registry[fixes.sample_device]
    first, last = fixes.sample_track[0][0], fixes.sample_track[-1][0]
    async with await TelemetryStore.open(dsn) as store, store.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT (extract(epoch FROM time) * 1000)::bigint, lat, lon FROM positions "
                "WHERE vehicle = %s AND time BETWEEN to_timestamp(%s / 1000.0) - interval '1 s' "
                "AND to_timestamp(%s / 1000.0) + interval '1 s' AND lat IS NOT NULL ORDER BY time",
                (device.vehicle, first, last),
            )
        ).fetchall()
    worst_m = worst_ms = 0.0
    for (t, lat, lon), (st, slat, slon) in zip(fixes.sample_track, rows):
        worst_m = max(worst_m, float(haversine_m(lat, lon, slat, slon)))
        worst_ms = max(worst_ms, abs(t - st))
    same = len(rows) == len(fixes.sample_track)
    passed = same and worst_m <= TRACK_TOLERANCE_M and worst_ms <= TRACK_TOLERANCE_MS
    return Check(
        "track",
        passed,
        f"{device.vehicle_ref} ({fixes.sample_device}): {len(rows)} stored fixes, "
        f"{len(fixes.sample_track)} exported; largest difference {worst_m:.2f} m, "
        f"{worst_ms / 1000:.3f} s",
    )


# --- the gateway and the simulated fleet -----------------------------------------------------


def _fleet_area(last: dict[str, tuple[float, float]]):
    """The box the simulated vehicles roam: around the export's last fixes (a kilometre of
    margin), or the simulator's default where the export has none."""
    from firmware_sim.specs import Area

    if not last:
        return Area()
    lats = [lat for lat, _ in last.values()]
    lons = [lon for _, lon in last.values()]
    margin_lat = 0.009
    margin_lon = 0.009 / max(math.cos(math.radians(sum(lats) / len(lats))), 0.1)
    return Area(
        south=max(min(lats) - margin_lat, -89.0),
        west=max(min(lons) - margin_lon, -179.9),
        north=min(max(lats) + margin_lat, 89.0),
        east=min(max(lons) + margin_lon, 179.9),
    )


async def _drive(dsn, broker, settings, vehicles, last, options, say) -> list[Check]:
    """Gateway and simulated fleet; the checks of commands and live samples."""
    from prometheus_client import CollectorRegistry

    from firmware_sim import Fleet, FleetOptions
    from fleetgate.wiring import gateway_config
    from gateway.service import Gateway

    if not vehicles:
        return [Check("fleet", False, "no vehicle was imported: nothing to drive")]
    fleet = Fleet(
        FleetOptions(
            vehicles=len(vehicles),
            named=[(device, ref, kind) for ref, device, kind in vehicles],
            start_fixes=last,
            area=_fleet_area(last),
            rate_hz=1.0,
            host=broker.host,
            port=broker.port,
            topic_root=settings.mqtt_topic_root,
            session_expiry_s=60,
            track_keys=True,
        )
    )
    config = gateway_config(settings, dsn, broker.host, broker.port)
    config.mqtt_client_id = f"fleetgate-rehearsal-{uuid.uuid4().hex[:8]}"
    config.mqtt_username = config.mqtt_password = None
    config.coap_enabled = False
    config.commands_enabled = True
    # Its own metrics registry: the rehearsal's gateway is not the process's (nor the only one
    # a test process runs).
    gateway = Gateway(config, registry=CollectorRegistry())
    running = asyncio.create_task(gateway.run(), name="rehearsal-gateway")
    try:
        await _until_ready(gateway, running)
        say(f"driving {len(vehicles)} simulated vehicles for {options.drive_s:g} s")
        checks = await _drive_fleet(fleet, gateway, vehicles, options)
        checks.append(await _live_samples_check(dsn, fleet))
        return checks
    finally:
        gateway.stop()
        await asyncio.gather(running, return_exceptions=True)


async def _until_ready(gateway, running: asyncio.Task, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (gateway.ingress is not None and gateway.ingress.subscribed.is_set()):
        if running.done():
            running.result()  # it failed to start: say why
        if time.monotonic() > deadline:
            raise TimeoutError("the rehearsal's gateway did not subscribe within 60 s")
        await asyncio.sleep(0.05)
    while gateway.commands is None:
        if running.done() or time.monotonic() > deadline:
            raise TimeoutError("the rehearsal's gateway did not start its command service")
        await asyncio.sleep(0.05)


async def _drive_fleet(fleet, gateway, vehicles, options: RehearsalOptions) -> list[Check]:
    stop = asyncio.Event()
    await fleet.start()
    driving = asyncio.create_task(fleet.run(stop), name="rehearsal-fleet")
    try:
        started = time.monotonic()
        commands = await _locate_some(gateway, vehicles, options)
        await asyncio.sleep(max(0.0, options.drive_s - (time.monotonic() - started)))
    finally:
        stop.set()
        await asyncio.gather(driving, return_exceptions=True)
        await fleet.stop(flush=True)
    return [commands]


async def _locate_some(gateway, vehicles, options: RehearsalOptions) -> Check:
    """`locate` to command_share of the vehicles (at least one), through the command service."""
    from commands.model import CommandRequest, CommandState

    count = max(1, round(len(vehicles) * options.command_share))
    chosen = vehicles[:: max(1, len(vehicles) // count)][:count]
    submitted = [
        await gateway.commands.submit(
            CommandRequest(
                vehicle=ref,
                type="locate",
                idempotency_key=f"rehearsal-{uuid.uuid4().hex}",
                requested_by="fleetgate-rehearsal",
            )
        )
        for ref, _device, _kind in chosen
    ]
    final = await asyncio.gather(
        *(gateway.commands.wait(c.id, options.command_timeout_s) for c in submitted)
    )
    succeeded = sum(1 for c in final if c.state == CommandState.SUCCEEDED)
    states = sorted({c.state.value for c in final if c.state != CommandState.SUCCEEDED})
    detail = f"locate to {count} of {len(vehicles)} vehicles: {succeeded} succeeded"
    return Check(
        "commands", succeeded == count, detail + (f" (others: {states})" if states else "")
    )


async def _live_samples_check(dsn: str, fleet, timeout: float = 30.0) -> Check:
    """Every sample the simulated devices had acknowledged is stored (the gateway commits
    before it acknowledges; this waits for the last batch)."""
    from psycopg import AsyncConnection

    expected = fleet.expected_keys()
    deadline = time.monotonic() + timeout
    while True:
        async with await AsyncConnection.connect(dsn) as conn:
            rows = await (
                await conn.execute(
                    "SELECT v.device_id, (extract(epoch FROM p.time) * 1000)::bigint FROM "
                    "positions p JOIN vehicles v ON v.id = p.vehicle WHERE p.time >= "
                    "to_timestamp(%s / 1000.0)",
                    (fleet.start_ms,),
                )
            ).fetchall()
        missing = len(expected - set(rows))
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    return Check(
        "live samples",
        bool(expected) and not missing,
        f"{len(expected) - missing:,} of {len(expected):,} simulated samples stored",
    )
