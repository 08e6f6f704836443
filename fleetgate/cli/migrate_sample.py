"""`fleetgate migrate validation-sample` and `fleetgate migrate signoff`: the manual check of at
least 10 % of a batch's migrated records (vehicle master data, zones, 20 positions per vehicle
beside the source export), signed off by a person (migration/sample.py has the file's rules).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import numpy as np
import orjson
import typer

from fleetgate.cli.migrate import MappingOption, PathArgument, SourceOption, _read
from fleetgate.cli.migrate_gate import unknown_batch
from fleetgate.cli.shared import database_url, fail, load_settings, with_store
from fleetgate.go_live import known_batch

BatchOption = Annotated[str, typer.Option(help="the migration batch the records were imported as")]


def _geometry_text(geometry) -> str:
    return orjson.dumps(geometry, option=orjson.OPT_SORT_KEYS).decode()


def _fix(lat: float, lon: float) -> str:
    return f"{lat:.6f},{lon:.6f}"


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


async def _export_positions(mapped, window, devices: set[str]) -> dict[str, np.ndarray]:
    """device id -> (n, 3) array of (time ms, lat, lon) the export holds for it, by time, valid
    fixes only (as the import takes them)."""
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    for _file, chunk in mapped.chunks(window):
        rows = chunk.rows
        if not len(rows):
            continue
        wanted = [i for i, d in enumerate(rows.devices) if d in devices]
        if not wanted:
            continue
        t, lat, lon = rows.columns["time_ms"], rows.columns["lat"], rows.columns["lon"]
        for index in wanted:
            mask = (rows.device == index) & ~np.isnan(lat) & ~np.isnan(lon)
            if mask.any():
                parts[rows.devices[index]].append(
                    np.column_stack([t[mask].astype(np.float64), lat[mask], lon[mask]])
                )
    out = {}
    for device, arrays in parts.items():
        fixes = np.concatenate(arrays)
        out[device] = fixes[np.argsort(fixes[:, 0], kind="stable")]
    return out


async def _stored_fixes(store, vehicle: int, times_ms: list[int]) -> dict[int, tuple]:
    async with store.connection() as conn:
        cur = await conn.execute(
            "SELECT (extract(epoch FROM time) * 1000)::bigint, lat, lon FROM positions "
            "WHERE vehicle = %s AND time = ANY(SELECT timestamptz 'epoch' + t * interval "
            "'1 millisecond' FROM unnest(%s::int8[]) AS t)",
            (vehicle, times_ms),
        )
        return {row[0]: (row[1], row[2]) for row in await cur.fetchall()}


async def _position_rows(store, mapped, migrated, vehicles: list[str], rows: list) -> int:
    """Append up to 20 positions per sampled vehicle, the export's beside the stored; how many."""
    from migration.importer import time_window
    from migration.sample import Row, spread
    from telemetry.earth import haversine_m

    window = await time_window(store, None)
    devices = {migrated[ref][0].device_id: ref for ref in vehicles}
    fixes = await _export_positions(mapped, window, set(devices))
    positions = 0
    for ref in vehicles:
        record, device = migrated[ref]
        track = fixes.get(record.device_id)
        if track is None:
            continue
        picked = track[spread(len(track))]
        times = [int(t) for t in picked[:, 0]]
        stored = await _stored_fixes(store, device.vehicle, times)
        for (_t, lat, lon), ms in zip(picked, times):
            ours = stored.get(ms)
            if ours is None or ours[0] is None:
                difference, ours_text = "not stored", ""
            else:
                metres = float(haversine_m(lat, lon, ours[0], ours[1]))
                ours_text, difference = _fix(*ours), ("" if metres < 0.01 else f"{metres:.2f} m")
            rows.append(
                Row(
                    "position",
                    f"{ref} {_time(ms)}",
                    "lat,lon",
                    _fix(lat, lon),
                    ours_text,
                    difference,
                )
            )
            positions += 1
    return positions


async def build_sample(store, mapped, batch: str, percent: float, seed: int):
    """(meta, rows) of the sample, or a reason it cannot be drawn."""
    from migration.sample import Row, SampleMeta, choose

    registry = await store.load_registry()
    migrated = {
        r.vehicle_ref: (r, registry[r.device_id])
        for r in mapped.registry.vehicles
        if r.device_id in registry and registry[r.device_id].vehicle_ref == r.vehicle_ref
    }
    if not migrated:
        return "none of the export's vehicles is in the database: import the batch first"
    stored_zones = {z["id"]: z for z in (await store.load_zones()).rows}
    export_zones = {z["id"]: z for z in mapped.registry.zones if z["id"] in stored_zones}
    vehicles = choose(list(migrated), percent, seed)
    zones = choose(list(export_zones), percent, seed)

    rows: list[Row] = []
    for ref in vehicles:
        record, device = migrated[ref]
        for name, source, ours in (
            ("device_id", record.device_id, device.device_id),
            ("vehicle_type", record.vehicle_type, device.vehicle_type),
        ):
            rows.append(
                Row("vehicle", ref, name, source, ours, "" if source == ours else "differs")
            )
    for zone_id in zones:
        source, ours = export_zones[zone_id], stored_zones[zone_id]
        for name in ("name", "geometry"):
            a, b = source.get(name), ours.get(name)
            if name == "geometry":
                a, b = _geometry_text(a), _geometry_text(b)
            a, b = str(a or ""), str(b or "")
            rows.append(Row("zone", zone_id, name, a, b, "" if a == b else "differs"))

    positions = await _position_rows(store, mapped, migrated, vehicles, rows)
    meta = SampleMeta(
        batch=batch,
        seed=seed,
        percent=percent,
        vehicles=(len(vehicles), len(migrated)),
        zones=(len(zones), len(export_zones)),
        positions=positions,
        rows=len(rows),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        extra={"source": mapped.source, "origin": mapped.origin},
    )
    return meta, rows


