"""SenML (RFC 8428) packs into the protocol's samples, and through the decoder into the same
columnar batch, with the same rejection reasons, as the project's own JSON and CBOR."""

from __future__ import annotations

import math
from fractions import Fraction

import cbor2
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemetry import senml
from telemetry.decoder import decode_events, decode_telemetry

NOW = 1_764_412_800_000  # ms
REGISTRY = {"lock-1": 7}


def decode(payload: bytes, content_type: str, now_ms: int = NOW):
    return decode_telemetry(
        ["lock-1"], [payload], [now_ms], REGISTRY, now_ms=now_ms, content_types=[content_type]
    )


def json_pack(records) -> bytes:
    return orjson.dumps(records)


def cbor_pack(records) -> bytes:
    labels = {v: k for k, v in senml.CBOR_LABELS.items()}
    return cbor2.dumps([{labels.get(k, k): v for k, v in r.items()} for r in records])


def test_base_fields_apply_to_the_records_that_follow_until_replaced():
    t = NOW / 1000 - 60
    pack = [
        {
            "bn": "urn:dev:imei:356938035643809:",
            "bt": t,
            "bu": "V",
            "bver": 10,
            "n": "pack_v",
            "v": 36.5,
        },
        {"n": "aux_v", "v": 12600, "u": "mV"},
        {"bn": "lock-1/", "n": "lat", "u": "lat", "v": 52.52},
        {"n": "lon", "u": "lon", "v": 13.4},
        {"bv": 100.0, "n": "odometer_m", "u": "m", "v": 5.5},
    ]
    assert senml.to_samples(pack, NOW) == [
        {
            "t": NOW - 60_000,
            "pack_v": 36.5,
            "aux_v": 12.6,
            "lat": 52.52,
            "lon": 13.4,
            "odometer_m": 105.5,
        }
    ]


def test_records_group_into_samples_by_their_time_in_order_of_appearance():
    t0 = NOW / 1000 - 30
    pack = [
        {"bt": t0, "n": "lat", "v": 52.5},
        {"n": "lon", "v": 13.4},
        {"n": "lat", "v": 52.6, "t": 10},
        {"n": "lon", "v": 13.5, "t": 10},
        {"n": "soc_pct", "u": "%EL", "v": 80, "t": 0},
    ]
    assert senml.to_samples(pack, NOW) == [
        {"t": NOW - 30_000, "lat": 52.5, "lon": 13.4, "soc_pct": 80},
        {"t": NOW - 20_000, "lat": 52.6, "lon": 13.5},
    ]


@pytest.mark.parametrize(
    ("bt", "t", "expected"),
    [
        (None, None, NOW),  # no time at all: now
        (None, -120, NOW - 120_000),  # relative: two minutes ago
        (-60, -0.5, NOW - 60_500),  # relative base and offset
        (1_764_000_000, 12.25, 1_764_000_012_250),  # absolute Unix seconds
        (2**28 - 1, 0, NOW + (2**28 - 1) * 1000),  # still relative (below 2**28)
        (2**28, 0, 2**28 * 1000),  # absolute from 2**28 on
    ],
)
def test_times_below_2_to_the_28_are_relative_to_now(bt, t, expected):
    rec = {"n": "soc_pct", "v": 50}
    if bt is not None:
        rec["bt"] = bt
    if t is not None:
        rec["t"] = t
    assert senml.to_samples([rec], NOW)[0]["t"] == expected


@pytest.mark.parametrize(
    ("name", "unit", "value", "field", "expected"),
    [
        ("speed_kmh", "m/s", 5.0, "speed_kmh", 18.0),
        ("Vehicle.Speed", "km/h", 21.0, "speed_kmh", 21.0),
        ("heading_deg", "rad", math.pi, "heading_deg", 180.0),
        ("soc_pct", "/", 0.715, "soc_pct", 71.5),
        ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "%", 42, "soc_pct", 42),
        ("pack_a", "mA", -1500, "pack_a", -1.5),
        ("odometer_m", "km", 1.25, "odometer_m", 1250.0),
        ("Vehicle.CurrentLocation.Latitude", "deg", 52.1, "lat", 52.1),
    ],
)
def test_names_and_units_map_to_the_protocol_fields_and_units(name, unit, value, field, expected):
    [s] = senml.to_samples([{"n": name, "u": unit, "v": value}], NOW)
    assert s[field] == pytest.approx(expected)


