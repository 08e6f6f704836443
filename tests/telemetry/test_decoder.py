"""The columnar decoder: every reason, batches, encodings, agreement with the pydantic contract."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal

import cbor2
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from telemetry.batch import UNKNOWN, TelemetryBatch
from telemetry.decoder import (
    MAX_DETAIL_DEPTH,
    REASONS,
    TimeLimits,
    decode_events,
    decode_status,
    decode_telemetry,
    payload_encoding,
)
from telemetry.schema import Sample
from tests.decoder_samples import DROP as _DROP
from tests.decoder_samples import NOW, REGISTRY, sample


def decode(payloads, devices=None, **kw):
    devices = devices or ["bike-1"] * len(payloads)
    return decode_telemetry(devices, payloads, [NOW] * len(payloads), REGISTRY, now_ms=NOW, **kw)


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
    payloads = [
        orjson.dumps(samples[0]),
        cbor2.dumps(samples[1]),
        cbor2.dumps([samples[2]]),
        orjson.dumps(samples[:2]),
    ]
    r = decode(payloads)
    assert r.rejected == {}
    assert sorted(r.batch.time_ms.tolist()) == sorted(
        [NOW - 3000, NOW - 2999, NOW - 2998, NOW - 3000, NOW - 2999]
    )


def test_encoding_is_detected_by_content_type_then_first_byte():
    assert payload_encoding(b' {"t":1}') == "json"
    assert payload_encoding(cbor2.dumps({"t": 1})) == "cbor"
    assert payload_encoding(b"\xd9\xd9\xf7" + cbor2.dumps({"t": 1})) == "cbor"
    assert payload_encoding(b"hello") is None
    assert payload_encoding(b"", None) is None
    assert payload_encoding(b"\xa1", "application/json") == "json"


@pytest.mark.parametrize(
    "payload,reason",
    [
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
        (cbor2.dumps(sample(t=2**70)), "time_in_future"),
        (cbor2.dumps(sample(t=-(2**70))), "time_too_old"),
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
    ],
)
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


def test_a_device_id_with_a_trailing_newline_is_a_bad_topic_not_an_unknown_device():
    r = decode([orjson.dumps(sample())], devices=["bike-1\n"])
    assert r.rejected == {"bad_topic": 1}


def test_a_bad_sample_in_a_batch_does_not_take_the_others_with_it():
    batch = [sample(t=NOW - 3), sample(t=NOW - 2, soc_pct=101), sample(t=NOW - 1)]
    r = decode([orjson.dumps(batch)])
    assert r.rejected == {"soc_out_of_range": 1}
    assert r.batch.time_ms.tolist() == [NOW - 3, NOW - 1]


def test_a_payload_that_is_two_json_values_cannot_smuggle_samples():
    # '{...},{...}' is not one JSON value: no two samples of one message, batch or not.
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

_numbers = st.one_of(
    st.none(),
    st.integers(-500, 500),
    st.floats(-500, 500, allow_nan=False),
    st.sampled_from(["1", True, False, [1]]),
)
_bools = st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, "yes"]))
_sample_dicts = st.fixed_dictionaries(
    {
        "t": st.one_of(
            st.integers(NOW - 10_000, NOW + 10_000), st.sampled_from([None, "x", 1.5, True])
        )
    },
    optional={
        "lat": _numbers,
        "lon": _numbers,
        "speed_kmh": _numbers,
        "heading_deg": _numbers,
        "soc_pct": _numbers,
        "pack_v": _numbers,
        "aux_v": _numbers,
        "odometer_m": _numbers,
        "locked": _bools,
        "charging": _bools,
        "extra_field": st.text(max_size=3),
    },
)


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


# --- each message decodes on its own, whatever the batching -----------------------------------

A, B = "bike-1", "car-2"  # A crafts payloads, B is an honest device


def decoded_as_alone(devices, payloads):
    """Decode the messages as one batch and each alone; every message must get in the batch
    exactly what it gets alone: the same rows (in message order) and the same rejections."""
    received = [NOW - 10 * i for i in range(len(payloads))]
    whole = decode_telemetry(devices, payloads, received, REGISTRY, now_ms=NOW)
    alone = [
        decode_telemetry([d], [p], [r], REGISTRY, now_ms=NOW)
        for d, p, r in zip(devices, payloads, received)
    ]
    expected = TelemetryBatch.concat([a.batch for a in alone])
    for name, column in expected.columns().items():
        np.testing.assert_array_equal(getattr(whole.batch, name), column, err_msg=name)
    assert whole.rejected == dict(sum((Counter(a.rejected) for a in alone), Counter()))
    return whole


def events_decoded_as_alone(devices, payloads):
    """The same for device events."""
    whole, rejected, _ = decode_events(devices, payloads, REGISTRY, now_ms=NOW)
    alone = [decode_events([d], [p], REGISTRY, now_ms=NOW) for d, p in zip(devices, payloads)]
    assert whole == [e for events, _, _ in alone for e in events]
    assert rejected == dict(sum((Counter(r) for _, r, _ in alone), Counter()))
    return whole, rejected


FIX_A = {"t": NOW - 3000, "lat": 48.137, "lon": 11.575}
LATER_A = {"t": NOW - 1000, "lat": 48.138, "lon": 11.576}
FORGED = {"t": NOW - 2000, "lat": 1.5, "lon": 2.5}  # the fix A wants to see stored as B's
REAL_B = {"t": NOW - 2500, "lat": 52.52, "lon": 13.405, "soc_pct": 60}
REAL_B2 = {"t": NOW - 2400, "lat": 52.521, "lon": 13.406, "soc_pct": 59}


def opened(value: dict) -> bytes:
    """`value` as JSON, left open inside a list field: what follows lands in that list."""
    return orjson.dumps(value)[:-1] + b',"x":[0'


# Each: the devices of the messages, their payloads, and how many of A's do not parse alone.
# Joined into one JSON document, A's fragments make as many values as there are JSON messages:
# a joined parse handed out one value per message, shifted, so that B got A's forged fix and B's
# real sample vanished (or became A's), with no rejection counted.
FORGERIES = {
    "B's sample swallowed, A's fix in its place": (
        [A, B, A],
        [
            orjson.dumps(FIX_A) + b"," + opened(FORGED),
            orjson.dumps(REAL_B),
            b" 0]}," + orjson.dumps(LATER_A),
        ],
        2,
    ),
    "B's batch swallowed": (
        [A, B, A],
        [
            orjson.dumps(FIX_A) + b"," + opened(FORGED),
            orjson.dumps([REAL_B, REAL_B2]),
            b" 0]}," + orjson.dumps(LATER_A),
        ],
        2,
    ),
    "B's sample handed to A, A's fix to B": (
        [A, A, B, A, A],
        [
            orjson.dumps(FIX_A),
            orjson.dumps(FIX_A) + b"," + orjson.dumps(FORGED),
            orjson.dumps(REAL_B),
            b" " + opened(LATER_A),
            b" 0]}",
        ],
        3,
    ),
    "fragments in whitespace, B between honest messages of A": (
        [A, A, B, A, A],
        [
            orjson.dumps(FIX_A),
            b"\n" + orjson.dumps(FIX_A) + b",\t" + opened(FORGED),
            orjson.dumps(REAL_B),
            b"\r\n 0 ] } , " + orjson.dumps(LATER_A),
            orjson.dumps(LATER_A),
        ],
        2,
    ),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_one_device_cannot_forge_or_hide_another_devices_samples(name):
    devices, payloads, crafted = FORGERIES[name]
    r = decoded_as_alone(devices, payloads)
    of_b = r.batch.vehicle == REGISTRY[B]
    (sent_by_b,) = [orjson.loads(p) for p, d in zip(payloads, devices) if d == B]
    sent_by_b = sent_by_b if type(sent_by_b) is list else [sent_by_b]
    assert r.batch.time_ms[of_b].tolist() == [s["t"] for s in sent_by_b]
    assert r.batch.lat[of_b].tolist() == [s["lat"] for s in sent_by_b]
    assert FORGED["lat"] not in r.batch.lat.tolist()
    assert r.rejected == {"malformed_json": crafted}, "each crafted message is counted"


def test_one_device_cannot_forge_another_devices_event():
    crafted = [
        orjson.dumps({"t": NOW - 3000, "type": "tamper"})
        + b","
        + opened({"t": NOW - 2000, "type": "crash", "detail": {"by": "A"}}),
        orjson.dumps({"t": NOW - 2500, "type": "door_open"}),
        b" 0]}," + orjson.dumps({"t": NOW - 1000, "type": "tamper"}),
    ]
    events, rejected = events_decoded_as_alone([A, B, A], crafted)
    assert [(e.vehicle, e.type) for e in events] == [(REGISTRY[B], "door_open")]
    assert rejected == {"malformed_json": 2}


# t = 2**62 beside a message without t, or a number beyond float64 beside a string, once took
# the slow path of their column and got another reason than alone. The rule, whatever is beside:
# any integer t is an integer (one far off is in the future or too old); a number float64 cannot
# hold, or one finite in float64 but not in its float32 column, is a wrong_type, unless a range
# check of its field fails first.
@pytest.mark.parametrize(
    "payload,reason",
    [
        (orjson.dumps(sample(t=2**62)), "time_in_future"),
        (orjson.dumps(sample(t=2**63 - 1)), "time_in_future"),
        (orjson.dumps(sample(t=-(2**62))), "time_too_old"),
        (orjson.dumps(sample(t=-(2**63))), "time_too_old"),
        (cbor2.dumps(sample(t=2**64)), "time_in_future"),
        (cbor2.dumps(sample(t=-(2**70))), "time_too_old"),
        (orjson.dumps(sample(t=2**62, lat=123.0)), "lat_out_of_range"),
        (cbor2.dumps(sample(lat=2**1010)), "lat_out_of_range"),
        (cbor2.dumps(sample(lat=2**1024 - 2**970 - 1)), "lat_out_of_range"),  # float64's largest
        (cbor2.dumps(sample(lat=2**1024 - 2**970)), "wrong_type"),  # rounds to infinity
        (cbor2.dumps(sample(odometer_m=2**1010)), None),  # float64 holds it
        (cbor2.dumps(sample(pack_v=2**1010)), "wrong_type"),  # float32 does not
        (cbor2.dumps(sample(pack_v=10**400)), "wrong_type"),
    ],
)
@pytest.mark.parametrize(
    "neighbour",
    [
        orjson.dumps(sample(t=NOW - 7)),
        orjson.dumps(sample(t=_DROP)),
        cbor2.dumps(
            sample(t=2**70, lat="1", lon=10**400, pack_v="1", odometer_m=10**400, locked=1)
        ),
    ],
    ids=["good", "no_t", "every_column_on_its_slow_path"],
)
def test_a_samples_reason_depends_on_the_sample_alone(payload, reason, neighbour):
    alone = decode([payload])
    assert alone.rejected == ({reason: 1} if reason else {})
    decoded_as_alone(["bike-1", "car-2"], [payload, neighbour])
    decoded_as_alone(["car-2", "bike-1"], [neighbour, payload])


_JSON_EDGE_T = [
    NOW - 1000,
    NOW,
    2**62 - 1,
    2**62,
    -(2**62),
    2**63 - 1,
    -(2**63),
    None,
    "1",
    1.5,
    True,
]
_EDGE_T = st.sampled_from([*_JSON_EDGE_T, 2**63, 2**64, -(2**70)])
_EDGE_NUMBERS = st.sampled_from(
    [
        None,
        7,
        52.5,
        -0.0,
        123.0,
        1e39,
        -5e-282,
        2**53 + 1,
        2**64,
        2**1010,
        2**1024 - 2**970 - 1,
        2**1024 - 2**970,
        10**400,
        float("nan"),
        float("inf"),
        "1",
        True,
        [1],
    ]
)
_EDGE_BOOLS = st.sampled_from([None, True, False, 0, 1, "yes"])
_nested = st.recursive(
    st.none() | st.booleans() | st.integers(-9, 9) | st.sampled_from(["a,b"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2)
    ),
    max_leaves=6,
)
_edge_dicts = st.fixed_dictionaries(
    {"t": _EDGE_T},
    optional={
        "lat": _EDGE_NUMBERS,
        "lon": _EDGE_NUMBERS,
        "soc_pct": _EDGE_NUMBERS,
        "pack_v": _EDGE_NUMBERS,
        "odometer_m": _EDGE_NUMBERS,
        "locked": _EDGE_BOOLS,
        "charging": _EDGE_BOOLS,
        "x": _nested,
        "type": st.sampled_from(["crash", "door_open", "Crash", "a\x00"]),
        "detail": st.one_of(
            st.dictionaries(st.sampled_from(["a", "b"]), _nested, max_size=2),
            st.sampled_from([{"n": 2**64}, {"s": "\x00"}, {"b": b"x"}, [1]]),
        ),
    },
)
_values = st.one_of(
    _edge_dicts,
    st.lists(_edge_dicts, min_size=1, max_size=3),
    st.sampled_from([1, [], [1, 2], "s", None]),
)


def _json(value) -> bytes | None:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a byte string: CBOR only
        return None


@st.composite
def _fragments(draw) -> list[bytes]:
    """JSON values cut at commas (theirs or inside them) into as many payloads as there are
    values: joined with commas, the payloads are those values again."""
    texts = [t for t in map(_json, draw(st.lists(_values, min_size=2, max_size=4))) if t]
    text = b",".join(texts)
    commas = [k for k, c in enumerate(text) if c == ord(",")]
    cuts = (
        sorted(
            draw(
                st.lists(
                    st.sampled_from(commas),
                    min_size=len(texts) - 1,
                    max_size=len(texts) - 1,
                    unique=True,
                )
            )
        )
        if commas
        else []
    )
    pieces = [text[a + 1 : b] for a, b in zip([-1, *cuts], [*cuts, len(text)])]
    return [p if p[:1] in (b"{", b"[") else b" " + p for p in pieces if p]


@st.composite
def _message_lists(draw) -> tuple[list[str], list[bytes]]:
    payloads: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["json", "cbor", "fragments", "garbage"]))
        if kind == "fragments":
            payloads += draw(_fragments())
        elif kind == "garbage":
            payloads.append(draw(st.sampled_from([b"hello", b'{"t": 1', b"\xa2\x61t", b""])))
        else:
            value = draw(_values)
            payloads.append(kind == "json" and _json(value) or cbor2.dumps(value))
    devices = draw(
        st.lists(st.sampled_from([A, B, "ghost-9"]), min_size=len(payloads), max_size=len(payloads))
    )
    return devices, payloads


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(_message_lists())
def test_each_message_decodes_in_a_batch_as_it_decodes_alone(messages):
    devices, payloads = messages
    decoded_as_alone(devices, payloads)
    events_decoded_as_alone(devices, payloads)


# --- device events: nothing the store cannot write ---------------------------------------------


def event(**over) -> dict:
    e = {"t": NOW - 1000, "type": "crash", "detail": {"g": 3.5, "axis": "z"}}
    e.update(over)
    return e


def json_event(detail: bytes) -> bytes:
    """A JSON event around a detail already in JSON (orjson writes no detail deeper than the
    limit, whose event is one level deeper)."""
    return b'{"t": %d, "type": "crash", "detail": %s}' % (NOW - 1000, detail)


def json_of(detail) -> bytes:
    return json_event(orjson.dumps(detail))


def cbor_event(detail) -> bytes:
    return cbor2.dumps(event(detail=detail))


def nested(depth: int) -> dict:
    """A detail nested `depth` levels deep (the detail object itself is level 1)."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def shared(detail) -> bytes:
    """A CBOR event whose detail is written with shared references (tags 28/29)."""
    fields = b"".join(map(cbor2.dumps, ["t", NOW - 1000, "type", "crash", "detail"]))
    return b"\xa3" + fields + cbor2.dumps(detail, value_sharing=True)


