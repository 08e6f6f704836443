"""MDS 2.0 objects from plain data, validated against the official OpenAPI models."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from feeds import EVENT_MAP, BadHour, MdsProvider, Ride, mds_mode, parse_hour
from feeds.mds import CAR_SHARE, MICROMOBILITY, STATE_MAP
from tests.feed_schemas import assert_mds_valid

PROVIDER = MdsProvider("5f7114d1-4091-46ee-b492-e55875f7de00")
T = datetime(2026, 12, 6, 9, 30, tzinfo=UTC).timestamp()
STATE = {
    "vehicle": 7,
    "vehicle_ref": "veh-0007",
    "status": "available",
    "time": T,
    "lat": 52.52,
    "lon": 13.405,
    "speed_kmh": 0.0,
    "heading_deg": 90.0,
    "soc_pct": 64.4,
}


@pytest.mark.parametrize(
    ("form_factor", "propulsion"),
    [("bicycle", "electric_assist"), ("scooter_standing", "electric"), ("car", "electric")],
)
def test_vehicles_are_valid_in_their_mode(form_factor, propulsion):
    item = PROVIDER.vehicle(
        {
            "vehicle_ref": "veh-1",
            "form_factor": form_factor,
            "propulsion_type": propulsion,
            "battery_capacity_wh": 500.0,
            "max_speed_kmh": 25.0,
        }
    )
    assert_mds_valid("vehicle", item, mds_mode(form_factor))
    assert item["device_id"] == PROVIDER.device_id("veh-1") != PROVIDER.device_id("veh-2")


@pytest.mark.parametrize("status", sorted(s for s in STATE_MAP if s))
@pytest.mark.parametrize("mode", [MICROMOBILITY, CAR_SHARE])
def test_every_state_makes_a_valid_vehicle_status(status, mode):
    item = PROVIDER.vehicle_status({**STATE, "status": status}, mode)
    assert_mds_valid("vehicle-status", item, mode)
    assert item["last_event"]["vehicle_state"] == STATE_MAP[status]
    assert item["last_telemetry"]["battery_percent"] == 64
    assert item["last_telemetry"]["location"]["lng"] == 13.405


@pytest.mark.parametrize(("key", "modes"), sorted(EVENT_MAP.items()))
def test_every_mapped_event_is_valid_in_each_mode_it_is_published_in(key, modes):
    source, kind = key
    row = {**STATE, "id": 99, "source": source, "type": kind}
    trip = "8d2a52b1-6f6c-4c7e-a0a6-0a6e9e8c2f11"
    for mode in (MICROMOBILITY, CAR_SHARE):
        event = PROVIDER.event(row, mode, trip)
        if mode not in modes:
            assert event is None
            continue
        assert_mds_valid("event", event, mode)
        assert (event["vehicle_state"], event["event_types"]) == (modes[mode][0], [modes[mode][1]])


def test_a_trip_event_without_its_ride_or_an_event_without_a_place_is_not_published():
    row = {**STATE, "id": 1, "source": "command", "type": "unlock"}
    assert PROVIDER.event(row, MICROMOBILITY, None) is None
    assert PROVIDER.event({**row, "lat": None}, MICROMOBILITY, "x") is None
    assert PROVIDER.event({**row, "type": "locate"}, MICROMOBILITY, "x") is None


@pytest.mark.parametrize("mode", [MICROMOBILITY, CAR_SHARE])
def test_trips_and_telemetry_are_valid(mode):
    ride = Ride(7, "8d2a52b1-6f6c-4c7e-a0a6-0a6e9e8c2f11", T, T + 600.4, 12)
    start, end = {"lat": 52.52, "lon": 13.4}, {"lat": 52.53, "lon": 13.41}
    trip = PROVIDER.trip(ride, "veh-0007", mode, start, end, 1234.6)
    assert_mds_valid("trip", trip, mode)
    assert (trip["duration"], trip["distance"]) == (600, 1235)
    assert_mds_valid("telemetry", PROVIDER.telemetry(STATE, [ride.trip_id]), mode)
    assert_mds_valid("telemetry", PROVIDER.telemetry({**STATE, "soc_pct": None}, None), mode)


def test_hours_are_parsed_or_refused_with_the_reason():
    assert parse_hour("2026-12-06T09", "end_time") == datetime(2026, 12, 6, 9, tzinfo=UTC)
    for bad in ("2026-12-06", "2026-12-06T24", "2026-02-30T01", "yesterday", None, "2026-12-06T9"):
        with pytest.raises(BadHour, match="end_time"):
            parse_hour(bad, "end_time")
