"""Payload dialects, sans-IO: each shipped one decodes to the batch the native protocol gives for
the same samples; bad values get the native reasons; bad mapping files a clear error."""

from __future__ import annotations

import cbor2
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telemetry.batch import FLOAT_COLUMNS
from telemetry.decoder import REASONS, decode_telemetry
from telemetry.dialect import SHIPPED, DialectError, load_dialect, load_dialects, parse_dialect
from tests.dialect_traffic import as_dialect_can_say, encoder, full_samples

NOW = 1_764_412_800_000
REGISTRY = {"bike-1": 1, "car-2": 2}
# Columns a unit conversion goes through twice (the simulator's and the decoder's): float64 ones
# may differ in the last bit; the float32 ones are exact.
_CONVERTED_FLOAT64 = ("odometer_m",)


def decode(payloads, dialect=None, devices=None):
    devices = devices or ["bike-1"] * len(payloads)
    return decode_telemetry(
        devices,
        payloads,
        [NOW] * len(payloads),
        REGISTRY,
        now_ms=NOW,
        dialects=[dialect] * len(payloads) if dialect else None,
    )


def assert_same_batch(got, want) -> None:
    for name, col in want.columns().items():
        if name in _CONVERTED_FLOAT64:
            np.testing.assert_allclose(got.columns()[name], col, rtol=1e-12, err_msg=name)
        else:
            np.testing.assert_array_equal(got.columns()[name], col, err_msg=name)


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("per_message", [1, 7])
def test_a_shipped_dialect_decodes_to_what_the_native_protocol_gives(name, per_message):
    dialect, enc = load_dialect(name), encoder(name)
    samples = full_samples(NOW - 60_000, 14)
    chunks = [samples[k : k + per_message] for k in range(0, len(samples), per_message)]
    got = decode([enc.encode(c) for c in chunks], dialect)
    native = as_dialect_can_say(samples, name)
    want = decode([orjson.dumps(s) for s in native])
    assert got.rejected == {} and len(got.batch) == len(samples)
    assert_same_batch(got.batch, want.batch)


def test_traccar_units_and_epoch_seconds_are_converted():
    dialect = load_dialect("traccar-osmand")
    body = {"lat": 52.5, "lon": 13.4, "timestamp": (NOW - 1500) / 1000, "speed": 10, "batt": 55}
    batch = decode([orjson.dumps(body)], dialect).batch
    assert int(batch.time_ms[0]) == NOW - 1500
    assert batch.speed_kmh[0] == np.float32(18.52)
    assert batch.soc_pct[0] == np.float32(55)


def test_iso_times_with_an_offset_are_read_and_without_one_refused():
    dialect = load_dialect("flat-json")
    ok = {"ts": "2025-11-29T11:40:00.250+01:00", "latitude": 52.5, "longitude": 13.4}
    naive = {"ts": "2025-11-29T10:40:00", "latitude": 52.5, "longitude": 13.4}
    result = decode([orjson.dumps(ok), orjson.dumps(naive)], dialect)
    assert result.batch.time_ms.tolist() == [NOW + 250]
    assert result.rejected == {"wrong_type": 1}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"lat": 52.5', "malformed_json"),
        (b"\x00garbage", "unknown_encoding"),
        (b' "just text"', "bad_structure"),
        (b"[]", "bad_structure"),
        (orjson.dumps({"lat": 52.5, "lon": 13.4}), "missing_field"),
        (orjson.dumps({"timestamp": "soon", "lat": 52.5, "lon": 13.4}), "wrong_type"),
        (orjson.dumps({"timestamp": NOW / 1000, "lat": "52.5", "lon": 13.4}), "wrong_type"),
        (orjson.dumps({"timestamp": NOW / 1000, "lat": 95, "lon": 13.4}), "lat_out_of_range"),
        (cbor2.dumps({"timestamp": NOW / 1000, "speed": 10**400}), "wrong_type"),
        (orjson.dumps({"timestamp": NOW / 1000, "speed": 300}), "speed_out_of_range"),
        (orjson.dumps({"timestamp": NOW / 1000 + 86_400}), "time_in_future"),
        (orjson.dumps({"timestamp": 1e300, "lat": 52.5, "lon": 13.4}), "wrong_type"),
    ],
)
def test_bad_dialect_payloads_get_the_native_reasons(body, reason):
    result = decode([body], load_dialect("traccar-osmand"))
    assert result.rejected == {reason: 1}
    assert len(result.batch) == 0


