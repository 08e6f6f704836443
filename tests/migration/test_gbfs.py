"""GBFS v2.3 and v3.0 feeds (files, a gbfs.json, its URL over real HTTP) mapped to vehicles,
one position each, zones and station zones; the fixtures pass the official schemas."""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from migration.analysis import analyse
from migration.columns import TimeWindow
from migration.errors import UnreadableInput
from migration.gbfs import map_gbfs
from migration.gbfs_feeds import read_gbfs
from migration.mapping import DEFAULT, parse_mapping
from tests import REPO
from tests.migration_exports import EXPORTS, copy_export

NOW_MS = int(time.time() * 1000)
WINDOW = TimeWindow(NOW_MS, oldest_ms=NOW_MS - 30 * 86_400_000)


def _rows(source):
    out = {}
    for _file, mapped in source.chunks(WINDOW):
        for i in range(len(mapped.rows)):
            device = mapped.rows.devices[mapped.rows.device[i]]
            out[device] = {k: v[i] for k, v in mapped.rows.columns.items()}
    return out


def test_v3_vehicles_get_types_by_form_factor_and_one_position_each(tmp_path):
    feeds = read_gbfs(str(copy_export("gbfs_v3", tmp_path / "gbfs")))
    source = map_gbfs(feeds, DEFAULT)
    assert [(v.vehicle_ref, v.vehicle_type) for v in source.registry.vehicles] == [
        ("bk-1001", "ebike"),
        ("sc-2001", "scooter"),
        ("car-3001", "car"),
    ]
    (boat,) = source.registry.problems
    assert (boat.record, boat.field, boat.reason) == (
        "boat-1",
        "vehicle_type_id",
        "unknown_vehicle_type",
    )
    rows = _rows(source)
    assert rows["sc-2001"]["soc_pct"] == pytest.approx(34.0)  # a fraction in GBFS
    assert rows["bk-1001"]["lat"] == 52.52
    assert set(rows) == {"bk-1001", "sc-2001", "car-3001"}


def test_v3_zones_rules_and_stations(tmp_path):
    feeds = read_gbfs(str(copy_export("gbfs_v3", tmp_path / "gbfs")))
    zones = {z["id"]: z for z in map_gbfs(feeds, DEFAULT).registry.zones}
    slow = zones["gbfs-0"]
    assert slow["name"] == "Tiergarten slow"
    assert slow["rules"][0]["vehicle_type_ids"] == ["scooter"]  # GBFS id -> fleetgate type
    hbf, ost = zones["gbfs-station-st-hbf"], zones["gbfs-station-st-ost"]
    assert hbf["kind"] == "station" and hbf["geometry"]["type"] == "Circle"
    assert hbf["geometry"]["radius_m"] == 30.0
    assert ost["geometry"]["type"] == "MultiPolygon"


def test_v2_3_free_bike_status_and_ride_allowed(tmp_path):
    mapping = parse_mapping('[zones.kinds]\n"Mauerpark no parking" = "no_parking"\n')
    feeds = read_gbfs(str(copy_export("gbfs_v2", tmp_path / "gbfs")))
    source = map_gbfs(feeds, mapping)
    assert [(v.vehicle_ref, v.vehicle_type) for v in source.registry.vehicles] == [
        ("cb-17", "cargo_ebike"),
        ("sc-9", "scooter"),  # 2.3's deprecated form factor "scooter"
    ]
    report = analyse(source, mapping, WINDOW)
    assert report.skipped == {"soc_out_of_range": 1}  # current_fuel_percent 1.2 = 120 %
    zone = next(z for z in source.registry.zones if z["id"] == "gbfs-0")
    assert zone["kind"] == "no_parking" and zone["start"].startswith("2026-11-20")
    (rule,) = zone["rules"]
    assert rule["ride_start_allowed"] is False and rule["ride_end_allowed"] is False
    assert rule["vehicle_type_ids"] == ["cargo_ebike"]
    assert report.counts == {
        "vehicle_types": 2,
        "vehicles": 2,
        "stations": 1,
        "geofencing_zones": 1,
        "positions": 2,
    }


@pytest.fixture
def served(tmp_path):
    """The v3 fixture served over HTTP with its gbfs.json pointing at the server."""
    folder = copy_export("gbfs_v3", tmp_path / "www")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    gbfs = json.loads((folder / "gbfs.json").read_text())
    for feed in gbfs["data"]["feeds"]:
        feed["url"] = feed["url"].replace("https://gbfs.example.com/v3", base)
    (folder / "gbfs.json").write_text(json.dumps(gbfs))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, folder
    finally:
        server.shutdown()
        server.server_close()


def test_a_gbfs_url_is_discovered_and_its_feeds_fetched(served):
    base, _folder = served
    feeds = read_gbfs(f"{base}/gbfs.json")
    assert feeds.files["vehicle_status"] == f"{base}/vehicle_status.json"
    assert len(map_gbfs(feeds, DEFAULT).registry.vehicles) == 3


def test_a_truncated_feed_is_named_with_its_url_and_offset(served):
    base, folder = served
    (folder / "vehicle_status.json").write_bytes(b'{"data": {"vehicles": [')
    with pytest.raises(UnreadableInput) as raised:
        read_gbfs(f"{base}/gbfs.json")
    assert raised.value.file == f"{base}/vehicle_status.json" and raised.value.offset == 23


def test_a_folder_without_feeds_is_unreadable(tmp_path):
    with pytest.raises(UnreadableInput, match="holds none of"):
        read_gbfs(str(tmp_path))


def _schema_dir(version: str) -> Path:
    for folder in (
        Path(os.environ.get("FLEETGATE_GBFS_SCHEMA_DIR", "/nonexistent")).parent / version,
        REPO.parent / "shared" / "gbfs" / version,
        Path("/work/shared/gbfs") / version,
    ):
        if folder.is_dir():
            return folder
    pytest.skip(f"the official GBFS {version} schemas are not here")


# The traps a fixture holds on purpose, and the schema's words for them.
TRAPS = {("gbfs_v2", "free_bike_status.json"): ["1.2 is greater than the maximum of 1"]}


@pytest.mark.parametrize(("fixture", "version"), [("gbfs_v3", "v3.0"), ("gbfs_v2", "v2.3")])
def test_the_fixtures_pass_the_official_schemas_but_for_their_traps(fixture, version):
    import jsonschema  # test dependency

    schemas = _schema_dir(version)
    for path in sorted((EXPORTS / fixture).glob("*.json")):
        schema = json.loads((schemas / path.name).read_text())
        errors = jsonschema.Draft7Validator(schema).iter_errors(json.loads(path.read_text()))
        assert [e.message for e in errors] == TRAPS.get((fixture, path.name), []), path.name
