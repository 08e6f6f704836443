"""The typed decoder of native JSON samples (telemetry.decoder._parse_native_json) against the
general path: the same columns, bit for bit, and the same rejections and problems, whatever it
takes or leaves to the general path."""

from __future__ import annotations

import random

import cbor2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks._fuzz_payloads import Devices, PayloadFuzzer, Raw, json_bytes
from benchmarks.decoder import typical_payloads
from firmware_sim.payloads import JSON
from telemetry.batch import STATE_COLUMNS
from telemetry.decoder import _NUMBER_FIELDS, _parse_native_json, decode_telemetry
from telemetry.schema import MAX_PAYLOAD_BYTES, MAX_SAMPLES_PER_MESSAGE
from tests.decoder_samples import DROP as _DROP
from tests.decoder_samples import NOW, REGISTRY, sample


def decoded_alike(devices, payloads, content_types=None, registry=REGISTRY):
    """Decode with the typed decoder and without it; both must agree exactly. Returns the
    result and how many samples the typed decoder took."""
    received = [NOW - 10 * i for i in range(len(payloads))]

    def run(fast_json: bool):
        return decode_telemetry(
            devices,
            payloads,
            received,
            registry,
            now_ms=NOW,
            content_types=content_types,
            fast_json=fast_json,
        )

    fast, general = run(True), run(False)
    for name, column in general.batch.columns().items():
        got = getattr(fast.batch, name)
        assert got.dtype == column.dtype and got.tobytes() == column.tobytes(), name
    assert fast.rejected == general.rejected
    assert fast.problems == general.problems
    taken, _, _ = _parse_native_json(devices, payloads, registry, content_types, None)
    return fast, len(taken)


def test_the_simulated_fleets_json_goes_the_typed_way_and_decodes_as_before():
    devices, payloads = typical_payloads(2000, JSON)
    registry = {d: i for i, d in enumerate(sorted(set(devices)))}
    result, taken = decoded_alike(devices, payloads, registry=registry)
    assert taken == len(payloads) == len(result.batch)


# Payloads the typed decoder takes (True) or leaves to the general path (False), each checked
# alone and beside others against the general path.
_GOOD = orjson.dumps(sample())
_EDGE_CASES = [
    (_GOOD, True),
    (orjson.dumps([sample(t=NOW - 2000), sample()]), True),
    (b" \t\r\n" + _GOOD + b"\n", True),
    (b'{"t": %d}' % (NOW - 5), True),
    (b'{"t": %d, "t": %d}' % (NOW - 1, NOW - 2), True),  # the last one, as orjson
    (b'{"t": %d, "l\\u0061t": 1, "lon": 2}' % NOW, True),
    (orjson.dumps(sample(lat=-0.0, speed_kmh=-0.0)), True),
    (b'{"t": %d, "speed_kmh": -0}' % NOW, True),
    (orjson.dumps(sample(speed_kmh=-1e-300)), True),  # negative, not -0.0
    (b'{"t": %d, "odometer_m": 1e-400}' % NOW, True),
    (b'{"t": %d, "odometer_m": 9007199254740993}' % NOW, True),
    (b'{"t": %d, "odometer_m": 18446744073709551615}' % NOW, True),
    (b'{"t": %d, "odometer_m": 123456789012345678901234567890}' % NOW, True),
    (b'{"t": %d, "odometer_m": 1.7976931348623157e308}' % NOW, True),
    (b'{"t": %d, "pack_v": 3.5e38}' % NOW, True),  # float32's range ends: a wrong_type
    (b'{"t": %d, "soc_pct": 1E2, "heading_deg": 360.0000000001}' % NOW, True),
    (orjson.dumps(sample(lat=91)), True),
    (orjson.dumps(sample(lon=_DROP)), True),  # lat without lon
    (orjson.dumps(sample(t=NOW + 3_600_000)), True),
    (orjson.dumps(sample(t=2**63 - 1)), True),
    (orjson.dumps(sample(t=-(2**63))), True),
    (orjson.dumps(sample(t=2**63)), False),  # beyond int64: clamped by the general path
    (b'{"t": 18446744073709551616}', False),  # orjson reads a float: a wrong_type
    (orjson.dumps([sample()] * MAX_SAMPLES_PER_MESSAGE), True),
    (orjson.dumps([sample()] * (MAX_SAMPLES_PER_MESSAGE + 1)), False),
    (b"[]", False),
    (b"[1]", False),
    (b'{"lat": 1}', False),  # no t
    (b'{"t": null}', False),
    (b'{"t": 1.0}', False),
    (b'{"t": "1"}', False),
    (b'{"t": true}', False),
    (orjson.dumps(sample(lat=_DROP, lon=_DROP))[:-1] + b', "lat": null, "lon": null}', False),
    (orjson.dumps(sample(locked=1)), False),
    (orjson.dumps(sample(soc_pct="50")), False),
    (orjson.dumps(sample(extra="x")), False),  # a field the protocol has not: read the general way
    (b'{"t": %d, "x": "\\ud800"}' % NOW, False),  # lone surrogate: malformed to orjson
    (b'{"t": %d, "x": "\xff"}' % NOW, False),
    (b'{"t": %d, "lat": NaN, "lon": 1}' % NOW, False),
    (b'{"t": %d, "lat": 1e400, "lon": 1}' % NOW, False),
    (b'{"t": %d, "lat": 01, "lon": 1}' % NOW, False),
    (b'{"t": %d, "lat": .5, "lon": 1}' % NOW, False),
    (b'{"t": %d}x' % NOW, False),
    (b'{"t": %d}{"t": %d}' % (NOW, NOW), False),
    (b'{"t": %d' % NOW, False),
    (b"\xef\xbb\xbf" + _GOOD, False),
    (b"\x0c" + _GOOD, False),
    (_GOOD + b" " * MAX_PAYLOAD_BYTES, False),  # too large, however well formed
    (cbor2.dumps(sample()), False),
    (b"", False),
]


