"""Garbage in a Traccar or GBFS export never stops the mappers: every record is either mapped or
counted under a reason (property-based, on arbitrary JSON values where Traccar has fields)."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migration.columns import TimeWindow
from migration.gbfs import GbfsFeeds, map_gbfs
from migration.mapping import DEFAULT
from migration.traccar import map_devices, map_geofences, map_positions

NOW_MS = int(time.time() * 1000)
WINDOW = TimeWindow(NOW_MS, oldest_ms=NOW_MS - 30 * 86_400_000)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
times = st.one_of(
    st.just("2026-11-20T08:00:01.000+00:00"),
    st.just("2026-11-20T08:00:01Z"),
    st.just("2026-11-20T08:00:01+02:00"),
    st.just("2026-11-20T08:00:01"),
    st.just("not a time"),
    json_values,
)
position = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "deviceId": st.sampled_from([1, 2, "1", 99, None]) | json_values,
        "fixTime": times,
        "deviceTime": times,
        "serverTime": times,
        "valid": st.booleans() | json_values,
        "latitude": st.floats(-100, 100) | json_values,
        "longitude": st.floats(-200, 200) | json_values,
        "speed": st.floats(-10, 1000) | json_values,
        "course": st.floats(-10, 400) | json_values,
        "attributes": st.dictionaries(
            st.sampled_from(
                ["batteryLevel", "odometer", "totalDistance", "ignition", "blocked", "power"]
            ),
            json_values,
        )
        | json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(position, max_size=20))
def test_positions_are_mapped_or_counted_never_raised(chunk):
    devices = {"1": ("tcu-1", "ebike"), "2": ("tcu-2", "car")}
    mapped = map_positions(chunk, devices, {"3": "duplicate_device"}, DEFAULT, WINDOW, "p.json")
    assert len(mapped.rows) + sum(mapped.skipped.values()) == len(chunk)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["id", "name", "uniqueId", "category"]),
                                json_values), max_size=8))  # fmt: skip
def test_devices_are_mapped_or_rejected_never_raised(devices):
    registry = map_devices(devices, DEFAULT)
    assert len(registry.vehicles) + len(registry.rejected_devices) <= len(devices)
    assert len({v.device_id for v in registry.vehicles}) == len(registry.vehicles)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"id": st.integers(0, 99)},
            optional={
                "area": st.sampled_from(
                    [
                        "POLYGON((52.5 13.4, 52.6 13.4, 52.6 13.5, 52.5 13.4))",
                        "POLYGON((52.5 13.4, 52.6 13.4))",
                        "POLYGON(())",
                        "CIRCLE (52.5 13.4, -5)",
                        "CIRCLE (952.5 13.4, 50)",
                        "CIRCLE (52.5, 50)",
                        "LINESTRING (52.5 13.4, 52.6 13.5)",
                        "POLYGON((a b, c d))",
                    ]
                )
                | json_values,
                "attributes": json_values,
                "name": json_values,
            },
        ),
        max_size=6,
        unique_by=lambda g: g["id"],
    )
)
def test_geofences_become_zones_or_problems_never_raised(geofences):
    zones, problems = map_geofences(geofences, DEFAULT)
    assert len(zones) + len(problems) == len(geofences)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["vehicle_types", "vehicle_status", "station_information",
                         "geofencing_zones"]),
        st.fixed_dictionaries({"version": st.sampled_from(["2.3", "3.0"]) | json_values,
                               "data": json_values}),
    )
)  # fmt: skip
def test_gbfs_garbage_is_mapped_or_counted_never_raised(documents):
    source = map_gbfs(GbfsFeeds(documents, origin="feeds"), DEFAULT)
    for _file, mapped in source.chunks(WINDOW):
        assert len(mapped.rows) + sum(mapped.skipped.values()) >= 0
