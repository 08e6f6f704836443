"""Zones are validated with a reason, rules resolve per GBFS v3 precedence, GBFS import/export
round-trips and what fleetgate exports passes the official geofencing_zones.json schema."""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import shapely

from benchmarks.zone_index import city_zones
from geofence import InvalidZone, Rule, Zone, ZoneKind, ZoneSet, assign_kinds
from tests import REPO


def gbfs_schema(name: str) -> dict:
    """An official GBFS v3.0 JSON schema (MobilityData/gbfs-json-schema). The schemas are
    reference data kept beside the project, not in it: FLEETGATE_GBFS_SCHEMA_DIR, else the
    shared/gbfs/v3.0 folder next to the checkout."""
    candidates = (
        [Path(os.environ["FLEETGATE_GBFS_SCHEMA_DIR"])]
        if os.environ.get("FLEETGATE_GBFS_SCHEMA_DIR")
        else []
    )
    candidates += [
        REPO.parent / "shared" / "gbfs" / "v3.0",
        Path("/work/shared/gbfs/v3.0"),
    ]
    for folder in candidates:
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    pytest.skip(
        f"the official GBFS v3.0 schema {name} is not here (set "
        f"FLEETGATE_GBFS_SCHEMA_DIR to a copy of gbfs-json-schema/v3.0)"
    )


def box(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def rule(types=None, start=True, end=True, through=True, speed=None, parking=None):
    return Rule(
        vehicle_type_ids=types,
        ride_start_allowed=start,
        ride_end_allowed=end,
        ride_through_allowed=through,
        maximum_speed_kph=speed,
        station_parking=parking,
    )


# --------------------------------------------------------------------------- validation ----


@pytest.mark.parametrize(
    ("geometry", "reason"),
    [
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]},
            "Self-intersection at [0.5, 0.5]",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "is not closed"),
        (
            {
                "type": "Polygon",
                "coordinates": [
                    [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]],
                    [[5, 5], [6, 5], [6, 6], [5, 5]],
                ],
            },
            "Hole lies outside shell",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "needs at least 4"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 0], [0, 0]]]}, "Too few points"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [math.nan, 0], [1, 1], [0, 0]]]},
            "not finite",
        ),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [math.inf, 0], [1, 1], [0, 0]]]},
            "not finite",
        ),
        (
            {"type": "Polygon", "coordinates": [[[52, 13], [52, 100], [53, 13], [52, 13]]]},
            "outside lon -180..180 / lat -90..90",
        ),
        ({"type": "Polygon", "coordinates": []}, "no rings"),
        ({"type": "MultiPolygon", "coordinates": []}, "no polygons"),
        ({"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": 0}, "radius_m must be"),
        ({"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": -5}, "radius_m must be"),
        ({"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": math.nan}, "radius_m must be"),
        ({"type": "Circle", "coordinates": [13.4, 52.5], "radius_m": 1e6}, "exceeds"),
        (
            {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
            "does not match any of the expected tags",
        ),
    ],
)
def test_invalid_geometry_is_rejected_with_its_reason(geometry, reason):
    with pytest.raises(InvalidZone, match=r"zone 'bad' rejected: .*" + re.escape(reason)):
        Zone.from_row({"id": "bad", "geometry": geometry})


def test_rows_with_json_text_columns_are_read_and_invalid_rows_name_the_zone():
    good = {
        "id": "a",
        "kind": "slow",
        "geometry": json.dumps(box(0, 0, 1, 1)),
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),  # other columns are ignored
        "rules": json.dumps(
            [
                {
                    "ride_start_allowed": True,
                    "ride_end_allowed": True,
                    "ride_through_allowed": True,
                    "maximum_speed_kph": 15,
                }
            ]
        ),
    }
    zs = ZoneSet.from_rows([good], version=3)
    assert zs.zones[0].rules[0].maximum_speed_kph == 15 and zs.version == 3
    bowtie = {
        "id": "b",
        "geometry": json.dumps(
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
        ),
    }
    with pytest.raises(InvalidZone, match="zone 'b' rejected: invalid geometry: Self-intersection"):
        ZoneSet.from_rows([good, bowtie])