@pytest.mark.parametrize("payload,typed", _EDGE_CASES, ids=range(len(_EDGE_CASES)))
def test_an_edge_case_decodes_alike_alone_and_beside_others(payload, typed):
    _, taken = decoded_alike(["bike-1"], [payload])
    assert (taken > 0) == typed
    neighbours = [_GOOD, cbor2.dumps(sample(t=NOW - 3)), b'{"t": %d, "lat": 200}' % NOW]
    decoded_alike(["car-2", "bike-1", "car-2", "bike-1"], [neighbours[0], payload, *neighbours[1:]])
    decoded_alike(["bike-1", "ghost-1", "$bad"], [payload, _GOOD, _GOOD])


@pytest.mark.parametrize(
    "content_type,typed",
    [
        ("application/json", True),
        ("application/cbor", False),
        ("application/senml+json", False),
        ("text/plain", False),
    ],
)
def test_a_content_type_other_than_json_takes_the_general_path(content_type, typed):
    _, taken = decoded_alike(
        ["bike-1", "car-2"], [_GOOD, _GOOD], content_types=[content_type, None]
    )
    assert taken == 1 + typed


def fuzz_corpus(seed: int, count: int) -> list:
    devices = Devices(valid=["bike-1"], fuzz=["car-2"], unknown=["ghost-1"])
    fuzzer = PayloadFuzzer(seed, devices, NOW, valid_share=0.3)
    return [fuzzer.next() for _ in range(count)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fuzz_corpus_decodes_alike_on_both_paths(seed):
    corpus = fuzz_corpus(seed, 1500)
    taken = 0
    for start in range(0, len(corpus), 100):
        part = corpus[start : start + 100]
        _, n = decoded_alike(
            [m.device_id for m in part],
            [m.payload for m in part],
            content_types=[m.content_type for m in part],
        )
        taken += n
        for m in part[:10]:  # and alone
            decoded_alike([m.device_id], [m.payload], content_types=[m.content_type])
    assert taken > 100  # the typed decoder met the corpus's native samples, not only refusals


_NUMBER = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -0.0, 5e-324, 3.4028235e38, 3.4028236e38, 1e308, 2**53 + 1]),
)
# Number texts as a device might write them: exponents, fractions, digits beyond float64's.
_NUMBER_TEXT = st.builds(
    lambda sign, whole, fraction, exponent: Raw(f"{sign}{whole}{fraction}{exponent}".encode()),
    st.sampled_from(["", "-"]),
    st.integers(0, 10**25),
    st.sampled_from(["", ".0", ".5", ".000001", ".12345678901234567890"]),
    st.sampled_from(["", "e0", "E+5", "e-7", "e38", "e308", "e-324", "e400"]),
)
_VALUE = st.one_of(_NUMBER, _NUMBER_TEXT, st.booleans(), st.none(), st.text(max_size=3))
_FIELDS = ("t", *_NUMBER_FIELDS, *STATE_COLUMNS)


@st.composite
def _samples(draw) -> dict:
    """Mostly what a device sends (so that the typed decoder takes many), now and then a field
    it would refuse or one out of range."""
    out = {}
    for name in _FIELDS:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            continue  # not reported
        if roll == 1:
            out[name] = draw(_VALUE)
        elif name == "t":
            out[name] = draw(st.integers(NOW - 10**10, NOW + 10**9))
        elif name in STATE_COLUMNS:
            out[name] = draw(st.booleans())
        else:
            out[name] = draw(st.one_of(st.floats(-500, 500), st.integers(-500, 500), _NUMBER_TEXT))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.one_of(_samples(), st.lists(_samples(), min_size=1, max_size=3)), max_size=6))
def test_any_sample_decodes_alike_on_both_paths(values):
    rng = random.Random(len(values))
    # json_bytes writes numbers in varied forms (exponents, trailing zeros) and big integers.
    payloads = [json_bytes(v, rng) for v in values]
    decoded_alike(["bike-1", "car-2"] * len(payloads), payloads + payloads)
