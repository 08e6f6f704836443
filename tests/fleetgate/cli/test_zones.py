"""`fleetgate zones import|list|export` against a real database: GBFS files in and out, kinds set
by zone name or id, and a file the geofence core refuses changing nothing."""

from __future__ import annotations

import json

import orjson
import pytest

from tests.cli_runner import run_fleetgate
from tests.zones import gbfs_doc

pytestmark = pytest.mark.integration

RULE = {
    "ride_start_allowed": False,
    "ride_end_allowed": False,
    "ride_through_allowed": True,
    "maximum_speed_kph": 10,
}


def feature(x0: float, y0: float, x1: float, y1: float, name: str) -> dict:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": [[ring]]},
        "properties": {"name": [{"text": name, "language": "en"}], "rules": [RULE]},
    }


def test_zones_import_list_and_export_as_gbfs(pg_dsn, tmp_path):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    path = tmp_path / "geofencing_zones.json"
    path.write_bytes(
        orjson.dumps(
            gbfs_doc(
                feature(13.40, 52.50, 13.41, 52.51, "Mitte"),
                feature(13.42, 52.50, 13.43, 52.51, "Kreuzberg"),
            )
        )
    )
    result = run_fleetgate("zones", "import", str(path), "--replace", env=env)
    assert result.exit_code == 0, result.output
    assert "2 zones replace the zone set" in result.output

    listed = run_fleetgate("zones", "list", env=env).output
    assert "Mitte" in listed and "Kreuzberg" in listed

    exported = json.loads(run_fleetgate("zones", "export", "--gbfs", env=env).output)
    names = [
        f["properties"]["name"][0]["text"] for f in exported["data"]["geofencing_zones"]["features"]
    ]
    assert names == ["Mitte", "Kreuzberg"]  # file order is precedence, kept
    assert exported["data"]["geofencing_zones"]["features"][0]["properties"]["rules"] == [RULE]


def test_an_invalid_zone_file_is_refused_and_changes_nothing(pg_dsn, tmp_path):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    good = tmp_path / "good.json"
    good.write_bytes(orjson.dumps(gbfs_doc(feature(13.40, 52.50, 13.41, 52.51, "Mitte"))))
    assert run_fleetgate("zones", "import", str(good), env=env).exit_code == 0
    before = run_fleetgate("zones", "export", env=env).output

    bowtie = {
        "type": "Feature",
        "properties": {"rules": [RULE]},
        "geometry": {
            "type": "MultiPolygon",
            "coordinates": [
                [[[13.40, 52.50], [13.41, 52.51], [13.41, 52.50], [13.40, 52.51], [13.40, 52.50]]]
            ],
        },
    }
    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps(gbfs_doc(bowtie)))
    result = run_fleetgate("zones", "import", str(bad), "--replace", env=env)
    assert result.exit_code == 2
    assert "rejected, nothing changed" in result.output and "Self-intersection" in result.output
    assert run_fleetgate("zones", "export", env=env).output == before


def test_a_gbfs_import_sets_kinds_by_zone_name_or_id_and_refuses_unknown_ones(pg_dsn, tmp_path):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    path = tmp_path / "geofencing_zones.json"
    path.write_bytes(
        orjson.dumps(
            gbfs_doc(
                feature(13.3, 52.4, 13.5, 52.6, "Service area"),
                feature(13.40, 52.50, 13.41, 52.51, "Mitte"),
                feature(13.42, 52.50, 13.43, 52.51, "Kreuzberg"),
            )
        )
    )
    mapping = tmp_path / "kinds.json"
    mapping.write_bytes(orjson.dumps({"gbfs-2": "slow"}))
    for bad, words in (
        (["--kind", "Tiergarten=no_parking"], ["'Tiergarten'", "'Mitte'"]),
        (["--kind", "Mitte=parking_lot"], ["parking_lot", "operating_area"]),
        (["--kind", "Mitte"], ["NAME_OR_ID=KIND"]),
        (["--kind", "Mitte=slow", "--kind", "gbfs-1=station"], ["two kinds"]),
    ):
        result = run_fleetgate("zones", "import", str(path), *bad, env=env)
        assert result.exit_code == 2, (bad, result.output)
        assert all(w in result.output for w in words), (bad, result.output)
        assert "0 zones" in run_fleetgate("zones", "list", env=env).output, "nothing stored"

    result = run_fleetgate(
        "zones",
        "import",
        str(path),
        "--kind",
        "Service area=operating_area",
        "--kind",
        "Mitte=no_parking",
        "--kinds",
        str(mapping),
        env=env,
    )
    assert result.exit_code == 0, result.output
    exported = json.loads(run_fleetgate("zones", "export", env=env).output)
    assert [(z["id"], z["name"], z["kind"]) for z in exported["zones"]] == [
        ("gbfs-0", "Service area", "operating_area"),
        ("gbfs-1", "Mitte", "no_parking"),
        ("gbfs-2", "Kreuzberg", "slow"),
    ]
