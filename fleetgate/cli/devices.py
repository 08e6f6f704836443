"""`fleetgate devices register|provision|rotate|list`: the device registry and device identity
from the command line (docs/device-identity.md).

Registrations are validated like `POST /v1/devices` bodies; secrets are printed once, when they
are issued, and stored only as hashes.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import re
import sys
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from fleetgate.cli.shared import database_url, fail, load_settings, with_store

if TYPE_CHECKING:
    from api.routes.devices import DeviceIn

app = typer.Typer(no_args_is_help=True, help="Device identity: per-device secrets, stored hashed")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _run(dsn: str, action):
    """Run action(DeviceCredentials) against the database; store errors become exit code 2."""
    from telemetry.store import DeviceCredentials

    return _run_on_store(dsn, lambda store: action(DeviceCredentials(store)))


def _run_on_store(dsn: str, action):
    """Run action(TelemetryStore) against the database; store errors become exit code 2."""
    from telemetry.store import (
        AlreadyProvisioned,
        RegistrationConflict,
        UnknownDevice,
        UnknownVehicleType,
    )

    try:
        return asyncio.run(with_store(dsn, action))
    except (RegistrationConflict, UnknownVehicleType) as exc:
        fail(f"nothing registered: {exc}")
    except (UnknownDevice, AlreadyProvisioned) as exc:
        fail(f"{exc.args[0] if exc.args else exc}")


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "24h", "7d"."""
    m = _DURATION.match(text)
    if not m:
        raise typer.BadParameter(f"{text!r} is not a duration such as 0, 90s, 15m, 24h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def _print_secrets(issued, as_json: bool) -> None:
    if as_json:
        typer.echo(
            orjson.dumps(
                [
                    {
                        "device_id": i.device_id,
                        "secret": i.secret,
                        "previous_valid_until": i.previous_valid_until,
                    }
                    for i in issued
                ]
            ).decode()
        )
    else:
        for i in issued:
            typer.echo(f"{i.device_id}\t{i.secret}")
    if issued:
        typer.echo(
            "fleetgate: secrets are shown only now; the database keeps their hashes", err=True
        )


# --- registering ----------------------------------------------------------------------------

REGISTRATION_FIELDS = ("vehicle_ref", "device_id", "vehicle_type")


class RegistrationError(ValueError):
    """A registration that cannot be used; the message names every bad entry and why."""


def read_registrations(
    text: str, source: str, known_types: Collection[str] | None = None
) -> list[DeviceIn]:
    """The devices of a registration document, each validated as a `POST /v1/devices` body.

    The document is CSV with a header line naming vehicle_ref, device_id and vehicle_type (in
    any order; other columns are ignored), or JSON: one such body or a list of them.
    RegistrationError lists every bad entry by its CSV line or JSON index, every vehicle or
    device that appears twice and, given the registry's vehicle types, every unknown type.
    """
    if text.lstrip()[:1] in ("[", "{"):
        entries = _json_entries(text, source)
    else:
        entries = _csv_entries(text, source)
    devices = validate_registrations(entries, known_types)
    if not devices:
        raise RegistrationError(f"{source} holds no devices")
    return devices


def validate_registrations(
    entries: list[tuple[str, object]], known_types: Collection[str] | None = None
) -> list[DeviceIn]:
    """(where, body) pairs as validated registrations, or RegistrationError naming each problem
    (with known_types, the registry's vehicle type ids, an unknown type is one)."""
    from pydantic import ValidationError

    from api.routes.devices import DeviceIn

    problems: list[str] = []
    devices: list[DeviceIn] = []
    first_seen: dict[str, dict[str, str]] = {"vehicle_ref": {}, "device_id": {}}
    for where, body in entries:
        if isinstance(body, str):  # the reader's own complaint about this entry
            problems.append(f"{where}: {body}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{where}: not an object with {', '.join(REGISTRATION_FIELDS)}")
            continue
        try:
            device = DeviceIn.model_validate(body)
        except ValidationError as exc:
            problems += [f"{where}: {_validation_problem(e)}" for e in exc.errors()]
            continue
        if known_types is not None and device.vehicle_type not in known_types:
            problems.append(
                f"{where}: vehicle_type {device.vehicle_type!r}: unknown; known types are "
                f"{', '.join(sorted(known_types))}"
            )
        for name, seen in first_seen.items():
            value = getattr(device, name)
            if (earlier := seen.setdefault(value, where)) != where:
                problems.append(f"{where}: {name} {value!r} is already on {earlier}")
        devices.append(device)
    if problems:
        raise RegistrationError("nothing registered:\n  " + "\n  ".join(problems))
    return devices


def _validation_problem(error: dict) -> str:
    name = ".".join(str(part) for part in error["loc"]) or "body"
    if error["type"] == "missing":
        return f"{name}: missing"
    return f"{name} {error['input']!r}: {error['msg']}"


def _json_entries(text: str, source: str) -> list[tuple[str, object]]:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise RegistrationError(f"{source} is not valid JSON: {exc}") from exc
    if isinstance(doc, dict):
        return [(source, doc)]
    return [(f"{source}[{i}]", body) for i, body in enumerate(doc)]


def _csv_entries(text: str, source: str) -> list[tuple[str, object]]:
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    header: list[str] | None = None
    entries: list[tuple[str, object]] = []
    for row in reader:
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if header is None:
            header = cells
            missing = [f for f in REGISTRATION_FIELDS if f not in header]
            if missing:
                raise RegistrationError(
                    f"{source} line {reader.line_num}: the header names {', '.join(header)}; it "
                    f"needs the columns {', '.join(REGISTRATION_FIELDS)} (missing: "
                    f"{', '.join(missing)})"
                )
            continue
        where = f"{source} line {reader.line_num}"
        if len(cells) != len(header):
            entries.append((where, f"{len(cells)} values where the header has {len(header)}"))
        else:
            entries.append((where, dict(zip(header, cells))))
    return entries


def _read_text(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}") from exc


@app.command("register")
def register(
    vehicle_ref: Annotated[
        str | None,
        typer.Argument(metavar="VEHICLE_REF", help="the operator's reference for the vehicle"),
    ] = None,
    device_id: Annotated[
        str | None,
        typer.Argument(
            metavar="DEVICE_ID",
            help="the id of the TCU fitted to it: its MQTT client id and username, its CoAP path "
            "segment ([A-Za-z0-9_.:-], at most 64)",
        ),
    ] = None,
    vehicle_type: Annotated[
        str | None,
        typer.Option(
            "--type",
            help="a vehicle type's id: ebike, cargo_ebike, scooter, moped, car or one added "
            "with `fleetgate vehicle-types add`",
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            help="a fleet instead: CSV with the header vehicle_ref,device_id,vehicle_type, "
            "or JSON (a list of POST /v1/devices bodies); - reads standard input",
        ),
    ] = None,
) -> None:
    """Register vehicles and their devices (TCUs): one from the arguments, or a fleet from a file.

    Everything is checked as POST /v1/devices checks it, and a file is registered whole or not
    at all. Registering a vehicle again with another device fits it with that device (the old
    one's secret stops working). Issue the devices' secrets afterwards: `fleetgate devices
    provision --missing`.
    """
    given = {"VEHICLE_REF": vehicle_ref, "DEVICE_ID": device_id, "--type": vehicle_type}
    if file is not None and any(v is not None for v in given.values()):
        raise typer.BadParameter("give either VEHICLE_REF DEVICE_ID --type, or --file")
    if file is None and (missing := [name for name, v in given.items() if v is None]):
        raise typer.BadParameter(f"missing {', '.join(missing)} (or use --file)")
    dsn = database_url(load_settings())
    known_types = set(asyncio.run(with_store(dsn, lambda store: store.vehicle_types())))
    try:
        if file is not None:
            source = "standard input" if file == "-" else file
            devices = read_registrations(_read_text(file), source, known_types)
        else:
            body = dict(zip(REGISTRATION_FIELDS, (vehicle_ref, device_id, vehicle_type)))
            devices = validate_registrations([("the arguments", body)], known_types)
    except RegistrationError as exc:
        fail(str(exc))
    before, without_secret = _run_on_store(dsn, lambda store: _register(store, devices))
    for line in _registration_report(devices, before):
        typer.echo(line)
    if without_secret:
        typer.echo(
            f"fleetgate: devices without a secret yet: {without_secret} (issue them with "
            "`fleetgate devices provision --missing`)",
            err=True,
        )


async def _register(store, devices: list[DeviceIn]):
    """Register in one transaction; (the registry before, how many of devices lack a secret)."""
    from telemetry.store import DeviceCredentials, VehicleRegistration

    before = await store.load_registry()
    await store.register_vehicles(
        [VehicleRegistration(d.vehicle_ref, d.device_id, d.vehicle_type) for d in devices]
    )
    ids = {d.device_id for d in devices}
    credentials = await DeviceCredentials(store).list()
    return before, sum(1 for c in credentials if c.device_id in ids and c.valid == 0)


def _registration_report(devices: list[DeviceIn], before: dict) -> list[str]:
    """A summary line, then one line per vehicle whose device or type changed."""
    by_ref = {d.vehicle_ref: d for d in before.values()}
    counts = {"new": 0, "unchanged": 0, "changed": 0}
    changes: list[str] = []
    for d in devices:
        old = by_ref.get(d.vehicle_ref)
        if old is None:
            counts["new"] += 1
            continue
        if (old.device_id, old.vehicle_type) == (d.device_id, d.vehicle_type):
            counts["unchanged"] += 1
            continue
        counts["changed"] += 1
        if old.device_id != d.device_id:
            changes.append(
                f"{d.vehicle_ref}: device {d.device_id} replaces {old.device_id} "
                f"(whose secret stops working)"
            )
        if old.vehicle_type != d.vehicle_type:
            changes.append(
                f"{d.vehicle_ref}: vehicle type {d.vehicle_type} (was {old.vehicle_type})"
            )
    parts = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    noun = "vehicle" if len(devices) == 1 else "vehicles"
    return [f"registered {len(devices)} {noun}: {parts}", *changes]


@app.command("provision")
def provision(
    device_ids: Annotated[list[str] | None, typer.Argument(help="registered device ids")] = None,
    missing: Annotated[
        bool, typer.Option("--missing", help="every registered device that has no valid secret")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of lines")] = False,
) -> None:
    """Issue each device its first secret (MQTT password and CoAP token), printed once as
    `device_id<TAB>secret`."""
    if not device_ids and not missing:
        raise typer.BadParameter("name device ids, or use --missing")
    dsn = database_url(load_settings())

    async def action(creds):
        ids = list(device_ids or [])
        if missing:
            ids += [c.device_id for c in await creds.list() if c.valid == 0]
        if not ids:
            return []
        return await creds.provision_many(ids, skip_provisioned=missing)

    _print_secrets(_run(dsn, action), as_json)


@app.command("rotate")
def rotate(
    device_id: Annotated[str, typer.Argument(help="a registered device id")],
    grace: Annotated[
        str,
        typer.Option(
            help="how long the old secret keeps working for CoAP and HTTP auth (0: revoked now). "
            "The broker's password file holds the new one from its next generation"
        ),
    ] = "24h",
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a line")] = False,
) -> None:
    """Issue a new secret for a device, printed once; the old one expires after the grace."""
    grace_s = parse_duration(grace)
    dsn = database_url(load_settings())
    issued = _run(dsn, lambda creds: creds.rotate(device_id, grace_s=grace_s))
    _print_secrets([issued], as_json)
    if issued.previous_valid_until is not None:
        typer.echo(
            f"fleetgate: the previous secret works until {issued.previous_valid_until.isoformat()}",
            err=True,
        )


@app.command("list")
def list_devices(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Registered devices and their credentials (never a secret or a hash)."""
    dsn = database_url(load_settings())
    infos = _run(dsn, lambda creds: creds.list())
    if as_json:
        typer.echo(orjson.dumps([dataclasses.asdict(i) for i in infos]).decode())
        return
    typer.echo(f"{'device_id':<24} {'vehicle_ref':<24} {'valid':>5}  issued_at / grace_until")
    for i in infos:
        when = i.issued_at.isoformat(timespec="seconds") if i.issued_at else "not provisioned"
        if i.valid > 1 and i.grace_until:
            when += f" / {i.grace_until.isoformat(timespec='seconds')}"
        typer.echo(f"{i.device_id:<24} {i.vehicle_ref:<24} {i.valid:>5}  {when}")
