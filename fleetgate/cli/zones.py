"""`fleetgate zones import|export|list`: the geofencing zones, validated by the geofence core,
in and out as GBFS v3 geofencing_zones.json or fleetgate's own zones document."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

app = typer.Typer(no_args_is_help=True, help="Geofencing zones (GBFS v3 rules)")


def _read_zone_document(path: str, kinds: dict[str, str]):
    """A GBFS v3 geofencing_zones.json, or fleetgate's {"zones": [...], "global_rules": [...]},
    with the zones named in `kinds` (id or name -> kind) given those kinds."""
    from geofence import InvalidZone, ZoneSet, assign_kinds

    try:
        doc = orjson.loads(sys.stdin.buffer.read() if path == "-" else open(path, "rb").read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc
    try:
        if isinstance(doc, dict) and "geofencing_zones" in (doc.get("data") or {}):
            zoneset = ZoneSet.from_gbfs(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("zones"), list):
            zoneset = ZoneSet.from_rows(doc["zones"], global_rules=doc.get("global_rules") or [])
        else:
            raise typer.BadParameter(
                f"{path} is neither a GBFS geofencing_zones.json nor a fleetgate zones document "
                '({"zones": [...], "global_rules": [...]})'
            )
        if kinds:
            zoneset = ZoneSet(
                assign_kinds(list(zoneset.zones), kinds), global_rules=zoneset.global_rules
            )
        return zoneset
    except InvalidZone as exc:
        fail(f"rejected, nothing changed: {exc}")


def _zone_kinds(pairs: list[str], path: str | None) -> dict[str, str]:
    """--kinds FILE (a JSON object), then every --kind NAME_OR_ID=KIND (replacing the file's
    entry for the same key)."""
    kinds: dict[str, str] = {}
    if path is not None:
        try:
            loaded = orjson.loads(Path(path).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--kinds") from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise typer.BadParameter(
                f"{path} is not a JSON object of zone id or name -> kind", param_hint="--kinds"
            )
        kinds.update(loaded)
    for pair in pairs:
        key, sep, kind = pair.rpartition("=")
        if not sep or not key or not kind:
            raise typer.BadParameter(f"{pair!r} is not NAME_OR_ID=KIND", param_hint="--kind")
        kinds[key] = kind
    return kinds


@app.command("import")
def zones_import(
    path: Annotated[str, typer.Argument(help="file to read, - for standard input")],
    replace: Annotated[
        bool,
        typer.Option(
            help="the file becomes the whole zone set (zones not "
            "in it are deleted, global rules replaced)"
        ),
    ] = False,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind",
            metavar="NAME_OR_ID=KIND",
            help="give the zone(s) with this id, or else this name, a kind (operating_area, "
            "no_parking, slow, no_ride, station, other); repeatable. GBFS files have no kinds: "
            "their zones are 'other' without it",
        ),
    ] = None,
    kinds_file: Annotated[
        str | None,
        typer.Option(
            "--kinds", metavar="FILE", help="the same as a JSON object {name or id: kind}"
        ),
    ] = None,
) -> None:
    """Validate zones with the geofence core and store them; running gateways pick them up."""
    s = load_settings()
    zoneset = _read_zone_document(path, _zone_kinds(kind or [], kinds_file))
    rows = [z.to_row() for z in zoneset.zones]
    rules = [r.model_dump(mode="json", exclude_none=True) for r in zoneset.global_rules]

    async def action(store):
        if replace:
            return await store.replace_zones(rows, rules)
        return await store.put_zones(rows)

    version = asyncio.run(with_store(database_url(s), action))
    typer.echo(
        f"{len(rows)} zones {'replace the zone set' if replace else 'stored'}; "
        f"zone set version {version}"
    )


@app.command("export")
def zones_export(
    gbfs: Annotated[bool, typer.Option(help="as GBFS v3 geofencing_zones.json")] = False,
) -> None:
    """Print the zone set (fleetgate's document, or GBFS v3)."""
    from geofence import ZoneSet

    s = load_settings()
    zones = asyncio.run(with_store(database_url(s), lambda store: store.load_zones()))
    zoneset = ZoneSet.from_rows(zones.rows, global_rules=zones.global_rules, version=zones.version)
    doc = (
        zoneset.to_gbfs()
        if gbfs
        else {
            "version": zones.version,
            "zones": zoneset.to_rows(),
            "global_rules": [
                r.model_dump(mode="json", exclude_none=True) for r in zoneset.global_rules
            ],
        }
    )
    typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


@app.command("list")
def zones_list() -> None:
    """One line per zone: id, kind, priority, name."""
    s = load_settings()
    zones = asyncio.run(with_store(database_url(s), lambda store: store.load_zones()))
    typer.echo(f"zone set version {zones.version}, {len(zones.rows)} zones")
    for row in zones.rows:
        typer.echo(f"{row['id']:<24} {row['kind']:<15} {row['priority']:>5}  {row['name']}")
