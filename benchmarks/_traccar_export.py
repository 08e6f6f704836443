"""A synthetic Traccar export, as `GET /api/devices`, `/api/geofences`, `/api/groups` and
`/api/positions` would have saved it, for the migration benchmark and tests that need a fleet
of some size: a deterministic random walk per device through central Berlin, Traccar's own units
(speed in knots, distances in metres, battery in %), one position file per device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

# Traccar device categories and their share of the fleet; the default mapping makes them ebike,
# scooter and car (docs/migration.md).
CATEGORIES = (("bicycle", 0.5), ("scooter", 0.3), ("car", 0.2))
KNOT_M_PER_S = 1852 / 3600
M_PER_DEG_LAT = 111_195.0
BERLIN = (52.515, 13.395)  # lat, lon


@dataclass(frozen=True)
class ExportShape:
    """What to generate: vehicles × positions each, one every interval_s, the newest
    `end_age_s` before end_ms (default: now), from `seed`."""

    vehicles: int
    positions: int
    interval_s: float = 30.0
    seed: int = 0
    end_ms: int | None = None
    end_age_s: float = 600.0

    def end(self) -> int:
        return int(time.time() * 1000) if self.end_ms is None else self.end_ms


def _iso(ms: np.ndarray) -> list[str]:
    """Traccar's JSON dates: `2026-11-20T08:00:01.000+00:00`."""
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    return [t + "+00:00" for t in text.tolist()]


def traccar_devices(n: int) -> list[dict]:
    categories = []
    for name, share in CATEGORIES:
        categories += [name] * round(n * share)
    categories = (categories + [CATEGORIES[0][0]] * n)[:n]
    return [
        {
            "id": i + 1,
            "attributes": {},
            "groupId": 1 if categories[i] != "car" else 2,
            "calendarId": 0,
            "name": f"{categories[i].title()} {i + 1:05d}",
            "uniqueId": f"35630704{i + 1:07d}",
            "status": "offline",
            "lastUpdate": None,
            "positionId": 0,
            "phone": None,
            "model": "FMC003" if categories[i] == "car" else "TMT250",
            "contact": None,
            "category": categories[i],
            "disabled": False,
            "expirationTime": None,
        }
        for i in range(n)
    ]


GROUPS = [
    {"id": 1, "attributes": {}, "groupId": 0, "name": "Berlin micromobility"},
    {"id": 2, "attributes": {}, "groupId": 0, "name": "Berlin car sharing"},
]
GEOFENCES = [
    {
        "id": 1,
        "attributes": {},
        "calendarId": 0,
        "name": "Operating area",
        "description": None,
        "area": "POLYGON((52.60 13.20, 52.60 13.60, 52.43 13.60, 52.43 13.20, 52.60 13.20))",
    },
    {
        "id": 2,
        "attributes": {"speedLimit": 10.8},
        "calendarId": 0,
        "name": "Slow zone Alexanderplatz",
        "description": None,
        "area": "CIRCLE (52.5219 13.4132, 250)",
    },
]


def device_positions(device: dict, shape: ExportShape, first_id: int) -> list[dict]:
    """One device's positions, oldest first, as Traccar's API returns them."""
    rng = np.random.default_rng([shape.seed, device["id"]])
    n = shape.positions
    car = device["category"] == "car"
    end = shape.end() - int(shape.end_age_s * 1000)
    step_ms = int(shape.interval_s * 1000)
    fix = end - step_ms * np.arange(n - 1, -1, -1, dtype=np.int64)
    moving = (np.arange(n) // 20 + rng.integers(0, 2)) % 2 == 0
    knots = np.where(moving, rng.uniform(8, 25 if car else 12, n), 0.0)
    course = np.cumsum(rng.normal(0, 20, n)) % 360
    metres = knots * KNOT_M_PER_S * shape.interval_s
    lat0 = BERLIN[0] + rng.uniform(-0.04, 0.04)
    lon0 = BERLIN[1] + rng.uniform(-0.06, 0.06)
    # The walk turns back towards the centre when it strays (mirrored at ±0.05°).
    lat = lat0 + np.cumsum(metres * np.cos(np.radians(course))) / M_PER_DEG_LAT
    lon = lon0 + np.cumsum(metres * np.sin(np.radians(course))) / (
        M_PER_DEG_LAT * math.cos(math.radians(BERLIN[0]))
    )
    lat = BERLIN[0] + 0.05 - np.abs((lat - BERLIN[0] + 0.05) % 0.2 - 0.1)
    lon = BERLIN[1] + 0.08 - np.abs((lon - BERLIN[1] + 0.08) % 0.32 - 0.16)
    odometer = rng.uniform(1e5, 5e6) + np.cumsum(metres)
    battery = np.clip(95 - np.cumsum(metres) / 400 % 90, 5, 100)
    fix_iso = _iso(fix)
    server_iso = _iso(fix + 1500)
    columns = zip(
        fix_iso,
        server_iso,
        np.round(lat, 7).tolist(),
        np.round(lon, 7).tolist(),
        np.round(knots, 6).tolist(),
        np.round(course, 1).tolist(),
        np.round(metres, 2).tolist(),
        np.round(odometer, 2).tolist(),
        battery.astype(int).tolist(),
        moving.tolist(),
    )
    protocol = "teltonika" if car else "osmand"
    out = []
    for k, (fix_t, server_t, la, lo, kn, co, dist, odo, bat, mov) in enumerate(columns):
        attributes = {"sat": 9, "motion": mov, "distance": dist, "totalDistance": odo}
        if car:
            attributes.update(ignition=mov, power=13.8 if mov else 12.5, odometer=int(odo))
        else:
            attributes.update(batteryLevel=bat, battery=36.0 + bat / 10)
        out.append(
            {
                "id": first_id + k,
                "attributes": attributes,
                "deviceId": device["id"],
                "protocol": protocol,
                "serverTime": server_t,
                "deviceTime": fix_t,
                "fixTime": fix_t,
                "outdated": False,
                "valid": True,
                "latitude": la,
                "longitude": lo,
                "altitude": 40.0,
                "speed": kn,
                "course": co,
                "address": None,
                "accuracy": 5.0,
                "network": None,
                "geofenceIds": None,
            }
        )
    return out


def write_traccar_export(folder: Path, shape: ExportShape, progress=None) -> int:
    """Write the export into folder (devices.json, geofences.json, groups.json,
    positions/device-<id>.json); returns the number of positions written."""
    positions_dir = folder / "positions"
    positions_dir.mkdir(parents=True, exist_ok=True)
    devices = traccar_devices(shape.vehicles)
    written = 0
    for k, device in enumerate(devices):
        rows = device_positions(device, shape, first_id=k * shape.positions + 1)
        (positions_dir / f"device-{device['id']}.json").write_bytes(orjson.dumps(rows))
        device["lastUpdate"] = rows[-1]["serverTime"] if rows else None
        device["positionId"] = rows[-1]["id"] if rows else 0
        written += len(rows)
        if progress is not None and (k + 1) % 100 == 0:
            progress(f"export: {k + 1} of {len(devices)} devices written")
    (folder / "devices.json").write_bytes(orjson.dumps(devices, option=orjson.OPT_INDENT_2))
    (folder / "geofences.json").write_bytes(orjson.dumps(GEOFENCES, option=orjson.OPT_INDENT_2))
    (folder / "groups.json").write_bytes(orjson.dumps(GROUPS, option=orjson.OPT_INDENT_2))
    return written