def test_duplicate_ids_and_bad_time_windows_are_rejected():
    z = Zone(id="a", geometry=box(0, 0, 1, 1))
    with pytest.raises(InvalidZone, match="'a' appears more than once"):
        ZoneSet([z, z])
    with pytest.raises(InvalidZone, match="end .* is not after start"):
        Zone.from_row(
            {
                "id": "w",
                "geometry": box(0, 0, 1, 1),
                "start": "2026-05-02T00:00:00Z",
                "end": "2026-05-01T00:00:00Z",
            }
        )
    with pytest.raises(InvalidZone, match="must carry a time zone"):
        Zone.from_row({"id": "w", "geometry": box(0, 0, 1, 1), "start": "2026-05-02T00:00:00"})


def test_zone_rows_round_trip():
    zones = city_zones(30, seed=1)
    again = ZoneSet.from_rows(json.loads(json.dumps(ZoneSet(zones).to_rows())))
    assert again.zones == ZoneSet(zones).zones


# --------------------------------------------------------------------------- precedence ----

# The spec's overlap diagram: A = [0, 2] x [0, 2], B = [1, 3] x [0, 2]; areas a, ab, b, g.
AREAS = {"a": (1.0, 0.5), "ab": (1.0, 1.5), "b": (1.0, 2.5), "g": (1.0, 5.0)}  # (lat, lon)


def resolve_areas(zs: ZoneSet, vehicle_type: str, time_ms=None):
    lat = np.array([p[0] for p in AREAS.values()])
    lon = np.array([p[1] for p in AREAS.values()])
    return zs.resolve(zs.locate(lat, lon), vehicle_type, time_ms)


def test_gbfs_example_same_vehicle_types_resolves_fields_independently():
    zs = ZoneSet(
        [
            Zone(id="A", geometry=box(0, 0, 2, 2), priority=0, rules=[rule(["bike"])]),
            Zone(
                id="B",
                geometry=box(1, 0, 3, 2),
                priority=1,
                rules=[rule(["bike"], through=False, speed=20)],
            ),
        ],
        global_rules=[rule(["bike"], through=False, speed=10)],
    )
    r = resolve_areas(zs, "bike")
    assert r.ride_through_allowed.tolist() == [True, True, False, False]
    assert r.maximum_speed_kph.tolist() == [10, 20, 20, 10]
    assert r.zone.tolist() == [0, 0, 1, -1]
    assert r.speed_zone.tolist() == [-1, 1, 1, -1]


def test_gbfs_example_different_vehicle_types():
    zs = ZoneSet(
        [
            Zone(id="A", geometry=box(0, 0, 2, 2), priority=0, rules=[rule(["bike"])]),
            Zone(
                id="B",
                geometry=box(1, 0, 3, 2),
                priority=1,
                rules=[rule(["scooter"], through=False)],
            ),
        ],
        global_rules=[rule(["bike"], through=False), rule(["scooter"], through=True)],
    )
    assert resolve_areas(zs, "bike").ride_through_allowed.tolist() == [True, True, False, False]
    assert resolve_areas(zs, "scooter").ride_through_allowed.tolist() == [True, False, False, True]


def test_gbfs_example_some_overlapping_vehicle_types():
    zs = ZoneSet(
        [
            Zone(id="A", geometry=box(0, 0, 2, 2), priority=0, rules=[rule(["bike", "scooter"])]),
            Zone(
                id="B",
                geometry=box(1, 0, 3, 2),
                priority=1,
                rules=[rule(["scooter"], through=False)],
            ),
        ],
        global_rules=[rule(through=False)],
    )
    assert resolve_areas(zs, "bike").ride_through_allowed.tolist() == [True, True, False, False]
    # The spec's table prints "fales" for scooters in area a; polygon A's rule names scooters and
    # allows riding through, so the only consistent reading is true.
    assert resolve_areas(zs, "scooter").ride_through_allowed.tolist() == [True, True, False, False]


