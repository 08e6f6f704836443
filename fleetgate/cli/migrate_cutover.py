"""`fleetgate migrate cutover|rollback`: a batch of migrated vehicles' command authority moved to
fleetgate and their devices re-pointed to its broker, or both given back with a backfill file
(docs/migration.md, "Cut-over and roll-back"). `migrate status --cutover [--batch]` lists the
batches' vehicles as live, pending, not arrived or rolled back (cutover_status).

Exit codes: 0 done; 1 done in the database, but devices did not all answer (listed) or, for a
roll-back, the backfill was not written; 2 bad input (unknown batch, empty selection, a vehicle
fleetgate holds already, a broker that cannot be reached before anything changed), nothing
changed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

BatchOption = Annotated[str, typer.Option("--batch", help="the cut-over batch's name")]
VehiclesOption = Annotated[
    Path | None,
    typer.Option("--vehicles", help="a file of vehicle_refs, one a line", show_default=False),
]
WaitOption = Annotated[
    float, typer.Option(min=0.0, help="seconds to wait for the devices' set_config answers")
]


@dataclass(frozen=True)
class _Cutover:
    batch: str
    refs: list[str] | None
    zone: str | None
    percent: float | None
    seed: int
    target: str  # fleetgate's broker as the devices reach it
    legacy: object | None  # fleetgate.cutover.BrokerLogin of the legacy broker
    export: Path | None
    root: str
    wait: float

    @property
    def detail(self) -> dict:
        return {
            "selection": "vehicles"
            if self.refs is not None
            else "zone"
            if self.zone
            else "percent",
            "zone": self.zone,
            "percent": self.percent,
            "seed": self.seed if self.percent is not None else None,
            "broker_url": self.target,
        }


def cutover(
    batch: BatchOption,
    vehicles: VehiclesOption = None,
    zone: Annotated[
        str | None, typer.Option(help="the vehicles whose last fix lies in this zone")
    ] = None,
    percent: Annotated[
        float | None,
        typer.Option(min=0.0, max=100.0, help="this share of the vehicles still held elsewhere"),
    ] = None,
    seed: Annotated[int, typer.Option(help="with --percent: which vehicles (reproducible)")] = 0,
    legacy_broker: Annotated[
        str | None,
        typer.Option(
            help="the legacy broker the devices are on, mqtt://host:port: set_config is "
            "published there"
        ),
    ] = None,
    legacy_username: Annotated[str | None, typer.Option(help="account there")] = None,
    legacy_password: Annotated[
        str | None, typer.Option(help="its password", envvar="FLEETGATE_LEGACY_MQTT_PASSWORD")
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(help="write the set_config messages for the legacy platform to send"),
    ] = None,
    broker_url: Annotated[
        str | None,
        typer.Option(
            help="fleetgate's broker as the devices reach it, mqtt://host:port "
            "(default: FLEETGATE_MQTT_URL)"
        ),
    ] = None,
    wait: WaitOption = 30.0,
) -> None:
    """Move a batch of migrated vehicles to fleetgate: their command authority (commands to
    them are fleetgate's from now on), and their devices to fleetgate's broker (set_config)."""
    from fleetgate.cutover import BrokerLogin
    from migration.cutover import CutoverInputError, check_batch, check_mqtt_url, read_vehicle_list

    s = load_settings()
    try:
        check_batch(batch)
        if sum(x is not None for x in (vehicles, zone, percent)) != 1:
            raise CutoverInputError("give exactly one of --vehicles, --zone, --percent")
        if legacy_broker is None and export is None:
            raise CutoverInputError(
                "give --legacy-broker (set_config is published there) or --export (the "
                "messages for the legacy platform to send), or both: the devices must learn "
                "of fleetgate's broker"
            )
        plan = _Cutover(
            batch=batch,
            refs=read_vehicle_list(str(vehicles)) if vehicles is not None else None,
            zone=zone,
            percent=percent,
            seed=seed,
            target=check_mqtt_url(broker_url or s.mqtt_url or "", "--broker-url"),
            legacy=None
            if legacy_broker is None
            else BrokerLogin.from_url(
                check_mqtt_url(legacy_broker, "--legacy-broker"), legacy_username, legacy_password
            ),
            export=export,
            root=s.mqtt_topic_root,
            wait=wait,
        )
    except CutoverInputError as exc:
        fail(str(exc))
    raise typer.Exit(asyncio.run(with_store(database_url(s), lambda st: _cut_over(st, plan))))


async def _select(store, plan: _Cutover) -> list:
    """The vehicles the plan names; exit 2 for an empty selection, an unknown vehicle or zone,
    or a vehicle that was never migrated."""
    from migration.cutover import CutoverInputError, by_percent, by_refs
    from telemetry.store import CommandAuthority

    candidates = await CommandAuthority(store).vehicles()
    try:
        if plan.refs is not None:
            chosen = by_refs(candidates, plan.refs)
            never = [c.vehicle_ref for c in chosen if c.legacy is None]
            if never:
                raise CutoverInputError(
                    "never migrated, fleetgate holds them already: " + ", ".join(never[:10])
                )
        elif plan.zone is not None:
            chosen = await _in_zone(store, candidates, plan.zone)
        else:
            chosen = by_percent(candidates, plan.percent, plan.seed)
    except CutoverInputError as exc:
        fail(str(exc))
    if not chosen:
        where = f"in zone {plan.zone!r}" if plan.zone is not None else "is left"
        fail(f"the selection is empty: no vehicle held by a legacy platform {where}")
    return chosen


async def _reachable(login, root: str, what: str) -> None:
    """Exit 2 (nothing changed yet) if the broker cannot be used."""
    from fleetgate.cutover import BrokerUnreachable, repoint

    try:
        await asyncio.to_thread(repoint, login, root, [], "mqtt://unused:1883", wait_s=0)
    except BrokerUnreachable as exc:
        fail(f"{exc}; nothing {what}")


async def _cut_over(store, plan: _Cutover) -> int:
    from fleetgate.cutover import BrokerUnreachable, device_times, export_repoint, repoint
    from telemetry.store import AuthorityConflict, CommandAuthority

    chosen = await _select(store, plan)
    if plan.legacy is not None:
        # A cut-over whose devices cannot be told is refused rather than half done.
        await _reachable(plan.legacy, plan.root, "cut over")
    authority = CommandAuthority(store)
    try:
        await authority.cut_over(plan.batch, [c.vehicle_id for c in chosen], plan.detail)
    except AuthorityConflict as exc:
        fail(str(exc))
    devices = [c.device_id for c in chosen]
    typer.echo(
        f"batch {plan.batch}: fleetgate holds {len(chosen)} vehicles now; commands to them go "
        "through fleetgate"
    )
    if plan.export is not None:
        n = export_repoint(plan.export, plan.root, devices, plan.target)
        typer.echo(f"wrote {plan.export}: {n} set_config messages for the legacy platform")
    if plan.legacy is None:
        return 0
    try:
        result = await asyncio.to_thread(
            repoint, plan.legacy, plan.root, devices, plan.target, wait_s=plan.wait,
            say=typer.echo,
        )  # fmt: skip
    except BrokerUnreachable as exc:
        typer.echo(
            f"fleetgate: {exc}; the authority moved, the devices were not all told: send the "
            "--export file's messages, or roll the batch back",
            err=True,
        )
        return 1
    vehicle_of = {c.device_id: c.vehicle_id for c in chosen}
    await authority.record_boundaries(plan.batch, "cutover", device_times(result, vehicle_of))
    return _report_answers(result, devices, plan.wait, "fleetgate's broker")


def rollback(
    batch: BatchOption,
    out: Annotated[Path, typer.Option(help="the backfill file to write (JSON Lines)")],
    legacy_url: Annotated[
        str,
        typer.Option(help="the legacy broker as the devices reach it, mqtt://host:port"),
    ],
    vehicles: VehiclesOption = None,
    wait: WaitOption = 30.0,
) -> None:
    """Give a batch's vehicles (all, or --vehicles) back to the legacy platform: authority
    (new commands refused with 409, queued ones failed), devices re-pointed to the legacy broker
    through fleetgate's, and a backfill file of what fleetgate stored since the cut-over."""
    from fleetgate.cutover import BrokerLogin
    from migration.cutover import CutoverInputError, check_batch, check_mqtt_url, read_vehicle_list

    s = load_settings()
    try:
        check_batch(batch)
        check_mqtt_url(legacy_url, "--legacy-url")
        refs = read_vehicle_list(str(vehicles)) if vehicles is not None else None
        if out.is_dir():
            raise CutoverInputError(f"--out {out} is a folder")
    except CutoverInputError as exc:
        fail(str(exc))
    ours = BrokerLogin.from_url(
        s.mqtt_url or "mqtt://127.0.0.1:1883",
        s.mqtt_username,
        s.mqtt_password.get_secret_value() if s.mqtt_password else None,
    )

    async def run(store) -> int:
        ids = await _rollback_ids(store, batch, refs)
        await _reachable(ours, s.mqtt_topic_root, "rolled back")
        return await _roll_back(store, batch, ids, ours, s.mqtt_topic_root, legacy_url, out, wait)

    raise typer.Exit(asyncio.run(with_store(database_url(s), run)))


async def _rollback_ids(store, batch: str, refs: list[str] | None) -> list[int] | None:
    """The vehicle ids --vehicles names (None: the whole batch); exit 2 for an unknown batch
    or vehicle."""
    from telemetry.store import CommandAuthority

    authority = CommandAuthority(store)
    if batch not in await authority.batches():
        fail(f"no cut-over batch {batch!r}; nothing rolled back")
    if refs is None:
        return None
    known = {c.vehicle_ref: c.vehicle_id for c in await authority.vehicles()}
    unknown = [r for r in refs if r not in known]
    if unknown:
        fail(f"unknown vehicles: {', '.join(unknown[:10])}; nothing rolled back")
    return [known[r] for r in refs]


async def _roll_back(store, batch, ids, ours, root, legacy_url, out: Path, wait) -> int:
    from fleetgate.cutover import BrokerUnreachable, device_times, repoint, write_backfill
    from telemetry.store import AuthorityConflict, CommandAuthority

    authority = CommandAuthority(store)
    try:
        held = await authority.roll_back(batch, ids, {"legacy_url": legacy_url})
    except AuthorityConflict as exc:
        fail(str(exc))
    devices = [h.device_id for h in held]
    vehicle_of = {h.device_id: h.vehicle_id for h in held}
    platforms = ", ".join(sorted({h.legacy or "?" for h in held}))
    typer.echo(
        f"batch {batch}: {len(held)} vehicles back with {platforms}; fleetgate refuses "
        "commands to them (409)"
    )
    status, result = 0, None
    try:
        result = await asyncio.to_thread(
            repoint, ours, root, devices, legacy_url, wait_s=wait, wait_left=True, say=typer.echo
        )
    except BrokerUnreachable as exc:
        typer.echo(f"fleetgate: {exc}; the devices were not all told", err=True)
        status = 1
    back: list[str] = []
    if result is not None:
        await authority.record_boundaries(batch, "rollback", device_times(result, vehicle_of))
        status = _report_answers(result, devices, wait, "the legacy broker")
        back = sorted(set(result.succeeded()) & result.left)
        if len(back) < len(result.succeeded()):
            n = len(result.succeeded()) - len(back)
            typer.echo(f"fleetgate: {n} devices answered but were not seen leaving", err=True)
            status = 1
    if back and not await _stored_until_gone(authority, result, vehicle_of, back, wait):
        status = 1
    written = None
    try:
        written = await write_backfill(authority, batch, list(vehicle_of.values()), out)
        typer.echo(
            f"wrote {out}: {written['samples']} samples and {written['events']} events for the "
            "legacy platform to backfill"
        )
    except OSError as exc:
        typer.echo(f"fleetgate: cannot write {out}: {exc}", err=True)
        status = 1
    await _evidence(store, batch, devices, back, out, written)
    return status


async def _stored_until_gone(authority, result, vehicle_of, back, wait: float) -> bool:
    """Wait (up to wait seconds) until the gateway has stored each departed device's offline
    status, after which everything it sent before is stored too; False (listed) if not."""
    from fleetgate.cutover import device_times

    since = {
        v: t
        for v, t in device_times(result, vehicle_of).items()
        if v in {vehicle_of[d] for d in back}
    }
    loop = asyncio.get_running_loop()
    until = loop.time() + max(wait, 1.0)
    gone = await authority.gone_since(since)
    while len(gone) < len(since) and loop.time() < until:
        await asyncio.sleep(0.2)
        gone = await authority.gone_since(since)
    missing = sorted(d for d in back if vehicle_of[d] not in gone)
    if missing:
        typer.echo(
            f"fleetgate: the gateway has not stored the departure of {len(missing)} devices "
            f"({', '.join(missing[:10])}): their last samples may be missing from the file",
            err=True,
        )
    return not missing


async def _evidence(store, batch, devices, back, out: Path, written) -> None:
    """The roll-back's evidence for the go-live gate: passed when every device is back on the
    legacy broker and the backfill file is written."""
    await store.record_migration_evidence(
        "rollback",
        batch=batch,
        passed=bool(devices) and len(back) == len(devices) and written is not None,
        detail={
            "vehicles": len(devices),
            "back": len(back),
            "not_back": sorted(set(devices) - set(back))[:100],
            "file": str(out.resolve()),
            "samples": written["samples"] if written else None,
            "events": written["events"] if written else None,
        },
    )


def _report_answers(result, devices: list[str], wait: float, where: str) -> int:
    ok, refused = result.succeeded(), result.refused()
    silent = [d for d in devices if d not in result.answers]
    typer.echo(f"{len(ok)} of {len(devices)} devices carried out set_config (moving to {where})")
    for d, reason in sorted(refused.items()):
        typer.echo(f"  {d}: refused ({reason})")
    if silent:
        typer.echo(
            f"  no answer within {wait:g} s from {len(silent)}: "
            + ", ".join(silent[:10])
            + (" ..." if len(silent) > 10 else "")
        )
    return 0 if not refused and not silent else 1


async def _in_zone(store, candidates, zone_id: str):
    """The candidates held by a legacy platform whose last fix lies in the zone; exit 2 for an
    unknown zone."""
    import numpy as np

    from geofence.zoneset import ZoneSet

    rows = [r for r in (await store.load_zones()).rows if r["id"] == zone_id]
    if not rows:
        fail(f"no zone {zone_id!r}")
    pool = [c for c in candidates if c.holder != "fleetgate" and c.lat is not None]
    if not pool:
        return []
    zones = ZoneSet.from_rows(rows)
    inside = np.diff(
        zones.locate(np.array([c.lat for c in pool]), np.array([c.lon for c in pool])).ptr
    )
    return [c for c, n in zip(pool, inside.tolist()) if n > 0]


def cutover_lines(batch_rows, timeout_s: float, now: datetime | None = None) -> list[str]:
    """`migrate status` lines of a cut-over batch: each vehicle live (a sample from the device
    at or after its boundary is stored), pending (not yet, within timeout_s of the cut-over),
    not arrived (later than that), or rolled back."""
    now = now or datetime.now(UTC)
    counts = {"live": 0, "pending": 0, "not arrived": 0, "rolled back": 0}
    lines = []
    for v in batch_rows:
        state = vehicle_state(v, timeout_s, now)
        counts[state] += 1
        since = f"  first sample {v.first_sample:%H:%M:%S}" if v.first_sample else ""
        lines.append(f"  {v.vehicle_ref}  {v.device_id}  {state}{since}")
    head = ", ".join(f"{n} {k}" for k, n in counts.items())
    return [head, *lines]


def vehicle_state(v, timeout_s: float, now: datetime) -> str:
    if v.rolled_back_at is not None:
        return "rolled back"
    if v.first_sample is not None:
        return "live"
    if now - v.cutover_at > timedelta(seconds=timeout_s):
        return "not arrived"
    return "pending"


def mount(group: typer.Typer) -> None:
    """cutover and rollback in the `migrate` group."""
    group.command("cutover")(cutover)
    group.command("rollback")(rollback)


def cutover_status(
    dsn: str, batch: str | None, as_json: bool, timeout_s: float, *, summary: bool = False
) -> int:
    """Print the cut-over batches (or one): a line each with summary, else every vehicle; as
    JSON with as_json. Exit status: 2 for an unknown batch asked for by name, else 0."""
    import orjson

    from telemetry.store import CommandAuthority

    async def read(store):
        authority = CommandAuthority(store)
        names = await authority.batches()
        if batch is not None:
            names = [n for n in names if n == batch]
        return [(n, await authority.batch(n)) for n in names]

    batches = asyncio.run(with_store(dsn, read))
    if summary:
        for name, rows in batches:
            typer.echo(f"cut-over batch {name}: {cutover_lines(rows, timeout_s)[0]}")
        return 0
    if batch is not None and not batches:
        fail(f"no cut-over batch {batch!r}")
    now = datetime.now(UTC)
    if as_json:
        doc = [
            {
                "batch": name,
                "vehicles": [
                    {
                        "vehicle_ref": v.vehicle_ref,
                        "device_id": v.device_id,
                        "state": vehicle_state(v, timeout_s, now),
                        "holder": v.holder,
                        "cutover_at": v.cutover_at.isoformat(),
                        "device_t": v.since_t.isoformat() if v.since_t else None,
                        "first_sample": v.first_sample.isoformat() if v.first_sample else None,
                        "rolled_back_at": (
                            v.rolled_back_at.isoformat() if v.rolled_back_at else None
                        ),
                    }
                    for v in rows
                ],
            }
            for name, rows in batches
        ]
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        return 0
    if not batches:
        typer.echo("no cut-over batches")
    for name, rows in batches:
        lines = cutover_lines(rows, timeout_s, now)
        typer.echo(f"cut-over batch {name}: {lines[0]}")
        for line in lines[1:]:
            typer.echo(line)
    return 0
