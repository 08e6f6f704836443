"""Traccar exports for the migration tests: the hand-made fixtures of tests/migration/exports/
copied with their times moved close to now (the store refuses samples beyond its retention, so
a fixed date would age out of the tests), and synthetic exports of many days."""

from __future__ import annotations

import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

EXPORTS = Path(__file__).parent / "migration" / "exports"
_TIME_KEYS = ("fixTime", "deviceTime", "serverTime", "lastUpdate", "last_reported", "last_updated")
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)$")
# The newest position of the fixtures, 2026-11-20T09:03:00Z, lands here before now.
FIXTURE_NEWEST = datetime(2026, 11, 20, 9, 3, tzinfo=UTC)


def shift_of(newest_ago: timedelta = timedelta(days=1)) -> timedelta:
    return datetime.now(UTC) - newest_ago - FIXTURE_NEWEST


def copy_export(name: str, dest: Path, shift: timedelta | None = None) -> Path:
    """tests/migration/exports/<name> copied to dest with every time moved by `shift`
    (default: the fixtures' newest position one day before now), in the same format."""
    shift = shift_of() if shift is None else shift
    shutil.copytree(EXPORTS / name, dest)
    for path in dest.rglob("*.json"):
        path.write_bytes(_shifted(path.read_bytes(), shift))
    return dest


def _shifted(data: bytes, shift: timedelta) -> bytes:
    def move(value):
        if isinstance(value, list):
            return [move(v) for v in value]
        if isinstance(value, dict):
            return {
                k: _move_time(v, shift) if k in _TIME_KEYS else move(v) for k, v in value.items()
            }
        return value

    return orjson.dumps(move(orjson.loads(data)), option=orjson.OPT_INDENT_2)


def _move_time(text, shift: timedelta):
    if isinstance(text, int):  # GBFS 2.3: POSIX seconds
        return text + int(shift.total_seconds())
    if not isinstance(text, str):
        return text
    match = _ISO.match(text)
    if not match:
        return text
    moved = datetime.fromisoformat(text) + shift
    local = moved.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    return local + ("Z" if match[2] == "Z" else "+00:00")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+00:00"


def synthetic_export(
    dest: Path,
    *,
    devices: int,
    days: int,
    per_day: int,
    first_day_ms: int | None = None,
    named: list[tuple[str, str, str]] | None = None,
) -> Path:
    """A Traccar export of `devices` e-bikes ("sim-bike-N" / uniqueId "35000000000N"), each with
    `per_day` positions a minute apart at the start of each of `days` days from first_day_ms
    (default: days + 0.5 days ago), one position file per device. `named`: (device_id,
    vehicle_ref, vehicle_type) of vehicles to export besides (a simulated fleet's
    registrations), numbered after the others."""
    if first_day_ms is None:
        first_day_ms = int(time.time() * 1000) - int((days + 0.5) * 86_400_000)
    (dest / "positions").mkdir(parents=True)
    rows = []
    category = {"ebike": "bicycle", "car": "car", "scooter": "scooter", "moped": "motorcycle"}
    everyone = [(f"3500000000{d:05d}", f"sim-bike-{d}", "ebike") for d in range(1, devices + 1)]
    everyone += named or []
    for d, (device_id, ref, vehicle_type) in enumerate(everyone, start=1):
        rows.append(
            {
                "id": d,
                "name": ref,
                "uniqueId": device_id,
                "category": category.get(vehicle_type, vehicle_type),
                "groupId": 0,
                "disabled": False,
                "attributes": {},
            }
        )
        positions = []
        step = 60_000
        for day in range(days):
            for k in range(per_day):
                t = first_day_ms + day * 86_400_000 + k * step
                positions.append(
                    {
                        "id": d * 10_000_000 + day * per_day + k,
                        "deviceId": d,
                        "fixTime": iso(t),
                        "deviceTime": iso(t),
                        "serverTime": iso(t + 1000),
                        "valid": True,
                        "latitude": 52.5 + 0.0001 * k,
                        "longitude": 13.4 + 0.0001 * d,
                        "speed": 2.0,
                        "course": 90.0,
                        "attributes": {"batteryLevel": 50 + (k % 50), "odometer": 1000 * k},
                    }
                )
        (dest / "positions" / f"device-{d}.json").write_bytes(orjson.dumps(positions))
    (dest / "devices.json").write_bytes(orjson.dumps(rows))
    (dest / "geofences.json").write_bytes(b"[]")
    return dest