def test_unknown_names_are_ignored_like_unknown_fields():
    pack = [
        {"n": "temperature", "u": "Cel", "v": 21.5},
        {"n": "soc_pct", "v": 10},
        {"n": "firmware", "vs": "1.2.3"},
        {"n": "soc_pct", "s": 100.0, "t": 5},
    ]
    assert senml.to_samples(pack, NOW) == [{"t": NOW, "soc_pct": 10}]


@pytest.mark.parametrize(
    "pack",
    [
        {"n": "soc_pct", "v": 1},  # not an array
        [],  # empty
        [1, 2],  # not records
        [{"n": "temperature", "v": 21.0}],  # nothing the protocol knows
        [{"bver": 11, "n": "soc_pct", "v": 1}],  # a newer SenML than RFC 8428
        [{"n": "soc_pct", "v": 1, "xyz_": 1}],  # an unknown must-understand label
        [{"bn": 5, "n": "soc_pct", "v": 1}],  # base name not text
        [{"bt": "yesterday", "n": "soc_pct", "v": 1}],  # base time not a number
        [{"n": "soc_pct", "v": 1, "t": k} for k in range(1001)],  # more than 1,000 samples
    ],
)
def test_what_is_not_a_senml_pack_is_a_bad_structure(pack):
    with pytest.raises(senml.SenmlError):
        senml.to_samples(pack, NOW)
    result = decode(orjson.dumps(pack), "application/senml+json")
    assert result.rejected == {"bad_structure": 1} and len(result.batch) == 0


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"n": "soc_pct", "u": "Cel", "v": 50}, "soc_pct"),  # a unit the field does not take
        ({"n": "pack_v", "u": "A", "v": 36}, "pack_v"),
        ({"n": "locked", "v": 1}, "locked"),  # 0/1 for a boolean
        ({"n": "locked", "vb": True, "u": "/"}, "locked"),  # a unit on a boolean
        ({"n": "soc_pct", "vs": "50"}, "soc_pct"),  # a string for a number
        ({"n": "soc_pct", "vb": True}, "soc_pct"),
        ({"n": "soc_pct", "v": "50"}, "soc_pct"),
        ({"n": "soc_pct", "v": 50, "vs": "50"}, "soc_pct"),  # two values
        ({"n": "soc_pct", "v": 50, "t": "now"}, "t"),  # a time that is no number
    ],
)
def test_a_value_of_the_wrong_kind_or_unit_rejects_its_sample_as_wrong_type(record, field):
    good = {"bt": NOW / 1000 - 10, "n": "lat", "v": 52.5, "t": -1}
    pack = [good, {"n": "lon", "v": 13.4, "t": -1}, {"bt": NOW / 1000, **record}]
    result = decode(orjson.dumps(pack), "application/senml+json")
    assert result.rejected == {"wrong_type": 1}
    assert len(result.batch) == 1 and result.batch.time_ms[0] == NOW - 11_000
    assert result.problems[0].detail.startswith(f"{field}=<")


def test_json_and_cbor_labels_decode_to_the_same_batch_as_the_projects_own_format():
    records = [
        {"bn": "lock-1/", "bt": NOW / 1000 - 5, "n": "lat", "u": "lat", "v": 52.52},
        {"n": "lon", "u": "lon", "v": 13.405},
        {"n": "speed_kmh", "u": "km/h", "v": 14.5},
        {"n": "soc_pct", "u": "%EL", "v": 71.5},
        {"n": "locked", "vb": False},
        {"n": "charging", "vb": False},
    ]
    own = orjson.dumps(
        {
            "t": NOW - 5000,
            "lat": 52.52,
            "lon": 13.405,
            "speed_kmh": 14.5,
            "soc_pct": 71.5,
            "locked": False,
            "charging": False,
        }
    )
    expected = decode(own, "application/json").batch
    for payload, ctype in [
        (json_pack(records), "application/senml+json"),
        (cbor_pack(records), "application/senml+cbor"),
        (cbor_pack(records), "application/senml+cbor; charset=x"),
    ]:
        batch = decode(payload, ctype).batch
        for name, col in expected.columns().items():
            np.testing.assert_array_equal(getattr(batch, name), col, err_msg=name)


def test_ranges_and_times_are_checked_exactly_as_for_the_projects_format():
    pack = [
        {"bt": NOW / 1000, "n": "soc_pct", "v": 140},  # out of range
        {"n": "lat", "v": 95.0, "t": -1},
        {"n": "lon", "v": 13.0, "t": -1},
        {"n": "soc_pct", "v": 50, "t": 3600},  # future
        {"n": "lat", "v": 52.0, "t": -2},
    ]  # no lon
    result = decode(json_pack(pack), "application/senml+json")
    assert result.rejected == {
        "soc_out_of_range": 1,
        "lat_out_of_range": 1,
        "time_in_future": 1,
        "missing_field": 1,
    }
    assert len(result.batch) == 0