def shared_bomb() -> bytes:
    """A CBOR event of about a kilobyte whose detail, shared references expanded, holds 2**40
    strings of a thousand characters."""
    value: list = ["y" * 1000]
    for _ in range(40):
        value = [value, value]
    return shared({"k": value})


def cyclic() -> bytes:
    loop: list = []
    loop.append(loop)
    return shared({"k": loop})


DEEPER_THAN_THE_LIMIT = b'{"a":' * MAX_DETAIL_DEPTH + b"{}" + b"}" * MAX_DETAIL_DEPTH

UNSTORABLE_EVENTS = {  # the event, and what the rejection's detail says
    "a CBOR byte string": (cbor_event({"raw": b"\x01\x02"}), "b'\\x01"),
    "an integer beyond 64 bits": (cbor_event({"n": 2**64}), "beyond 64-bit"),
    "a negative integer beyond 64 bits": (cbor_event({"n": -(2**63) - 1}), "beyond 64-bit"),
    "a JSON integer beyond 64 bits": (json_event(b'{"n": 18446744073709551616}'), "beyond 64-bit"),
    "a float beyond 64-bit integers": (json_of({"f": -1e19}), "beyond 64-bit"),
    "a CBOR NaN": (cbor_event({"f": float("nan")}), "not finite"),
    "a CBOR infinity": (cbor_event({"f": [float("-inf")]}), "not finite"),
    "JSON nested too deep": (json_event(DEEPER_THAN_THE_LIMIT), "nested"),
    "CBOR nested too deep": (cbor_event(nested(MAX_DETAIL_DEPTH + 1)), "nested"),
    "a CBOR map key that is not text": (cbor_event({"a": {1: 2}}), "key"),
    "U+0000 in a JSON string": (json_of({"s": "a\x00b"}), "with U+0000"),
    "U+0000 in a JSON key": (json_of({"a\x00": 1}), "with U+0000"),
    "U+0000 in a CBOR string": (cbor_event({"s": ["\x00"]}), "with U+0000"),
    "U+0000 in a CBOR key": (cbor_event({"s": {"\x00": 1}}), "with U+0000"),
    "a CBOR date": (cbor_event({"at": datetime.now(UTC)}), "datetime.datetime("),
    "a CBOR decimal fraction": (cbor_event({"d": Decimal("1.1")}), "Decimal('1.1')"),
    "CBOR undefined": (cbor_event({"u": cbor2.undefined}), "undefined"),
    "an unknown CBOR tag": (cbor_event({"x": cbor2.CBORTag(4000, 1)}), "CBORTag(4000, 1)"),
    "CBOR shared references expanding beyond a message": (shared_bomb(), "expanded"),
    "a CBOR cycle": (cyclic(), "nested"),
}


