"""The catalogue: which stored events are announced, and under which name."""

import json

import orjson
import pytest

from outbound import CATALOGUE, UnknownEventType, check_types, outbound_type, render


@pytest.mark.parametrize(
    ("source", "stored", "detail", "expected"),
    [
        ("geofence", "zone_enter", None, "geofence.zone_enter"),
        ("geofence", "ride_through_forbidden", None, "geofence.ride_through_forbidden"),
        ("battery", "battery_low", None, "battery.low"),
        ("battery", "aux_battery_at_risk", None, "battery.aux_drain"),
        ("gateway", "vehicle.offline", None, "vehicle.offline"),
        ("gateway", "trip.ended", None, "trip.ended"),
        ("device", "alarm.tamper", None, "alarm.tamper"),
        ("device", "tamper", None, None),  # announced as the alarm made of it, not twice
        ("device", "door_open", None, None),
        (
            "command",
            "command_succeeded",
            {"from_state": "acknowledged", "to_state": "succeeded"},
            "command.finished",
        ),
        ("command", "command_sent", {"from_state": "queued", "to_state": "sent"}, None),
        (
            "command",
            "command_timed_out",
            {"from_state": "timed_out", "to_state": "timed_out", "reason": "late_result"},
            "command.late_result",
        ),
    ],
)
def test_outbound_type(source, stored, detail, expected):
    assert outbound_type(source, stored, detail) == expected


def test_every_renamed_type_is_in_the_catalogue():
    for source, stored in [("geofence", "zone_exit"), ("battery", "charging_start")]:
        assert outbound_type(source, stored) in CATALOGUE


def test_check_types_refuses_unknown_names_and_lists_the_catalogue():
    assert check_types(["trip.ended", "alarm.crash", "trip.ended"]) == ["alarm.crash", "trip.ended"]
    with pytest.raises(UnknownEventType) as err:
        check_types(["trip.ended", "vehicle.exploded"])
    assert err.value.unknown == ["vehicle.exploded"]
    assert "command.finished" in str(err.value)


def test_the_envelope():
    body = render(42, "trip.ended", 1764412800123, "bike-1", {"distance_m": 1200})
    assert orjson.loads(body) == {
        "id": 42,
        "type": "trip.ended",
        "time": "2025-11-29T10:40:00.123Z",
        "vehicle_ref": "bike-1",
        "data": {"distance_m": 1200},
    }


def test_an_event_whose_detail_holds_numbers_beyond_64_bits_is_rendered_as_sent():
    """Found by the fuzz campaign (benchmarks/fuzz.py): a device event with a 2**70 in its
    detail stopped the webhook worker at every start (orjson refuses such integers)."""
    detail = {"code": 2**70, "nested": [{"n": -(2**65)}], "ok": 1.5}
    body = render(7, "alarm.tamper", 1764412800123, "bike-1", detail)
    assert json.loads(body)["data"] == detail
    assert json.loads(body)["time"] == "2025-11-29T10:40:00.123Z"
    # Every delivery of it sends the same bytes.
    assert body == render(7, "alarm.tamper", 1764412800123, "bike-1", detail)