def test_garbage_is_malformed_json_or_cbor_by_its_content_type():
    assert decode(b"[{", "application/senml+json").rejected == {"malformed_json": 1}
    assert decode(b"\x9f\x01", "application/senml+cbor").rejected == {"malformed_cbor": 1}


def test_device_events_are_not_senml():
    events, rejected, _ = decode_events(
        ["lock-1"],
        [json_pack([{"n": "soc_pct", "v": 1}])],
        REGISTRY,
        now_ms=NOW,
        content_types=["application/senml+json"],
    )
    assert events == [] and rejected == {"bad_structure": 1}


def test_cbor_decimal_fractions_are_numbers():
    from decimal import Decimal

    [s] = senml.to_samples([{0: "soc_pct", 2: Decimal("55.25")}], NOW)
    assert s["soc_pct"] == 55.25


_FIELDS = st.fixed_dictionaries(
    {
        "lat": st.floats(-90, 90),
        "lon": st.floats(-180, 180),
        "speed_kmh": st.floats(0, 400),
        "soc_pct": st.floats(0, 100),
        "odometer_m": st.integers(0, 10**9),
        "locked": st.booleans(),
        "charging": st.booleans(),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.integers(0, 10**6), _FIELDS), min_size=1, max_size=20, unique_by=lambda x: x[0]
    ),
    cbor=st.booleans(),
    relative=st.booleans(),
)
def test_encode_pack_round_trips_through_the_decoder(samples, cbor, relative):
    rows = [{"t": NOW - age, **fields} for age, fields in samples]
    payload = senml.encode_pack(
        rows, cbor=cbor, base_name="lock-1/", relative_to_ms=NOW if relative else None
    )
    parsed = cbor2.loads(payload) if cbor else orjson.loads(payload)
    back = senml.to_samples(parsed, NOW)
    assert [r["t"] for r in back] == [r["t"] for r in rows]
    for got, want in zip(back, rows):
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-9)


def test_relative_times_count_from_the_messages_receipt_not_from_the_batch_decode():
    # A pack held in the pipeline through a database outage still gets the time it was sent.
    payload = json_pack([{"bt": -60, "n": "soc_pct", "v": 50}])
    received = NOW - 45_000
    result = decode_telemetry(
        ["lock-1"],
        [payload],
        [received],
        REGISTRY,
        now_ms=NOW,
        content_types=["application/senml+json"],
    )
    assert result.batch.time_ms.tolist() == [received - 60_000]


# Found by benchmarks/fuzz.py: a CBOR rational (tag 30) beyond float64 made float() raise
# OverflowError, and a 6,000-digit integer made the error message's repr() raise ValueError;
# either failed the whole batch and the message was quarantined instead of refused.
HUGE = 10**6000


@pytest.mark.parametrize(
    "record,reason",
    [
        ({"n": "soc_pct", "v": Fraction(10**400, 3)}, "wrong_type"),
        ({"n": "soc_pct", "v": Fraction(-(10**400), 1)}, "wrong_type"),
        ({"n": "soc_pct", "v": HUGE}, "wrong_type"),
        ({"n": "soc_pct", "v": 50, "t": HUGE}, "wrong_type"),
        ({"bt": Fraction(10**400, 7), "n": "soc_pct", "v": 50}, "bad_structure"),
        ({"bt": HUGE, "n": "soc_pct", "v": 50}, "bad_structure"),
        ({"bver": HUGE, "n": "soc_pct", "v": 50}, "bad_structure"),
        ({"n": "soc_pct", "v": 50, "u": "%" * 100_000}, "wrong_type"),
    ],
    ids=[
        "huge rational v",
        "huge negative rational v",
        "6000-digit v",
        "6000-digit t",
        "huge rational bt",
        "6000-digit bt",
        "6000-digit bver",
        "a unit of 100,000 characters",
    ],
)
def test_numbers_beyond_float64_and_huge_values_are_refused_with_a_short_reason(record, reason):
    r = decode(cbor_pack([record]), "application/senml+cbor")
    assert r.rejected == {reason: 1}
    assert len(r.problems[0].detail) < 300, r.problems[0].detail