@pytest.mark.parametrize("name", UNSTORABLE_EVENTS)
def test_an_event_whose_detail_cannot_be_stored_is_rejected_with_its_reason(name):
    payload, why = UNSTORABLE_EVENTS[name]
    good = orjson.dumps(event(t=NOW - 5))
    events, rejected, problems = decode_events(
        ["bike-1"] * 3, [good, payload, good], REGISTRY, now_ms=NOW
    )
    assert rejected == {"bad_structure": 1}
    assert len(events) == 2, "the good events around it are kept"
    assert problems[0].detail.startswith("detail") and why in problems[0].detail, problems[0]


@pytest.mark.parametrize("dumps", [orjson.dumps, cbor2.dumps], ids=["json", "cbor"])
def test_text_with_u0000_in_an_event_type_is_a_wrong_type(dumps):
    _, rejected, _ = decode_events(
        ["bike-1"], [dumps(event(type="crash\x00"))], REGISTRY, now_ms=NOW
    )
    assert rejected == {"wrong_type": 1}


@pytest.mark.parametrize("encode", [json_of, cbor_event], ids=["json", "cbor"])
def test_details_at_the_limits_are_kept_and_serialise(encode):
    details = [
        nested(MAX_DETAIL_DEPTH),
        {"n": [2**64 - 1, -(2**63), 1.8e19, -9.2e18, 5e-324]},
        {"s": "\u00e9\U0001f6b2\\u0000", "": None, "b": [True, False, []]},
    ]
    events, rejected, _ = decode_events(
        ["bike-1"] * len(details), list(map(encode, details)), REGISTRY, now_ms=NOW
    )
    assert rejected == {}
    assert [e.detail for e in events] == details
    for e in events:
        assert orjson.loads(orjson.dumps(e.detail)) == e.detail  # what the store writes


