"""The columnar decoder: every reason, batches, encodings, and agreement with the pydantic contract."""

from __future__ import annotations

import math

import cbor2
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from telemetry.batch import UNKNOWN
from telemetry.decoder import REASONS, TimeLimits, decode_telemetry, payload_encoding
from telemetry.schema import Sample

NOW = 1_764_412_800_000
REGISTRY = {"bike-1": 1, "car-2": 2}


def decode(payloads, devices=None, **kw):
    devices = devices or ["bike-1"] * len(payloads)
    return decode_telemetry(devices, payloads, [NOW] * len(payloads), REGISTRY, now_ms=NOW, **kw)


def sample(**over):
    s = {"t": NOW - 1000, "lat": 52.52, "lon": 13.405, "speed_kmh": 17.5, "heading_deg": 84.0,
         "soc_pct": 71.5, "pack_v": 38.9, "pack_a": 6.2, "aux_v": 12.6, "odometer_m": 1289034,
         "locked": False, "ignition": True, "immobilised": False, "charging": False}
    s.update(over)
    return {k: v for k, v in s.items() if v is not _DROP}


_DROP = object()


def test_a_full_sample_lands_in_every_column():
    r = decode([orjson.dumps(sample())])
    assert r.rejected == {}
    b = r.batch
    assert len(b) == 1 and b.vehicle[0] == 1 and b.time_ms[0] == NOW - 1000
    assert (b.lat[0], b.lon[0]) == (52.52, 13.405)
    assert b.speed_kmh[0] == np.float32(17.5) and b.odometer_m[0] == 1289034
    assert (b.locked[0], b.ignition[0], b.immobilised[0], b.charging[0]) == (0, 1, 0, 0)
    assert b.received_ms[0] == NOW and b.flags[0] == 0


def test_fields_not_reported_are_nan_or_unknown():
    r = decode([orjson.dumps({"t": NOW, "soc_pct": 50, "lat": None, "lon": None})])
    b = r.batch
    assert len(b) == 1 and math.isnan(b.lat[0]) and math.isnan(b.aux_v[0])
    assert b.locked[0] == UNKNOWN and b.soc_pct[0] == 50


def test_json_and_cbor_single_and_batch_payloads_decode_alike():
    samples = [sample(t=NOW - 3000 + i) for i in range(3)]
    payloads = [orjson.dumps(samples[0]), cbor2.dumps(samples[1]), cbor2.dumps([samples[2]]),
                orjson.dumps(samples[:2])]
    r = decode(payloads)
    assert r.rejected == {}
    assert sorted(r.batch.time_ms.tolist()) == sorted([NOW - 3000, NOW - 2999, NOW - 2998,
                                                        NOW - 3000, NOW - 2999])


def test_encoding_is_detected_by_content_type_then_first_byte():
    assert payload_encoding(b' {"t":1}') == "json"
    assert payload_encoding(cbor2.dumps({"t": 1})) == "cbor"
    assert payload_encoding(b"\xd9\xd9\xf7" + cbor2.dumps({"t": 1})) == "cbor"
    assert payload_encoding(b"hello") is None
    assert payload_encoding(b"", None) is None
    assert payload_encoding(b"\xa1", "application/json") == "json"