def test_earlier_rule_in_an_array_wins_and_unknown_types_fall_to_generic_rules():
    zs = ZoneSet(
        [
            Zone(
                id="Z",
                geometry=box(0, 0, 2, 2),
                rules=[
                    rule(["ebike"], through=False),
                    rule(["ebike"], through=True, speed=6),
                    rule(speed=30),
                ],
            )
        ]
    )
    lat, lon = np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0])
    r = zs.resolve(zs.locate(lat, lon), np.array(["ebike", "car", "tuk-tuk"]))
    assert r.ride_through_allowed.tolist() == [False, True, True]
    # maximum_speed_kph comes from the first applicable rule that sets it.
    assert r.maximum_speed_kph.tolist() == [6, 30, 30]


def test_priority_orders_zones_and_ties_break_on_id():
    zs = ZoneSet(
        [
            Zone(id="late", geometry=box(0, 0, 2, 2), priority=5, rules=[rule(speed=5)]),
            Zone(id="b", geometry=box(0, 0, 2, 2), priority=1, rules=[rule(speed=15)]),
            Zone(id="a", geometry=box(0, 0, 2, 2), priority=1, rules=[rule(speed=25)]),
        ]
    )
    assert zs.ids == ("a", "b", "late")
    r = zs.resolve(zs.locate(np.array([1.0]), np.array([1.0])), "car")
    assert r.maximum_speed_kph.tolist() == [25] and r.speed_zone.tolist() == [0]


def test_polygon_rules_beat_global_rules_and_rule_less_zones_are_transparent():
    zs = ZoneSet(
        [
            Zone(id="label", geometry=box(0, 0, 2, 2), priority=0),
            Zone(id="slow", geometry=box(0, 0, 2, 2), priority=1, rules=[rule(speed=12)]),
        ],
        global_rules=[rule(start=False, speed=40)],
    )
    r = zs.resolve(zs.locate(np.array([1.0, 9.0]), np.array([1.0, 9.0])), "ebike")
    assert r.maximum_speed_kph.tolist() == [12, 40]
    assert r.ride_start_allowed.tolist() == [True, False]
    assert r.zone.tolist() == [1, -1]


def test_zones_outside_their_time_window_are_ignored():
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    zs = ZoneSet(
        [
            Zone(
                id="event",
                geometry=box(0, 0, 2, 2),
                priority=0,
                start=t0,
                end=t0 + timedelta(hours=2),
                rules=[rule(through=False)],
            ),
            Zone(id="slow", geometry=box(0, 0, 2, 2), priority=1, rules=[rule(speed=10)]),
        ]
    )
    m = zs.locate(np.array([1.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0]))
    ms = int(t0.timestamp() * 1000)
    r = zs.resolve(m, "car", np.array([ms - 1, ms, ms + 2 * 3600_000]))
    assert r.ride_through_allowed.tolist() == [True, False, True]
    assert r.zone.tolist() == [1, 0, 1]
    assert zs.resolve(m, "car").ride_through_allowed.tolist() == [False] * 3  # no time: all active


def test_no_rule_anywhere_means_allowed_without_limit():
    zs = ZoneSet([Zone(id="z", geometry=box(0, 0, 1, 1))])
    r = zs.resolve(zs.locate(np.array([0.5, 5.0]), np.array([0.5, 5.0])), "car")
    assert r.ride_start_allowed.all() and r.ride_end_allowed.all() and r.ride_through_allowed.all()
    assert np.isnan(r.maximum_speed_kph).all() and not r.station_parking.any()


# ---------------------------------------------------------------------------------- GBFS ----