_any_detail_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=3)
    | st.binary(max_size=2)
    | st.sampled_from([cbor2.undefined, Decimal("1.5")]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=2) | st.integers(-2, 2), inner, max_size=3)
    ),
    max_leaves=10,
)


def _texts(value):
    """Every text in a detail, map keys included."""
    if type(value) is str:
        yield value
    elif type(value) is dict:
        for key, item in value.items():
            yield from _texts(key)
            yield from _texts(item)
    elif type(value) is list:
        for item in value:
            yield from _texts(item)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.text(max_size=2), _any_detail_values, max_size=3))
def test_every_detail_decode_events_accepts_can_be_stored(detail):
    events, _, _ = decode_events(
        ["bike-1"], [cbor2.dumps(event(detail=detail))], REGISTRY, now_ms=NOW
    )
    for e in events:
        stored = orjson.loads(orjson.dumps(e.detail))  # the store's serialisation, and back
        assert stored == e.detail
        assert not any("\x00" in text for text in _texts(e.detail)), "PostgreSQL refuses U+0000"


# --- presence -----------------------------------------------------------------------------------

LAST_STORABLE_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@pytest.mark.parametrize(
    "t,ok",
    [
        (NOW, True),
        (None, True),
        (0, True),
        (LAST_STORABLE_MS, True),
        (LAST_STORABLE_MS + 1, False),
        (2**62, False),
        (-1, False),
    ],
)
@pytest.mark.parametrize("dumps", [orjson.dumps, cbor2.dumps], ids=["json", "cbor"])
def test_a_status_time_must_be_one_the_store_can_hold(t, ok, dumps):
    status = decode_status(dumps({"online": True, "t": t, "fw": "1.4.2"}))
    assert (status is not None) is ok
    if ok and t is not None:
        assert datetime.fromtimestamp(t / 1000, UTC).year <= 9999  # the store converts it