@pytest.mark.parametrize("payload,reason", [
    (b'{"t": 17644', "malformed_json"),
    (b"\xa2\x61t", "malformed_cbor"),
    (b"plain text", "unknown_encoding"),
    (b"x" * (256 * 1024 + 1), "payload_too_large"),
    (b"[]", "bad_structure"),
    (b"[1, 2]", "bad_structure"),
    (orjson.dumps([sample()] * 1001), "bad_structure"),
    (orjson.dumps(sample(t=_DROP)), "missing_field"),
    (orjson.dumps(sample(lon=_DROP)), "missing_field"),
    (orjson.dumps(sample(lat="52.5")), "wrong_type"),
    (orjson.dumps(sample(locked=1)), "wrong_type"),
    (orjson.dumps(sample(t=float(NOW))), "wrong_type"),
    (orjson.dumps(sample(t=True)), "wrong_type"),
    (cbor2.dumps(sample(aux_v=float("nan"))), "wrong_type"),
    (cbor2.dumps(sample(pack_v=float("inf"))), "wrong_type"),
    (cbor2.dumps(sample(t=2**70)), "wrong_type"),
    (cbor2.dumps(sample(pack_v=2**2000)), "wrong_type"),
    (orjson.dumps(sample(aux_v=1e39)), "wrong_type"),  # finite, but not in a float32 column
    (orjson.dumps(sample(speed_kmh=-5e-282)), "speed_out_of_range"),  # not -0.0 after rounding
    (orjson.dumps(sample(t=2**63 - 1)), "time_in_future"),
    (orjson.dumps(sample(lat=123.0)), "lat_out_of_range"),
    (orjson.dumps(sample(lon=-180.5)), "lon_out_of_range"),
    (orjson.dumps(sample(soc_pct=140)), "soc_out_of_range"),
    (orjson.dumps(sample(speed_kmh=-3)), "speed_out_of_range"),
    (orjson.dumps(sample(heading_deg=361)), "heading_out_of_range"),
    (orjson.dumps(sample(t=NOW + 6 * 60_000)), "time_in_future"),
    (orjson.dumps(sample(t=NOW - 31 * 86_400_000)), "time_too_old"),
])
def test_each_kind_of_bad_input_is_rejected_with_its_reason(payload, reason):
    good = orjson.dumps(sample(t=NOW - 5))
    r = decode([good, payload, good])
    assert reason in REASONS
    assert set(r.rejected) == {reason}
    assert len(r.batch) == 2, "the good messages around the bad one are kept"
    assert r.problems and r.problems[0].reason == reason and r.problems[0].detail


def test_unknown_device_and_bad_topic_reject_the_message():
    r = decode([orjson.dumps(sample())] * 2, devices=["ghost-9", "bad/id+"])
    assert r.rejected == {"unknown_device": 1, "bad_topic": 1}
    assert len(r.batch) == 0


def test_a_bad_sample_in_a_batch_does_not_take_the_others_with_it():
    batch = [sample(t=NOW - 3), sample(t=NOW - 2, soc_pct=101), sample(t=NOW - 1)]
    r = decode([orjson.dumps(batch)])
    assert r.rejected == {"soc_out_of_range": 1}
    assert r.batch.time_ms.tolist() == [NOW - 3, NOW - 1]


def test_a_payload_that_is_two_json_values_cannot_smuggle_samples():
    # Joined parsing must not turn '{...},{...}' into two samples of one message.
    sneaky = orjson.dumps(sample(t=NOW - 9)) + b"," + orjson.dumps(sample(t=NOW - 8))
    r = decode([orjson.dumps(sample(t=NOW - 7)), sneaky])
    assert r.rejected == {"malformed_json": 1}
    assert r.batch.time_ms.tolist() == [NOW - 7]


def test_time_limits_are_configurable():
    r = decode([orjson.dumps(sample(t=NOW + 60_000))], limits=TimeLimits(max_future_ms=30_000))
    assert r.rejected == {"time_in_future": 1}


def test_problems_are_bounded():
    r = decode([b"garbage"] * 100, max_problems=5)
    assert r.rejected == {"unknown_encoding": 100} and len(r.problems) == 5


# --- agreement with the pydantic contract ---------------------------------------------------

_numbers = st.one_of(st.none(), st.integers(-500, 500), st.floats(-500, 500, allow_nan=False),
                     st.sampled_from(["1", True, False, [1]]))
_bools = st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, "yes"]))
_sample_dicts = st.fixed_dictionaries(
    {"t": st.one_of(st.integers(NOW - 10_000, NOW + 10_000), st.sampled_from([None, "x", 1.5, True]))},
    optional={"lat": _numbers, "lon": _numbers, "speed_kmh": _numbers, "heading_deg": _numbers,
              "soc_pct": _numbers, "pack_v": _numbers, "aux_v": _numbers, "odometer_m": _numbers,
              "locked": _bools, "charging": _bools, "extra_field": st.text(max_size=3)})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(_sample_dicts, min_size=1, max_size=8), st.booleans())
def test_decoder_accepts_exactly_what_the_pydantic_model_accepts(dicts, as_cbor):
    dump = cbor2.dumps if as_cbor else orjson.dumps
    r = decode([dump(d) for d in dicts])
    expected = []
    for d in dicts:
        try:
            s = Sample.model_validate(d)
        except ValidationError:
            continue
        if s.t <= NOW + TimeLimits().max_future_ms:
            expected.append(s.t)
    assert sorted(r.batch.time_ms.tolist()) == sorted(expected)
    assert sum(r.rejected.values()) == len(dicts) - len(expected)
