"""The Traccar mapper (sans-IO) on the hand-made exports: every trap of a Traccar export."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from migration.analysis import analyse
from migration.columns import TimeWindow
from migration.mapping import DEFAULT, parse_mapping
from migration.traccar import map_devices, map_geofences, map_positions, map_traccar
from migration.traccar_export import read_traccar_folder
from tests.migration_exports import copy_export

NOW_MS = int(time.time() * 1000)
WINDOW = TimeWindow(NOW_MS, oldest_ms=NOW_MS - 30 * 86_400_000)


@pytest.fixture
def clean(tmp_path):
    return read_traccar_folder(copy_export("traccar", tmp_path / "clean"))


@pytest.fixture
def traps(tmp_path):
    return read_traccar_folder(copy_export("traccar_traps", tmp_path / "traps"))


def _rows(export, mapping=DEFAULT):
    source = map_traccar(export, mapping)
    out = {}
    for _file, mapped in source.chunks(WINDOW):
        assert mapped.skipped == {}
        for i in range(len(mapped.rows)):
            device = mapped.rows.devices[mapped.rows.device[i]]
            out.setdefault(device, []).append({k: v[i] for k, v in mapped.rows.columns.items()})
    return out


def test_categories_become_vehicle_types_and_unique_ids_device_ids(clean):
    registry = map_devices(clean.devices, DEFAULT)
    assert [(v.vehicle_ref, v.device_id, v.vehicle_type) for v in registry.vehicles] == [
        ("Bike 001", "358762090000011", "ebike"),
        ("Scooter 07", "358762090000029", "scooter"),
        ("Car 12 (Zoé)", "358762090000037", "car"),
        ("Moped 3", "358762090000045", "moped"),
    ]
    assert registry.problems == []


def test_speeds_are_knots_and_attributes_find_their_columns(clean):
    rows = _rows(clean)
    bike = rows["358762090000011"]
    assert bike[1]["speed_kmh"] == pytest.approx(4.859611 * 1.852, abs=1e-3)  # 9 km/h
    assert bike[1]["soc_pct"] == 86
    assert bike[1]["odometer_m"] == 152410  # odometer wins over totalDistance
    assert bike[2]["odometer_m"] == pytest.approx(152480.4)  # totalDistance when no odometer
    assert [r["ignition"] for r in bike] == [0, 1, 0]
    assert bike[1]["heading_deg"] == 45
    car = rows["358762090000037"]
    assert car[0]["speed_kmh"] == pytest.approx(30.0, abs=1e-3)
    assert car[0]["aux_v"] == pytest.approx(12.6) and math.isnan(car[0]["pack_v"])
    assert car[2]["odometer_m"] == pytest.approx(45120700.0)


def test_power_is_the_pack_on_two_wheelers_and_blocked_the_immobiliser(clean):
    scooter = _rows(clean)["358762090000029"]
    assert scooter[0]["pack_v"] == pytest.approx(36.4) and math.isnan(scooter[0]["aux_v"])
    assert [r["immobilised"] for r in scooter] == [0, 1]
    moped = _rows(clean)["358762090000045"]
    assert moped[0]["charging"] == 1 and moped[0]["odometer_m"] == 9_100_000


def test_a_position_without_a_fix_has_no_coordinates_and_its_device_time(clean):
    scooter = _rows(clean)["358762090000029"]
    invalid = scooter[1]
    assert math.isnan(invalid["lat"]) and math.isnan(invalid["lon"])
    # fixTime of an invalid position is the last fix's: the device time is the sample's
    assert invalid["time_ms"] - scooter[0]["time_ms"] == 400_000
    assert invalid["received_ms"] - invalid["time_ms"] == 1000


def test_wkt_areas_are_latitude_first_and_speed_limits_knots(clean):
    zones, problems = map_geofences(clean.geofences, DEFAULT)
    assert problems == []
    mitte, alex, museum = zones
    assert mitte["geometry"]["coordinates"][0][0] == [13.38, 52.53]  # [lon, lat]
    assert alex["geometry"] == {
        "type": "Circle",
        "coordinates": [13.4132, 52.5219],
        "radius_m": 150,
    }
    assert alex["rules"][0]["maximum_speed_kph"] == 15  # 8.1 kn
    assert museum["kind"] == "other" and mitte["id"] == "traccar-1"


def test_zone_kinds_come_from_the_mapping_file(clean):
    mapping = parse_mapping('[zones.kinds]\n"Mitte service area" = "operating_area"\n')
    zones, _ = map_geofences(clean.geofences, mapping)
    assert [z["kind"] for z in zones] == ["operating_area", "other", "other"]


def test_a_corridor_is_unsupported_and_a_bow_tie_gets_the_geofence_core_reason(traps):
    zones, problems = map_geofences(traps.geofences, DEFAULT)
    assert [z["id"] for z in zones] == ["traccar-21"]
    corridor, bow_tie = problems
    assert (corridor.record, corridor.reason, corridor.detail) == (
        "22",
        "unsupported_geometry",
        "LINESTRING",
    )
    assert bow_tie.reason == "invalid_zone"
    assert bow_tie.detail == (
        "zone 'traccar-23' rejected: invalid geometry: Self-intersection at [13.405, 52.505] "
        "(lon, lat); zones are rejected, not repaired"
    )


def test_bad_devices_are_rejected_with_their_reason(traps):
    registry = map_devices(traps.devices, DEFAULT)
    assert [v.source_id for v in registry.vehicles] == ["15", "16"]
    assert registry.rejected_devices == {
        "11": "duplicate_device",
        "12": "duplicate_device",
        "13": "device_id_invalid",
        "14": "unknown_vehicle_type",
    }


def test_the_analysis_counts_every_problem_of_the_traps(traps):
    report = analyse(map_traccar(traps, DEFAULT), DEFAULT, WINDOW, fitted={})
    assert report.counts == {"devices": 6, "geofences": 3, "groups": 0, "positions": 9}
    assert report.skipped == {
        "device_id_invalid": 1,
        "duplicate_device": 3,  # two devices and the position of one of them
        "invalid_zone": 1,
        "lat_out_of_range": 1,
        "time_beyond_retention": 1,
        "time_in_future": 1,
        "unknown_device": 1,
        "unknown_vehicle_type": 1,
        "unsupported_geometry": 1,
        "wrong_type": 1,
    }
    reasons = {(p.record, p.field, p.reason) for p in report.problems}
    assert ("1502", "latitude", "lat_out_of_range") in reasons
    assert ("1505", "attributes.batteryLevel", "wrong_type") in reasons
    assert ("9901", "deviceId", "unknown_device") in reasons
    assert report.exit_code == 1


def test_a_device_fitted_to_another_vehicle_rejects_that_vehicle_and_its_positions(clean):
    source = map_traccar(clean, DEFAULT)
    report = analyse(source, DEFAULT, WINDOW, fitted={"358762090000029": "someone-else"})
    assert report.skipped == {"device_already_fitted": 3}  # the vehicle and its 2 positions
    assert [v.source_id for v in source.registry.vehicles] == ["1", "3", "4"]


def test_units_and_fields_follow_the_mapping_file(clean):
    mapping = parse_mapping(
        '[units]\nspeed = "kmh"\ndistance = "km"\n[traccar]\nodometer = "totalDistance"\n'
        '[traccar.power_to]\nscooter = "ignore"\n'
    )
    rows = _rows(clean, mapping)
    assert rows["358762090000011"][1]["speed_kmh"] == pytest.approx(4.859611)
    assert rows["358762090000011"][1]["odometer_m"] == pytest.approx(152410.1 * 1000)
    assert math.isnan(rows["358762090000029"][0]["pack_v"])


def test_an_empty_chunk_maps_to_nothing():
    mapped = map_positions([], {}, {}, DEFAULT, WINDOW, "empty.json")
    assert len(mapped.rows) == 0 and mapped.skipped == {}
    assert isinstance(mapped.rows.device, np.ndarray)


def test_a_voltage_beyond_what_the_store_holds_is_a_wrong_type():
    chunk = [
        {
            "id": 1,
            "deviceId": 1,
            "fixTime": "2026-11-20T08:00:01.000+00:00",
            "valid": True,
            "latitude": 52.5,
            "longitude": 13.4,
            "attributes": {"power": 1e300},
        }
    ]
    window = TimeWindow(NOW_MS, oldest_ms=None)
    mapped = map_positions(chunk, {"1": ("tcu-1", "car")}, {}, DEFAULT, window, "p.json")
    assert mapped.skipped == {"wrong_type": 1}
    assert mapped.problems[0].field == "attributes.power"