# --- what a device sent, shown in a rejection ---------------------------------------------------
# Found by benchmarks/fuzz.py: the rejection's detail was the repr() of the device's value, which
# raises for an integer of more than 4,300 digits and for a list nested a thousand deep, and
# expands CBOR shared references (a few hundred bytes standing for millions of values) in full:
# the message failed its whole batch and was quarantined, or held the gateway for seconds.


def deep_list_json(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def expanding(levels: int) -> list:
    """2**levels values once expanded; with value sharing, a few bytes a level in CBOR."""
    value: list = [1, 2]
    for _ in range(levels):
        value = [value, value]
    return value


HUGE = 10**6000  # a CBOR bignum of 2.5 kB

SHOWN_IN_REJECTIONS = {  # the message, its reason, what its detail shows
    "a coordinate of 6,000 digits": (
        cbor2.dumps(sample(lat=HUGE)),
        "wrong_type",
        "<an integer of 19932 bits>",
    ),
    "a time of 6,000 digits": (cbor2.dumps(sample(t=HUGE)), "time_in_future", "<an integer of"),
    "a time of minus 6,000 digits": (
        cbor2.dumps(sample(t=-HUGE)),
        "time_too_old",
        "<an integer of",
    ),
    "a list nested 1,020 deep": (
        b'{"t": %d, "soc_pct": %s}' % (NOW - 1000, deep_list_json(1020)),
        "wrong_type",
        "soc_pct=<a list of 1 items>",
    ),
    "shared references to a million values": (
        cbor2.dumps(sample(pack_v=expanding(20)), value_sharing=True),
        "wrong_type",
        "pack_v=<a list of 2 items>",
    ),
}


@pytest.mark.parametrize("name", SHOWN_IN_REJECTIONS)
def test_a_rejected_sample_shows_what_the_device_sent_in_short(name):
    payload, reason, detail = SHOWN_IN_REJECTIONS[name]
    # A content type: a CBOR value with shared references starts with a tag, not a map.
    r = decode(
        [orjson.dumps(sample(t=NOW - 5)), payload],
        content_types=[None, None if payload[:1] in b"{[" else "application/cbor"],
    )
    assert r.rejected == {reason: 1}
    assert len(r.batch) == 1, "the good message beside it is kept"
    [problem] = r.problems
    assert detail in problem.detail and len(problem.detail) < 200, problem.detail


EVENTS_SHOWN_IN_REJECTIONS = {
    "an event time of 6,000 digits": (
        cbor2.dumps(event(t=HUGE)),
        "time_in_future",
        "t=<an integer of",
    ),
    "a detail number of 6,000 digits": (
        cbor_event({"n": HUGE}),
        "bad_structure",
        "beyond 64-bit integers (<an integer of",
    ),
    "a detail key of 6,000 digits": (
        cbor_event({"a": {HUGE: 1}}),
        "bad_structure",
        "not text (<an integer of",
    ),
}


@pytest.mark.parametrize("name", EVENTS_SHOWN_IN_REJECTIONS)
def test_a_rejected_event_shows_what_the_device_sent_in_short(name):
    payload, reason, detail = EVENTS_SHOWN_IN_REJECTIONS[name]
    events, rejected, problems = decode_events(
        ["bike-1"] * 2, [orjson.dumps(event(t=NOW - 5)), payload], REGISTRY, now_ms=NOW
    )
    assert rejected == {reason: 1} and len(events) == 1
    assert detail in problems[0].detail and len(problems[0].detail) < 200, problems[0].detail