def test_export_passes_the_official_gbfs_v3_schema_and_round_trips():
    import jsonschema  # test dependency; imported here so that only this test needs it

    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    zones = [
        *city_zones(40, seed=2),
        Zone(
            id="market",
            name="Saturday market",
            kind=ZoneKind.NO_RIDE,
            geometry=box(13.39, 52.51, 13.40, 52.52),
            start=t0,
            end=t0 + timedelta(hours=6),
            rules=[rule(["ebike"], through=False, end=False)],
            priority=-1,
        ),
    ]
    zs = ZoneSet(zones, global_rules=[rule(["car"], end=False)], version=7)
    doc = json.loads(json.dumps(zs.to_gbfs(last_updated=t0, ttl=30)))
    schema = gbfs_schema("geofencing_zones.json")
    jsonschema.Draft7Validator.check_schema(schema)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    assert errors == []
    # GBFS requires global rules covering every type: an allow-all rule closes the list.
    assert doc["data"]["global_rules"][-1] == {
        "ride_start_allowed": True,
        "ride_end_allowed": True,
        "ride_through_allowed": True,
    }
    # Right-hand rule: shells counter-clockwise, holes clockwise.
    for f in doc["data"]["geofencing_zones"]["features"]:
        for poly in f["geometry"]["coordinates"]:
            assert shapely.LinearRing(poly[0]).is_ccw
            assert all(not shapely.LinearRing(h).is_ccw for h in poly[1:])

    back = ZoneSet.from_gbfs(doc, version=8)
    assert back.ids == zs.ids  # same precedence order
    for a, b in zip(zs.zones, back.zones):
        assert (a.id, a.name, a.kind, a.rules, a.start, a.end) == (
            b.id,
            b.name,
            b.kind,
            b.rules,
            b.start,
            b.end,
        )
        if a.is_circle:
            assert a.geometry == b.geometry  # exact centre and radius via _circle
        else:
            # GBFS has only MultiPolygons: a Polygon comes back as its one-part MultiPolygon.
            assert canonical(a.shape).equals_exact(canonical(b.shape), 0)
    assert back.global_rules[:-1] == zs.global_rules


def canonical(shape):
    return shapely.normalize(shapely.MultiPolygon(list(shapely.get_parts(shape))))


def test_a_third_party_gbfs_feed_is_imported_in_file_order():
    def feature(geometry, **props):
        return {
            "type": "Feature",
            "properties": props,
            "geometry": {"type": "MultiPolygon", "coordinates": [geometry["coordinates"]]},
        }

    centre = feature(
        box(0, 0, 2, 2),
        name=[{"text": "Zentrum", "language": "de"}, {"text": "Centre", "language": "en"}],
        rules=[
            {
                "vehicle_type_ids": ["ebike"],
                "ride_start_allowed": True,
                "ride_end_allowed": False,
                "ride_through_allowed": True,
                "maximum_speed_kph": 10,
                "_vendor_note": "x",
            }
        ],
    )
    closed = feature(
        box(1, 0, 3, 2),
        rules=[
            {"ride_start_allowed": False, "ride_end_allowed": False, "ride_through_allowed": False}
        ],
    )
    doc = {
        "last_updated": "2026-07-17T13:34:13+02:00",
        "ttl": 60,
        "version": "3.0",
        "data": {
            "geofencing_zones": {"type": "FeatureCollection", "features": [centre, closed]},
            "global_rules": [
                {"ride_start_allowed": True, "ride_end_allowed": True, "ride_through_allowed": True}
            ],
        },
    }
    zs = ZoneSet.from_gbfs(doc, language="en")
    assert zs.ids == ("gbfs-0", "gbfs-1") and zs.zones[0].name == "Centre"
    m = zs.locate(np.array([1.0, 1.0]), np.array([1.5, 1.5]))
    r = zs.resolve(m, np.array(["ebike", "car"]))
    assert r.maximum_speed_kph[0] == 10 and r.ride_through_allowed.tolist() == [True, False]


def test_a_gbfs_2_document_is_refused():
    with pytest.raises(InvalidZone, match="is not GBFS 3.x"):
        ZoneSet.from_gbfs({"version": "2.3", "data": {}})