def test_unregistered_and_invalid_device_ids_are_refused_as_natively():
    dialect = load_dialect("traccar-osmand")
    body = orjson.dumps({"timestamp": NOW / 1000, "lat": 52.5, "lon": 13.4})
    result = decode([body, body], dialect, devices=["nobody", "bad id"])
    assert result.rejected == {"unknown_device": 1, "bad_topic": 1}


def test_topics_match_by_level_and_name_the_device():
    dialect = load_dialect("traccar-osmand")
    assert dialect.topic_filter == "traccar/+/osmand"
    assert dialect.device_of("traccar/bike-1/osmand") == "bike-1"
    assert dialect.device_of("traccar/bike-1/osmand/x") is None
    assert dialect.device_of("other/bike-1/osmand") is None


GOOD = """
[dialect]
name = "x"
topic = "legacy/{device_id}/pos"
[time]
field = "ts"
format = "epoch_ms"
[fields]
lat = "la"
lon = "lo"
"""


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('format = "epoch_ms"', 'format = "epoch_us"'), "time.format"),
        (("legacy/{device_id}/pos", "legacy/pos"), "dialect.topic"),
        (("legacy/{device_id}/pos", "legacy/#/{device_id}"), "dialect.topic"),
        (('lat = "la"', 'latitude = "la"'), "fields.latitude"),
        (('lat = "la"', 'speed_kmh = { path = "s", unit = "furlong" }'), "fields.speed_kmh.unit"),
        (('lat = "la"', 'locked = { path = "l", unit = "V" }'), "fields.locked.unit"),
        (('lat = "la"', 'lat = ""'), "fields.lat.path"),
        (('name = "x"', 'nam = "x"'), "dialect.nam"),
        (("[time]", "[tme]"), "tme"),
        (("[fields]", "[other]"), "other"),
        (('topic = "legacy/{device_id}/pos"', "topic = 7"), "dialect.topic"),
    ],
)
def test_a_bad_mapping_is_an_error_naming_the_file_and_key(change, key):
    text = GOOD.replace(*change)
    with pytest.raises(DialectError, match=rf"^legacy\.toml: {key.replace('.', '[.]')}"):
        parse_dialect(text, "legacy.toml")


def test_a_file_that_is_not_toml_or_not_there_is_named(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[dialect\nname=")
    with pytest.raises(DialectError, match=f"^{broken}: not valid TOML"):
        load_dialect(str(broken))
    with pytest.raises(DialectError, match="missing.toml: cannot read it"):
        load_dialect(str(tmp_path / "missing.toml"))


def test_two_dialects_on_one_topic_are_refused(tmp_path):
    copy = tmp_path / "copy.toml"
    copy.write_text(
        GOOD.replace('"x"', '"y"').replace("legacy/", "traccar/").replace("/pos", "/osmand")
    )
    with pytest.raises(DialectError, match="same topic traccar/[+]/osmand"):
        load_dialects(["traccar-osmand", str(copy)])


def test_every_float_column_of_the_protocol_can_be_mapped():
    assert set(FLOAT_COLUMNS) <= {f.target for f in load_dialect("fleetgate").fields}


_JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# Objects with the dialect's own names, holding anything: the values that reach the mapping.
_TRACCAR_KEYS = ("timestamp", "lat", "lon", "speed", "bearing", "batt", "charge", "odometer")
_TRACCAR_LIKE = st.dictionaries(st.sampled_from(_TRACCAR_KEYS), _JSON, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TRACCAR_LIKE | st.lists(_TRACCAR_LIKE, max_size=3) | _JSON, max_size=8))
def test_any_json_in_a_dialect_is_decoded_or_rejected_by_reason_never_raises(values):
    """Whatever a legacy device sends, the decoder does not raise (a raise would cost the gateway
    a bisection and a quarantine per message) and every message is either stored or counted."""
    payloads = [orjson.dumps(v) for v in values]
    result = decode(payloads, load_dialect("traccar-osmand"))
    assert set(result.rejected) <= set(REASONS)
    assert len(result.batch) + sum(result.rejected.values()) >= len(payloads)


@settings(max_examples=200, deadline=None)
@given(
    st.text(max_size=40)
    | st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
        r"(Z|[+-][0-9]{2}:[0-9]{2})?\Z"
    )
)
def test_any_text_as_an_iso_time_is_a_time_or_a_wrong_type(text):
    body = orjson.dumps({"ts": text, "latitude": 52.5, "longitude": 13.4})
    result = decode([body], load_dialect("flat-json"))
    assert len(result.batch) == 1 or set(result.rejected) <= {
        "wrong_type",
        "time_in_future",
        "time_too_old",
    }
