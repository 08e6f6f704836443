"""The GBFS v3.0 files built from plain data, each validated against the official schema."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from feeds import FeedSystem, FleetState, GbfsFeeds, Station
from feeds.gbfs import manifest
from geofence import ZoneSet
from telemetry.vehicle_types import BUILTIN_BY_ID, BUILTIN_VEHICLE_TYPES, VehicleType
from tests.feed_schemas import assert_gbfs_valid

NOW = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
SYSTEM = FeedSystem(
    system_id="fleetgate-test",
    name="Test Mobility",
    operator="Test Operator GmbH",
    languages=("en", "de"),
    timezone="Europe/Berlin",
    feed_contact_email="feeds@example.org",
    base_url="https://feeds.example.org",
    url="https://example.org",
    pricing_plans=(
        {
            "plan_id": "standard",
            "name": "Standard",
            "currency": "EUR",
            "price": 1.0,
            "description": "1 EUR to unlock, 0.25 EUR a minute",
            "per_min_pricing": [{"start": 0, "rate": 0.25, "interval": 1}],
        },
    ),
    alerts=(
        {
            "alert_id": "xmas",
            "type": "other",
            "summary": "Reduced service on 24 December",
            "times": [{"start": "2026-12-24T00:00:00Z", "end": "2026-12-25T00:00:00Z"}],
        },
    ),
    provider_id="5f7114d1-4091-46ee-b492-e55875f7de00",
    id_secret=b"0123456789abcdef0123456789abcdef",
)


def fleet(rows: list[dict]) -> FleetState:
    return FleetState.from_rows(rows)


def vehicle(n: int, vehicle_type: str = "ebike", status: str = "available", **kw) -> dict:
    return {
        "vehicle": n,
        "vehicle_type": vehicle_type,
        "status": status,
        "lat": 52.52 + n * 1e-4,
        "lon": 13.40 + n * 1e-4,
        "range_m": 12_000.0,
        "soc_pct": 70.0,
        "last_reported": NOW.timestamp() - 5,
        "rotation": 0,
        **kw,
    }


MIXED = [
    vehicle(1, "ebike"),
    vehicle(2, "scooter", range_m=None, soc_pct=50.0),  # range from the type's full range
    vehicle(3, "car", status="low_battery", soc_pct=9.0, range_m=20_000.0),
    vehicle(4, "ebike", status="on_trip"),
    vehicle(5, "car", status="immobilised"),
    vehicle(6, "scooter", status="offline"),
    vehicle(7, "ebike", lat=None, lon=None),  # no fix yet
    vehicle(8, "cargo_ebike", station_id="station-1"),
]


@pytest.fixture
def feeds() -> GbfsFeeds:
    return GbfsFeeds(SYSTEM, {t.id: t for t in BUILTIN_VEHICLE_TYPES}, has_stations=True)


def test_vehicle_status_lists_only_rentable_vehicles_and_is_schema_valid(feeds):
    doc = feeds.vehicle_status(fleet(MIXED), NOW)
    assert_gbfs_valid("vehicle_status", doc)
    shown = doc["data"]["vehicles"]
    assert [v["vehicle_type_id"] for v in shown] == ["ebike", "scooter", "car", "cargo_ebike"]
    assert [v["is_disabled"] for v in shown] == [False, False, True, False]
    assert shown[1]["current_range_meters"] == 0.5 * BUILTIN_BY_ID["scooter"].max_range_meters
    assert shown[3]["station_id"] == "station-1"
    assert doc["ttl"] == SYSTEM.ttl_s and doc["last_updated"] == "2026-12-06T09:30:00Z"
    assert shown[0]["last_reported"] == "2026-12-06T09:29:55Z"


def test_the_public_id_changes_after_a_trip_and_says_nothing_of_the_vehicle(feeds):
    before = feeds.vehicle_status(fleet([vehicle(1), vehicle(2)]), NOW)["data"]["vehicles"]
    again = feeds.vehicle_status(fleet([vehicle(1), vehicle(2)]), NOW)["data"]["vehicles"]
    after = feeds.vehicle_status(fleet([vehicle(1, rotation=17), vehicle(2)]), NOW)
    after_ids = [v["vehicle_id"] for v in after["data"]["vehicles"]]
    assert [v["vehicle_id"] for v in before] == [v["vehicle_id"] for v in again]
    assert after_ids[0] != before[0]["vehicle_id"] and after_ids[1] == before[1]["vehicle_id"]
    assert all("1" != v["vehicle_id"] and len(v["vehicle_id"]) == 32 for v in before)
    other_secret = GbfsFeeds(
        FeedSystem(**{**SYSTEM.__dict__, "id_secret": b"another secret, 16+ bytes"}),
        feeds.vehicle_types,
    )
    assert (
        other_secret.vehicle_status(fleet([vehicle(1)]), NOW)["data"]["vehicles"][0]["vehicle_id"]
        != before[0]["vehicle_id"]
    )


def test_vehicle_status_carries_no_customer_or_internal_fields(feeds):
    doc = feeds.vehicle_status(fleet(MIXED), NOW)
    allowed = {
        "vehicle_id",
        "lat",
        "lon",
        "is_reserved",
        "is_disabled",
        "vehicle_type_id",
        "current_range_meters",
        "last_reported",
        "station_id",
    }
    assert all(set(v) <= allowed for v in doc["data"]["vehicles"])


def test_discovery_versions_manifest_and_system_information_are_schema_valid(feeds):
    discovery = feeds.discovery(NOW)
    assert_gbfs_valid("gbfs", discovery)
    names = {f["name"] for f in discovery["data"]["feeds"]}
    assert {"vehicle_status", "station_status", "system_pricing_plans", "system_alerts"} <= names
    assert_gbfs_valid("gbfs_versions", feeds.versions(NOW))
    assert_gbfs_valid("manifest", manifest([SYSTEM], NOW))
    info = feeds.system_information(NOW, manifest_url="https://feeds.example.org/manifest.json")
    assert_gbfs_valid("system_information", info)
    assert info["data"]["operator"] == [{"text": "Test Operator GmbH", "language": "en"}]


def test_a_system_without_stations_plans_or_alerts_does_not_list_those_files():
    bare = FeedSystem(**{**SYSTEM.__dict__, "pricing_plans": (), "alerts": ()})
    names = {f["name"] for f in GbfsFeeds(bare, {}).discovery(NOW)["data"]["feeds"]}
    assert names == {
        "gbfs",
        "gbfs_versions",
        "system_information",
        "vehicle_types",
        "vehicle_status",
        "geofencing_zones",
    }


def test_vehicle_types_pricing_plans_and_alerts_are_schema_valid(feeds):
    types = feeds.vehicle_types_file(NOW)
    assert_gbfs_valid("vehicle_types", types)
    assert {t["vehicle_type_id"] for t in types["data"]["vehicle_types"]} == set(BUILTIN_BY_ID)
    assert_gbfs_valid("system_pricing_plans", feeds.pricing_plans(NOW))
    assert_gbfs_valid("system_alerts", feeds.alerts(NOW))


def test_a_motorised_type_without_a_range_is_left_out_with_its_vehicles():
    unknown_range = VehicleType("pod", "Pod", "other", "electric")
    feeds = GbfsFeeds(SYSTEM, {"pod": unknown_range, "ebike": BUILTIN_BY_ID["ebike"]})
    assert [t["vehicle_type_id"] for t in feeds.vehicle_types_file(NOW)["data"]["vehicle_types"]]
    doc = feeds.vehicle_status(fleet([vehicle(1, "pod"), vehicle(2, "ebike")]), NOW)
    assert [v["vehicle_type_id"] for v in doc["data"]["vehicles"]] == ["ebike"]
    assert_gbfs_valid("vehicle_types", feeds.vehicle_types_file(NOW))


def test_stations_count_the_rentable_vehicles_standing_in_them(feeds):
    area = {"type": "MultiPolygon", "coordinates": [[[[13.4, 52.5], [13.41, 52.5], [13.41, 52.51],
                                                      [13.4, 52.51], [13.4, 52.5]]]]}  # fmt: skip
    stations = [
        Station("station-1", "Alexanderplatz", 52.505, 13.405, area),
        Station("s2", "", 1, 2),
    ]
    rows = [*MIXED, vehicle(9, "ebike", status="on_trip", station_id="station-1")]
    info = feeds.station_information(stations, NOW)
    status = feeds.station_status(stations, fleet(rows), NOW)
    assert_gbfs_valid("station_information", info)
    assert_gbfs_valid("station_status", status)
    first, second = status["data"]["stations"]
    assert first["num_vehicles_available"] == 1 and second["num_vehicles_available"] == 0
    counts = {t["vehicle_type_id"]: t["count"] for t in first["vehicle_types_available"]}
    assert counts["cargo_ebike"] == 1 and counts["ebike"] == 0


def test_geofencing_zones_of_the_core_keep_their_content_in_the_feeds_envelope(feeds):
    zones = ZoneSet.from_rows(
        [
            {
                "id": "old-town",
                "name": "Old town",
                "kind": "slow",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[13.4, 52.5], [13.41, 52.5], [13.41, 52.51], [13.4, 52.5]]],
                },
                "rules": [
                    {
                        "ride_start_allowed": True,
                        "ride_end_allowed": True,
                        "ride_through_allowed": True,
                        "maximum_speed_kph": 10,
                    }
                ],
            }
        ]
    )
    doc = feeds.geofencing_zones(zones.to_gbfs(), NOW)
    assert_gbfs_valid("geofencing_zones", doc)
    assert doc["last_updated"] == "2026-12-06T09:30:00Z"
    assert doc["data"]["geofencing_zones"]["features"][0]["properties"]["rules"]


def test_an_empty_fleet_is_an_empty_valid_file(feeds):
    empty = fleet([])
    assert len(empty) == 0 and empty.vehicle.dtype == np.int64
    doc = feeds.vehicle_status(empty, NOW)
    assert doc["data"]["vehicles"] == []
    assert_gbfs_valid("vehicle_status", doc)
