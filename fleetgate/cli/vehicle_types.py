"""`fleetgate vehicle-types list|add`: the vehicle type registry (GBFS vehicle_types) that
vehicles are registered against (docs/api.md, Vehicle types)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import orjson
import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

app = typer.Typer(
    no_args_is_help=True, help="Vehicle types (GBFS form factor and propulsion, battery pack)"
)


@app.command("list")
def vehicle_types_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Every vehicle type: id, form factor, propulsion, design speed, pack, low-battery level."""
    dsn = database_url(load_settings())
    types = asyncio.run(with_store(dsn, lambda store: store.vehicle_types()))
    if as_json:
        typer.echo(orjson.dumps([t.to_dict() for t in types.values()]).decode())
        return
    typer.echo("id\tform_factor\tpropulsion_type\tmax_speed_kmh\tbattery_wh\tlow_soc_pct\tname")
    for t in types.values():
        wh = t.battery_capacity_wh
        typer.echo(
            f"{t.id}\t{t.form_factor}\t{t.propulsion_type}\t{_number(t.max_speed_kmh)}\t"
            f"{_number(wh)}\t{_number(t.low_soc_pct)}\t{t.name}"
        )


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


@app.command("add")
def vehicle_types_add(
    type_id: Annotated[str, typer.Argument(metavar="ID", help="the id vehicles are registered by")],
    form_factor: Annotated[
        str,
        typer.Option(
            "--form-factor",
            help="GBFS form factor: bicycle, cargo_bicycle, car, moped, scooter_standing, "
            "scooter_seated, other",
        ),
    ],
    propulsion_type: Annotated[
        str,
        typer.Option(
            "--propulsion",
            help="GBFS propulsion type: human, electric_assist, electric, combustion, "
            "combustion_diesel, hybrid, plug_in_hybrid, hydrogen_fuel_cell",
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="shown to people (default: ID)")
    ] = None,
    max_speed_kmh: Annotated[
        float | None, typer.Option("--max-speed-kmh", help="design top speed")
    ] = None,
    max_range_m: Annotated[
        float | None, typer.Option("--max-range-m", help="range on a full charge, m")
    ] = None,
    battery_ah: Annotated[
        float | None, typer.Option("--battery-ah", help="traction pack nominal capacity, Ah")
    ] = None,
    battery_v: Annotated[
        float | None, typer.Option("--battery-v", help="traction pack nominal voltage, V")
    ] = None,
    low_soc_pct: Annotated[
        float, typer.Option("--low-soc-pct", help="low battery below this state of charge")
    ] = 20.0,
    swappable: Annotated[
        bool, typer.Option("--swappable/--fixed-battery", help="packs are exchanged")
    ] = False,
) -> None:
    """Add a vehicle type, or change the one with this id. Its battery pack, plausible speed and
    lock interlock follow from these values in the gateway within a registry refresh."""
    from telemetry.vehicle_types import InvalidVehicleType, VehicleType

    try:
        vehicle_type = VehicleType(
            type_id,
            name if name is not None else type_id,
            form_factor,
            propulsion_type,
            max_speed_kmh=max_speed_kmh,
            max_range_meters=max_range_m,
            battery_nominal_ah=battery_ah,
            battery_nominal_v=battery_v,
            low_soc_pct=low_soc_pct,
            battery_swappable=swappable,
        )
    except InvalidVehicleType as exc:
        fail(f"nothing changed: {exc}")
    dsn = database_url(load_settings())

    async def add(store) -> bool:
        existed = type_id in await store.vehicle_types()
        await store.upsert_vehicle_types([vehicle_type])
        return existed

    existed = asyncio.run(with_store(dsn, add))
    typer.echo(f"vehicle type {type_id}: {'changed' if existed else 'added'}")