def validation_sample(
    source: SourceOption,
    batch: BatchOption,
    out: Annotated[Path, typer.Option(metavar="FILE", help="the CSV to write")],
    path: PathArgument = None,
    percent: Annotated[
        float,
        typer.Option(
            min=0.0, max=100.0, help="share of the migrated vehicles and zones (go-live: >= 10)"
        ),
    ] = 10.0,
    seed: Annotated[int, typer.Option(help="the same seed draws the same sample")] = 1,
    mapping_file: MappingOption = None,
) -> None:
    """Write a seeded sample of the batch's migrated vehicles and zones, with 20 positions per
    vehicle as stored beside the export's, for a person to check row by row (`check`: ok or a
    comment) and sign off with `fleetgate migrate signoff`."""
    from migration.importer import map_export
    from migration.sample import GO_LIVE_MIN_PERCENT, write_sample

    if not percent > 0:
        fail("--percent must be more than 0")
    if path is None:
        fail("name the export the batch was imported from (PATH_OR_URL)")
    export, mapping = _read(source, path, mapping_file)
    s = load_settings()

    async def run(store):
        if not await known_batch(store, batch):
            return None
        return await build_sample(store, map_export(export, mapping), batch, percent, seed)

    built = asyncio.run(with_store(database_url(s), run))
    if built is None:
        unknown_batch(batch)
    if isinstance(built, str):
        fail(built)
    meta, rows = built
    try:
        out.write_text(write_sample(meta, rows))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(
        f"sample of batch {batch} (seed {seed}): {meta.vehicles[0]} of {meta.vehicles[1]} "
        f"vehicles, {meta.zones[0]} of {meta.zones[1]} zones, {meta.positions} positions; "
        f"{len(rows)} rows to check in {out}"
    )
    differing = sum(1 for r in rows if r.difference)
    if differing:
        typer.echo(f"{differing} rows differ from the export: see their `difference`")
    if percent < GO_LIVE_MIN_PERCENT:
        typer.echo(
            f"fleetgate: warning: {percent:g} % is below the go-live minimum of "
            f"{GO_LIVE_MIN_PERCENT:g} %; its sign-off will not open the gate",
            err=True,
        )


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror or exc}")
    except UnicodeDecodeError:
        fail(f"{file} is not UTF-8 text: not a file written by validation-sample")


def signoff(
    file: Annotated[Path, typer.Option(metavar="FILE", help="the filled sample CSV")],
    by: Annotated[str, typer.Option(metavar="NAME", help="who checked the rows")],
) -> None:
    """Record the sign-off of a filled sample: every row `ok` or a comment, the file as
    validation-sample wrote it. Otherwise exit 2 with the reason per row, nothing recorded."""
    from migration.sample import SampleRefused, read_filled

    if not by.strip():
        fail("--by must name who checked the rows")
    text = _read_text(file)
    try:
        filled = read_filled(text)
    except SampleRefused as exc:
        for reason in exc.reasons:
            typer.echo(f"fleetgate: {file}: {reason}", err=True)
        fail(f"not signed off: {len(exc.reasons)} reasons above; nothing recorded")
    meta = filled.meta
    detail = {
        "by": by.strip(),
        "percent": meta.covered_percent,
        "asked_percent": meta.percent,
        "seed": meta.seed,
        "vehicles": list(meta.vehicles),
        "zones": list(meta.zones),
        "positions": meta.positions,
        "rows": filled.rows,
        "ok": filled.ok,
        "comments": filled.comments,
        "file": str(file),
        "sample_created": meta.created,
    }
    s = load_settings()

    async def run(store):
        if not await known_batch(store, meta.batch):
            return None
        return await store.record_migration_evidence(
            "signoff", batch=meta.batch, passed=True, detail=detail
        )

    evidence = asyncio.run(with_store(database_url(s), run))
    if evidence is None:
        unknown_batch(meta.batch)
    typer.echo(
        f"signed off by {by.strip()}: batch {meta.batch}, {meta.covered_percent:g} % of the "
        f"migrated records, {filled.rows} rows, {filled.ok} ok, {len(filled.comments)} with a "
        f"comment (evidence {evidence})"
    )
    for c in filled.comments:
        typer.echo(f"  line {c['line']} {c['kind']} {c['key']} {c['field']}: {c['comment']}")
    if meta.covered_percent < 10.0:
        typer.echo(
            f"fleetgate: warning: {meta.covered_percent:g} % is below the go-live minimum of 10 %",
            err=True,
        )