def test_vectorised_resolution_matches_a_rule_by_rule_reading_of_the_spec():
    rng = np.random.default_rng(12)
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    zones = []
    for k, z in enumerate(city_zones(120, seed=5)):
        if k % 7 == 3:  # some zones only exist for a few hours
            z = z.model_copy(update={"start": t0, "end": t0 + timedelta(hours=3)})
        if k % 11 == 5:  # and some carry several rules for different types
            z = z.model_copy(
                update={
                    "rules": (
                        rule(["car"], through=False),
                        rule(speed=25),
                        rule(["ebike"], parking=True, speed=12),
                    )
                }
            )
        zones.append(z)
    zs = ZoneSet(zones, global_rules=[rule(["car"], end=False, speed=50), rule(through=False)])
    lat, lon = city_points_for(zs, 3000, rng)
    types = rng.choice(["ebike", "car", "cargo"], len(lat))
    times = int(t0.timestamp() * 1000) + rng.integers(-3600_000, 4 * 3600_000, len(lat))
    m = zs.locate(lat, lon)
    got = zs.resolve(m, types, times)
    # The sample is not trivial: overlaps, per-field winners from different zones, global rules.
    assert (m.counts > 2).mean() > 0.3
    assert ((got.speed_zone != got.zone) & (got.speed_zone >= 0)).sum() > 50
    assert (got.zone == -1).sum() > 20
    for i in range(len(lat)):
        ordered = sorted(m.zones_of(i).tolist())
        live = [z for z in ordered if zs.active(np.array([z]), np.array([times[i]]))[0]]
        chain = [(z, r) for z in live for r in zs.zones[z].rules if r.applies_to(types[i])]
        chain += [(-1, r) for r in zs.global_rules if r.applies_to(types[i])]
        main = chain[0] if chain else (-1, rule())
        speed = next(((z, r) for z, r in chain if r.maximum_speed_kph is not None), None)
        parking = next((r for _, r in chain if r.station_parking is not None), None)
        assert got.zone[i] == main[0]
        assert got.ride_start_allowed[i] == main[1].ride_start_allowed
        assert got.ride_end_allowed[i] == main[1].ride_end_allowed
        assert got.ride_through_allowed[i] == main[1].ride_through_allowed
        if speed is None:
            assert np.isnan(got.maximum_speed_kph[i]) and got.speed_zone[i] == -1
        else:
            assert (got.maximum_speed_kph[i], got.speed_zone[i]) == (
                speed[1].maximum_speed_kph,
                speed[0],
            )
        assert got.station_parking[i] == bool(parking and parking.station_parking)


def city_points_for(zs: ZoneSet, n: int, rng: np.random.Generator):
    # Near zone centroids, so that most points are in several zones.
    centres = np.array([z.shape.centroid.coords[0] for z in zs.zones])
    pick = rng.integers(len(centres), size=n)
    return (centres[pick, 1] + rng.normal(0, 0.004, n), centres[pick, 0] + rng.normal(0, 0.006, n))


def test_kinds_are_assigned_by_id_else_by_every_zone_of_that_name():
    def box(zone_id: str, name: str, x: float) -> Zone:
        return Zone.from_row(
            {
                "id": zone_id,
                "name": name,
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[x, 0], [x + 1, 0], [x + 1, 1], [x, 1], [x, 0]]],
                },
            }
        )

    zones = [box("a", "Depot", 0), box("b", "Depot", 2), box("c", "a", 4)]
    out = assign_kinds(zones, {"Depot": "station", "c": "no_parking"})
    assert [(z.id, z.kind) for z in out] == [
        ("a", ZoneKind.STATION),
        ("b", ZoneKind.STATION),
        ("c", ZoneKind.NO_PARKING),
    ]
    assert out[1].shape.equals(zones[1].shape) and zones[1].kind is ZoneKind.OTHER
    out = assign_kinds(zones, {"a": "slow"})  # zone a's id, not zone c's name
    assert [z.kind for z in out] == [ZoneKind.SLOW, ZoneKind.OTHER, ZoneKind.OTHER]
    with pytest.raises(InvalidZone, match="two kinds"):
        assign_kinds(zones, {"Depot": "station", "b": "slow"})
    with pytest.raises(InvalidZone, match="no zone has the id or name 'Hub'"):
        assign_kinds(zones, {"Hub": "station"})
    with pytest.raises(InvalidZone, match="'parking' for 'a' is not one of"):
        assign_kinds(zones, {"a": "parking"})
