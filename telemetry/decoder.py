"""Decode many raw telemetry payloads into one validated columnar batch.

Each payload is parsed on its own; type and range checks run on whole columns with numpy. Every
rejected sample gets exactly one reason of REASONS, the one it would get decoded alone.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from operator import attrgetter
from typing import Annotated

import cbor2
import msgspec
import numpy as np
import orjson
from pydantic import ValidationError

from telemetry import senml
from telemetry._shown import shown
from telemetry.batch import FLOAT_COLUMNS, STATE_COLUMNS, DeviceEvent, TelemetryBatch
from telemetry.dialect import Dialect, PayloadError
from telemetry.schema import (
    HEADING_RANGE,
    LAT_RANGE,
    LON_RANGE,
    MAX_PAYLOAD_BYTES,
    MAX_SAMPLES_PER_MESSAGE,
    SOC_RANGE,
    SPEED_RANGE,
    DeviceEventPayload,
    Status,
)
from telemetry.topics import is_device_id

# Stable label values of fleetgate_samples_rejected_total{reason=...}; docs/protocol.md explains
# each. The first group rejects a whole message before its samples are read and counts one per
# message; the second counts one per sample.
MESSAGE_REASONS = (
    "payload_too_large",
    "unknown_encoding",
    "malformed_json",
    "malformed_cbor",
    "bad_structure",
    "bad_topic",
    "unknown_device",
)
SAMPLE_REASONS = (
    "missing_field",
    "wrong_type",
    "lat_out_of_range",
    "lon_out_of_range",
    "soc_out_of_range",
    "speed_out_of_range",
    "heading_out_of_range",
    "time_in_future",
    "time_too_old",
)
REASONS = MESSAGE_REASONS + SAMPLE_REASONS

_NUMBER_TYPES = frozenset((int, float, type(None)))
_FLOAT_OR_INT = frozenset((int, float))
# A number field a sample does not report, as its column reads it: NaN, told apart by identity
# from a NaN the device sent.
_NOT_REPORTED = float("nan")
_BOOL_TYPES = frozenset((bool, type(None)))
_TRISTATE = {None: -1, False: 0, True: 1}
_JSON_START = frozenset(b"{[ \t\r\n")
# Media types that decide the encoding (MQTT 5 content type; CoAP content-formats 50, 60, 110
# and 112 arrive here as these names). SenML packs are parsed as JSON or CBOR, then resolved into
# the protocol's samples by telemetry.senml.
_MEDIA_TYPES = {
    "application/json": "json",
    "application/cbor": "cbor",
    "application/senml+json": "senml+json",
    "application/senml+cbor": "senml+cbor",
}
_SYNTAX = {"json": "json", "cbor": "cbor", "senml+json": "json", "senml+cbor": "cbor"}
_NUMBER_FIELDS = ("lat", "lon", *FLOAT_COLUMNS, "odometer_m")
# Checked in this order: a sample rejected for the first failing check only.
_RANGES = (
    ("lat", LAT_RANGE, "lat_out_of_range"),
    ("lon", LON_RANGE, "lon_out_of_range"),
    ("soc_pct", SOC_RANGE, "soc_out_of_range"),
    ("speed_kmh", SPEED_RANGE, "speed_out_of_range"),
    ("heading_deg", HEADING_RANGE, "heading_out_of_range"),
)
_INT64 = (-(2**63), 2**63 - 1)
# The smallest integer that float64 rounds to infinity: from here on a number is a wrong_type.
_FLOAT64_OVERFLOW = 2**1024 - 2**970

# What the store can write as an event's detail (jsonb, serialised by orjson) and read back: a
# detail is nested at most this deep (orjson's limit), its numbers lie in 64-bit integer range
# (orjson's; jsonb gives a whole float back as an integer), its texts hold no U+0000 (jsonb's).
MAX_DETAIL_DEPTH = 254
_DETAIL_NUMBERS = (-(2**63), 2**64 - 1)


@dataclass(frozen=True, slots=True)
class TimeLimits:
    """How far a sample's device time may lie from the gateway's clock."""

    max_future_ms: int = 5 * 60_000
    max_age_ms: int = 30 * 86_400_000


@dataclass(slots=True)
class Problem:
    """One rejection, kept for the log (a bounded number per batch)."""

    device_id: str
    reason: str
    detail: str


@dataclass(slots=True)
class DecodeResult:
    batch: TelemetryBatch
    rejected: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def payload_encoding(payload: bytes, content_type: str | None = None) -> str | None:
    """'json', 'cbor', 'senml+json', 'senml+cbor' or None: by content type, else by the first
    byte (docs/protocol.md; SenML only by its content type)."""
    if content_type:
        enc = _MEDIA_TYPES.get(content_type.split(";", 1)[0].strip().lower())
        if enc is not None:
            return enc
    if not payload:
        return None
    first = payload[0]
    if first in _JSON_START:
        return "json"
    if 0x80 <= first <= 0xBF or payload.startswith(b"\xd9\xd9\xf7"):
        return "cbor"
    return None


def parse_payload(payload: bytes, encoding: str) -> object:
    """Parse one payload. Raises what the codec raises on garbage (orjson: ValueError; cbor2:
    several types, not all ValueError), so callers catch Exception."""
    if _SYNTAX[encoding] == "json":
        return orjson.loads(payload)
    return cbor2.loads(payload)


class _Rejections:
    def __init__(self, device_ids: Sequence[str], max_problems: int) -> None:
        self.counts: dict[str, int] = {}
        self.problems: list[Problem] = []
        self._device_ids = device_ids
        self._max = max_problems

    def of_messages(self, indices: Sequence[int]) -> _Rejections:
        """The same counts and problems, for a subset of the messages (index j: indices[j])."""
        view = _Rejections([self._device_ids[i] for i in indices], self._max)
        view.counts, view.problems = self.counts, self.problems
        return view

    def add(self, reason: str, msg: int, detail: str, count: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        if len(self.problems) < self._max:
            self.problems.append(Problem(self._device_ids[msg], reason, detail))


def decode_telemetry(
    device_ids: Sequence[str],
    payloads: Sequence[bytes],
    received_ms: Sequence[int] | np.ndarray,
    registry: Mapping[str, int],
    *,
    now_ms: int,
    limits: TimeLimits = TimeLimits(),
    content_types: Sequence[str | None] | None = None,
    max_problems: int = 20,
    dialects: Sequence[Dialect | None] | None = None,
    fast_json: bool = True,
) -> DecodeResult:
    """Decode the payloads of many telemetry messages into one batch of valid samples.

    device_ids[i] is the device id from message i's topic, registry maps a device id to its
    vehicles.id. Invalid samples are left out of the batch and counted by reason. dialects[i],
    where given and not None, is the payload dialect message i arrived in (telemetry.dialect):
    its samples are mapped onto the protocol's and then checked as native ones are.

    Native JSON samples take a typed decoder straight to their fields (_parse_native_json);
    every other payload, and any the typed decoder refuses, the general path. Both give the same
    columns and the same rejections; fast_json=False sends every payload the general way (the
    tests compare the two).
    """
    rejections = _Rejections(device_ids, max_problems)
    received = np.asarray(received_ms, dtype=np.int64)
    if fast_json:
        native, native_owner, rest = _parse_native_json(
            device_ids, payloads, registry, content_types, dialects
        )
    else:
        native, native_owner, rest = [], [], None
    if rest is None:  # every message the general way
        items, owner = _parse_messages(
            device_ids,
            payloads,
            registry,
            content_types,
            rejections,
            senml_received_ms=received,
            dialects=dialects,
        )
    elif rest:
        items, owner = _parse_messages(
            [device_ids[i] for i in rest],
            [payloads[i] for i in rest],
            registry,
            content_types and [content_types[i] for i in rest],
            rejections.of_messages(rest),
            senml_received_ms=received[rest],
            dialects=dialects and [dialects[i] for i in rest],
        )
        owner = [rest[j] for j in owner]
    else:
        items, owner = [], []
    vehicle_of_msg = np.fromiter(
        map(registry.get, device_ids, repeat(-1, len(device_ids))), np.int32, len(device_ids)
    )
    batch = _columns(
        _NativeRows(native, native_owner, payloads),
        items,
        owner,
        vehicle_of_msg,
        received,
        now_ms,
        limits,
        rejections,
    )
    return DecodeResult(batch, rejections.counts, rejections.problems)


# --- the fast path: native JSON samples decoded straight into typed fields ---------------------

# A native JSON sample the fast path takes whole: the protocol's fields and no other, each a
# number or a boolean as telemetry.schema.Sample wants it (null not taken), t within int64.
# msgspec refuses anything else and such a payload takes the general path, which says what is
# wrong with it. A default is what a column reads for a field not reported (NaN; -1 for a
# state): JSON cannot write NaN, so no value a device sent reads as one. Not tracked by the
# cyclic garbage collector: it holds numbers only.
_NativeSample = msgspec.defstruct(
    "_NativeSample",
    [
        ("t", Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]),
        *((name, float, _NOT_REPORTED) for name in _NUMBER_FIELDS),
        *((name, bool, -1) for name in STATE_COLUMNS),
    ],
    forbid_unknown_fields=True,
    gc=False,
)
_decode_native_sample = msgspec.json.Decoder(_NativeSample).decode
_decode_native = msgspec.json.Decoder(
    _NativeSample
    | Annotated[list[_NativeSample], msgspec.Meta(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]
).decode
_NATIVE_START = (b"{", b"[")
_native_time = attrgetter("t")


def _parse_native_json(device_ids, payloads, registry, content_types, dialects):
    """The native JSON samples the typed decoder takes, the message index of each, and the
    indices of the messages left to the general path (those of unknown devices, too large, in
    another encoding or dialect, or refused by the typed decoder: the general path counts each
    under its reason, or takes it).

    The common batch, every message a known device's single native JSON sample, is decoded in
    one C-level pass; a batch with any other message goes message by message."""
    n = len(payloads)
    if (
        dialects is None
        and (not content_types or content_types.count(None) == n)
        and all(map(registry.__contains__, device_ids))
        and max(map(len, payloads), default=0) <= MAX_PAYLOAD_BYTES
    ):
        try:
            return list(map(_decode_native_sample, payloads)), list(range(n)), []
        except Exception:  # msgspec.DecodeError, or UnicodeDecodeError on bytes not UTF-8
            pass
    samples: list = []
    owner: list[int] = []
    rest: list[int] = []
    if not content_types:
        content_types = repeat(None, n)
    for i, (device_id, payload, content_type) in enumerate(
        zip(device_ids, payloads, content_types)
    ):
        if (
            payload[:1] in _NATIVE_START
            and (content_type is None or content_type == "application/json")
            and (dialects is None or dialects[i] is None)
            and device_id in registry
            and len(payload) <= MAX_PAYLOAD_BYTES
        ):
            try:
                value = _decode_native(payload)
            except Exception:  # refused, as above: the general path says why
                rest.append(i)
                continue
            if type(value) is list:
                samples += value
                owner += repeat(i, len(value))
            else:
                samples.append(value)
                owner.append(i)
        else:
            rest.append(i)
    if not samples:
        return [], [], None  # every message the general way, without taking subsets
    return samples, owner, rest


@dataclass(slots=True)
class _NativeRows:
    """The fast path's samples, with what it takes to show one as the device sent it."""

    samples: list
    owner: list[int]
    payloads: Sequence[bytes]

    def columns(self) -> _RawColumns:
        """The samples as raw columns: nothing to reject, the typed decoder took each whole."""
        n, width = len(self.samples), len(_NativeSample.__struct_fields__)
        # One float64 row per sample (t too, read exactly apart): a C-level pass over tuples.
        flat = np.fromiter(
            chain.from_iterable(map(msgspec.structs.astuple, self.samples)), np.float64, n * width
        ).reshape(n, width)
        numbers = {name: flat[:, 1 + k] for k, name in enumerate(_NUMBER_FIELDS)}
        first_state = 1 + len(_NUMBER_FIELDS)
        states = {
            name: flat[:, first_state + k].astype(np.int8) for k, name in enumerate(STATE_COLUMNS)
        }
        time_ms = np.fromiter(map(_native_time, self.samples), np.int64, n)
        return _RawColumns(time_ms, numbers, states, _Verdicts(n))

    def as_sent(self, k: int) -> dict:
        """Sample k as the general path reads it: its message parsed again (for the log)."""
        msg = self.owner[k]
        value = orjson.loads(self.payloads[msg])
        return value if type(value) is dict else value[k - bisect_left(self.owner, msg)]


def _parse_messages(  # noqa: C901 (the common path inline: see below)
    device_ids,
    payloads,
    registry,
    content_types,
    rejections,
    senml_received_ms: np.ndarray | None = None,
    dialects: Sequence[Dialect | None] | None = None,
):
    """Parse every message on its own; returns the sample objects and the message index of each.

    Never one parse for several payloads: joined, the fragments of one device's messages could
    combine with another device's message into values handed to the wrong messages. SenML packs
    become samples; their relative times count from the message's receipt (senml_received_ms[i],
    RFC 8428's "now"). Where that is None (device events) a SenML message is a bad_structure."""
    # One loop with the common path inline: a call per message would show in the ingest rate.
    items: list[dict] = []
    owner: list[int] = []
    if not content_types:
        content_types = [None] * len(payloads)
    loads = orjson.loads
    for i, payload in enumerate(payloads):
        device_id = device_ids[i]
        if device_id not in registry:
            _reject_device(rejections, i, device_id)
            continue
        if len(payload) > MAX_PAYLOAD_BYTES:
            rejections.add("payload_too_large", i, f"{len(payload)} bytes")
            continue
        if payload[:1] == b"{" and content_types[i] is None and dialects is None:
            # A native JSON sample without a content type, most telemetry: what
            # payload_encoding and parse_payload would do, without their calls.
            try:
                value = loads(payload)
            except orjson.JSONDecodeError as exc:
                rejections.add("malformed_json", i, str(exc)[:200])
                continue
            if type(value) is dict:
                items.append(value)
                owner.append(i)
                continue
        enc = payload_encoding(payload, content_types[i])
        if enc is None:
            rejections.add("unknown_encoding", i, f"first byte {payload[:1]!r}")
            continue
        try:
            value = parse_payload(payload, enc)
        except Exception as exc:  # cbor2 raises several types for garbage input
            rejections.add(f"malformed_{_SYNTAX[enc]}", i, str(exc)[:200])
            continue
        if dialects is not None or enc.startswith("senml"):
            value = _translated(value, enc, i, senml_received_ms, dialects, rejections)
        if type(value) is dict:
            items.append(value)
            owner.append(i)
        elif value is not _REJECTED:
            _add_batch(value, i, items, owner, rejections)
    return items, owner


_REJECTED = object()  # a message already counted under its reason


def _reject_device(rejections: _Rejections, i: int, device_id: str | None) -> None:
    """An unregistered device, told apart from a topic that names no device at all."""
    if is_device_id(device_id or ""):
        rejections.add("unknown_device", i, f"device {device_id!r} is not registered")
    else:
        rejections.add("bad_topic", i, f"invalid device id {device_id!r} in topic")


def _senml_samples(pack, i: int, received_ms: np.ndarray | None, rejections: _Rejections):
    """The sample objects of message i's SenML pack, or _REJECTED (counted) if it has none."""
    try:
        if received_ms is None:
            raise senml.SenmlError("SenML carries telemetry samples only")
        return senml.to_samples(pack, int(received_ms[i]))
    except senml.SenmlError as exc:
        rejections.add("bad_structure", i, str(exc)[:200])
        return _REJECTED


def _translated(value, enc: str, i: int, senml_received_ms, dialects, rejections: _Rejections):
    """Message i's SenML pack, or payload in a dialect, as protocol sample objects, or
    _REJECTED (counted); a native payload as it is."""
    if enc.startswith("senml"):
        return _senml_samples(value, i, senml_received_ms, rejections)
    dialect = dialects[i]
    if dialect is None:
        return value
    try:
        return dialect.to_samples(value)
    except PayloadError as exc:
        rejections.add("bad_structure", i, str(exc)[:200])
        return _REJECTED


def _add_batch(value, i: int, items: list[dict], owner: list[int], rejections) -> None:
    """Message i's value where it is not a single sample: a batch's samples, or a rejection."""
    if (
        type(value) is list
        and 0 < len(value) <= MAX_SAMPLES_PER_MESSAGE
        and all(type(v) is dict for v in value)
    ):
        items.extend(value)
        owner.extend([i] * len(value))
        return
    what = (
        f"a batch of {len(value)} samples" if type(value) is list else f"a {type(value).__name__}"
    )
    rejections.add(
        "bad_structure",
        i,
        f"expected a sample object or a batch of 1 to {MAX_SAMPLES_PER_MESSAGE} samples, "
        f"got {what}",
    )


class _Verdicts:
    """Each sample's first reason for rejection (0 = valid, else 1 + index into SAMPLE_REASONS)
    and, per reason, the field(s) that first failed it, for the log."""

    def __init__(self, n: int) -> None:
        self.reason = np.zeros(n, dtype=np.int8)
        self.detail_field: dict[int, str] = {}

    def reject(self, mask: np.ndarray, name: str, field_name: str) -> None:
        """Reject the samples of mask not rejected yet, for reason `name`."""
        code = SAMPLE_REASONS.index(name) + 1
        new = mask & (self.reason == 0)
        if new.any():
            self.reason[new] = code
            self.detail_field.setdefault(code, field_name)


@dataclass(slots=True)
class _RawColumns:
    """Samples as columns before the checks common to every path: t, the numbers in float64 (NaN:
    not reported or unreadable), the states as tristates, and what reading them rejected."""

    time_ms: np.ndarray
    numbers: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    verdicts: _Verdicts

    @classmethod
    def read(cls, items: list[dict]) -> _RawColumns:
        """The general path's sample objects, each field type-checked on its own."""
        verdicts = _Verdicts(len(items))
        reject = verdicts.reject
        time_ms = _time_column(items, reject)
        # Numbers are read and range-checked in float64 before they meet their (often float32)
        # column: a tiny negative speed must fail as negative, not pass as -0.0.
        numbers = {name: _number_column(items, name, reject) for name in _NUMBER_FIELDS}
        states = {name: _state_column(items, name, reject) for name in STATE_COLUMNS}
        return cls(time_ms, numbers, states, verdicts)

    def merged(self, other: _RawColumns, order: np.ndarray) -> _RawColumns:
        """This group's rows followed by other's, then in `order`. Only other's reading may have
        rejected rows (the fast path's never does), so the fields it names for the log stand."""
        verdicts = _Verdicts(0)
        verdicts.reason = np.concatenate((self.verdicts.reason, other.verdicts.reason))[order]
        verdicts.detail_field = {**self.verdicts.detail_field, **other.verdicts.detail_field}

        def joined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.concatenate((a, b))[order]

        return _RawColumns(
            joined(self.time_ms, other.time_ms),
            {name: joined(col, other.numbers[name]) for name, col in self.numbers.items()},
            {name: joined(col, other.states[name]) for name, col in self.states.items()},
            verdicts,
        )


def _columns(
    native: _NativeRows, items, owner, vehicle_of_msg, received, now_ms, limits, rejections
) -> TelemetryBatch:
    """The samples of both paths as columns in message order, checked column by column; the
    rejected ones counted and left out."""
    if not items:
        raw, owner, as_sent = native.columns(), native.owner, native.as_sent
    elif not native.samples:
        raw, as_sent = _RawColumns.read(items), items.__getitem__
    else:
        # Rows in message order, as the general path alone would give them.
        owner = np.asarray(native.owner + owner, dtype=np.intp)
        order = np.argsort(owner, kind="stable")
        owner = owner[order]
        raw = native.columns().merged(_RawColumns.read(items), order)
        n_native = len(native.samples)

        def as_sent(row: int) -> dict:
            k = int(order[row])
            return native.as_sent(k) if k < n_native else items[k - n_native]

    owner = np.asarray(owner, dtype=np.intp)
    return _checked(raw, owner, vehicle_of_msg, received, now_ms, limits, rejections, as_sent)


def _checked(
    raw: _RawColumns, owner, vehicle_of_msg, received, now_ms, limits, rejections, as_sent
):
    """The checks every sample meets, whichever path read it, in this order: a sample is
    rejected for the first that fails."""
    n = len(raw.time_ms)
    verdicts = raw.verdicts
    reject = verdicts.reject
    batch = TelemetryBatch.empty(n)
    batch.time_ms[:] = raw.time_ms
    numbers = raw.numbers
    for name, col in raw.states.items():
        getattr(batch, name)[:] = col
    reject(np.isnan(numbers["lat"]) != np.isnan(numbers["lon"]), "missing_field", "lat/lon")
    _check_ranges(numbers, reject)
    _store_numbers(numbers, batch, reject)
    reject(batch.time_ms > now_ms + limits.max_future_ms, "time_in_future", "t")
    reject(batch.time_ms < now_ms - limits.max_age_ms, "time_too_old", "t")
    if n:
        batch.vehicle[:] = vehicle_of_msg[owner]
        batch.received_ms[:] = received[owner]
    bad = verdicts.reason != 0
    if bad.any():
        _count_rejected(verdicts, bad, as_sent, owner, rejections)
        return batch.take(~bad)
    return batch


def _field(items: list[dict], name: str, missing: object = None) -> list:
    """One field of every sample (`missing` where it has none), read in one C-level pass: a
    Python loop per field and sample cost more than the rest of the checks together."""
    return list(map(dict.get, items, repeat(name, len(items)), repeat(missing, len(items))))


def _time_column(items, reject) -> np.ndarray:
    """t: a required integer. Any integer is one; beyond int64 it is clamped to it, so that the
    time checks find it in the future or too old, as they do any far-off t."""
    n = len(items)
    t_col = _field(items, "t")
    if not set(map(type, t_col)) <= {int}:
        missing = np.fromiter((v is None for v in t_col), bool, n)
        reject(missing, "missing_field", "t")
        reject(
            np.fromiter((type(v) is not int for v in t_col), bool, n) & ~missing, "wrong_type", "t"
        )
        t_col = [v if type(v) is int else 0 for v in t_col]
    try:
        return np.array(t_col, dtype=np.int64)
    except OverflowError:
        return np.array([min(max(v, _INT64[0]), _INT64[1]) for v in t_col], dtype=np.int64)


def _state_column(items, name: str, reject) -> np.ndarray:
    """A boolean state as a tristate column (-1: not reported)."""
    n = len(items)
    col = _field(items, name)
    if set(map(type, col)) <= _BOOL_TYPES:
        return np.fromiter(map(_TRISTATE.__getitem__, col), np.int8, n)
    wrong = np.fromiter((type(v) not in _BOOL_TYPES for v in col), bool, n)
    reject(wrong, "wrong_type", name)
    return np.array([_TRISTATE[v] if type(v) in _BOOL_TYPES else -1 for v in col], dtype=np.int8)


def _check_ranges(numbers: dict[str, np.ndarray], reject) -> None:
    with np.errstate(invalid="ignore"):
        for name, (lo, hi), why in _RANGES:
            col = numbers[name]
            reject((col < lo) | (col > hi), why, name)


def _store_numbers(numbers: dict[str, np.ndarray], batch: TelemetryBatch, reject) -> None:
    """The float64 numbers into their columns; one finite in float64 but not in its (float32)
    column is a wrong_type."""
    with np.errstate(over="ignore"):
        for name, col in numbers.items():
            out = getattr(batch, name)
            out[:] = col
            too_large = np.isinf(out) & ~np.isnan(col)
            if too_large.any():
                reject(too_large, "wrong_type", name)
                out[too_large] = np.nan


def _count_rejected(verdicts: _Verdicts, bad, as_sent, owner, rejections: _Rejections) -> None:
    """Count the rejected samples by reason, logging the first of each with its field(s);
    as_sent(row) is the sample object of a row as the device sent it."""
    codes, first, counts = np.unique(verdicts.reason[bad], return_index=True, return_counts=True)
    bad_rows = np.flatnonzero(bad)
    for code, row, count in zip(codes.tolist(), first.tolist(), counts.tolist()):
        msg = int(owner[bad_rows[row]])
        sample = as_sent(int(bad_rows[row]))
        fields = verdicts.detail_field[code].split("/")
        values = ", ".join(f"{k}={_shown_field(sample.get(k))}" for k in fields)
        rejections.add(SAMPLE_REASONS[code - 1], msg, values, count)


def _shown_field(value: object) -> str:
    # A SenML value refused in telemetry.senml says why (bounded there); anything else is what
    # the device sent, shown in short.
    return repr(value) if type(value) is senml.WrongValue else shown(value)


def _number_column(items, name, reject) -> np.ndarray:
    """One numeric field of every sample as float64, NaN where not reported or rejected."""
    col = _field(items, name, _NOT_REPORTED)
    if set(map(type, col)) <= _FLOAT_OR_INT:
        # The common case, in C loops: plain numbers and fields not reported. A NaN or infinity
        # the device sent (CBOR can) takes the general path below, which says which it was; a
        # NaN that is _NOT_REPORTED itself is counted by identity (list.count).
        try:
            out = np.array(col, dtype=np.float64)
        except OverflowError:  # an integer beyond float64: the general path tells
            out = None
        if out is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                nonfinite = np.count_nonzero(~np.isfinite(out))
            if nonfinite == col.count(_NOT_REPORTED):
                return out
    col = [None if v is _NOT_REPORTED else v for v in col]
    out = np.full(len(col), np.nan)
    types = set(map(type, col))
    if types <= _NUMBER_TYPES:
        try:
            out[:] = col  # None becomes NaN
        except OverflowError:
            types = {object}
    if not types <= _NUMBER_TYPES:
        # Some value is not a number, or an integer too large even for float64 (CBOR bignums):
        # the same test as the conversion above, so that a value fails alike on either path.
        wrong = np.fromiter(
            (
                type(v) not in _NUMBER_TYPES or (type(v) is int and abs(v) >= _FLOAT64_OVERFLOW)
                for v in col
            ),
            bool,
            len(col),
        )
        reject(wrong, "wrong_type", name)
        out[:] = [v if not w else None for v, w in zip(col, wrong)]
    with np.errstate(invalid="ignore", over="ignore"):
        nonfinite = ~np.isfinite(out)
    if nonfinite.any():
        # NaN is our "not reported"; a NaN or infinity the device actually sent is a wrong type.
        sent = np.fromiter((v is not None for v in col), bool, len(col))
        reject(nonfinite & sent, "wrong_type", name)
        out[nonfinite] = np.nan
    return out


def decode_events(
    device_ids: Sequence[str],
    payloads: Sequence[bytes],
    registry: Mapping[str, int],
    *,
    now_ms: int,
    limits: TimeLimits = TimeLimits(),
    content_types: Sequence[str | None] | None = None,
    max_problems: int = 20,
) -> tuple[list[DeviceEvent], dict[str, int], list[Problem]]:
    """Decode device-event messages (low volume: one pydantic validation per event).

    An event whose detail the store could not write as JSON is a bad_structure."""
    rejections = _Rejections(device_ids, max_problems)
    items, owner = _parse_messages(device_ids, payloads, registry, content_types, rejections)
    events: list[DeviceEvent] = []
    budget: dict[int, int] = {}  # per message: what its details may still expand to
    for item, i in zip(items, owner):
        try:
            ev = DeviceEventPayload.model_validate(item)
        except ValidationError as exc:
            err = exc.errors()[0]
            reason = "missing_field" if err["type"] == "missing" else "wrong_type"
            rejections.add(reason, i, f"{'.'.join(map(str, err['loc']))}: {err['msg']}")
            continue
        if ev.detail is not None:
            why, budget[i] = _unstorable(ev.detail, budget.get(i, MAX_PAYLOAD_BYTES))
            if why:
                rejections.add("bad_structure", i, f"detail cannot be stored as JSON: {why}")
                continue
        if ev.t > now_ms + limits.max_future_ms:
            rejections.add("time_in_future", i, f"t={shown(ev.t)}")
        elif ev.t < now_ms - limits.max_age_ms:
            rejections.add("time_too_old", i, f"t={shown(ev.t)}")
        else:
            events.append(DeviceEvent(registry[device_ids[i]], ev.t, ev.type, ev.detail))
    return events, rejections.counts, rejections.problems


def _unstorable(detail: dict, budget: int) -> tuple[str | None, int]:
    """Why the store could not write `detail` as JSON (None if it can), and the budget left.

    Every value and every character of text costs one of the budget: without CBOR shared
    references (tags 28/29) a message's details cost fewer than it has bytes, with them a
    kilobyte could expand into terabytes, or loop."""
    stack: list[tuple[object, int]] = [(detail, 1)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        kind = type(value)
        if kind is str:
            budget -= len(value)
            why = f"text with U+0000 ({shown(value, 40)})" if "\x00" in value else None
        elif kind is dict or kind is list:
            why = _push_children(value, depth, stack)
        else:
            why = _unstorable_scalar(value, kind)
        if why is not None:
            return why, budget
        if budget < 0:
            return (
                f"larger than a message ({MAX_PAYLOAD_BYTES // 1024} KiB) once its "
                f"CBOR shared references are expanded"
            ), budget
    return None, budget


def _push_children(value: dict | list, depth: int, stack: list[tuple[object, int]]) -> str | None:
    """Put a map's keys and values or an array's items on the stack; why not, if it cannot be
    stored (too deep, a key that is not text)."""
    if depth > MAX_DETAIL_DEPTH:
        return f"nested more than {MAX_DETAIL_DEPTH} levels deep"
    if type(value) is list:
        stack.extend((item, depth + 1) for item in value)
        return None
    for key in value:
        if type(key) is not str:
            return f"a map key that is not text ({shown(key, 40)})"
        stack.append((key, depth))
    stack.extend((item, depth + 1) for item in value.values())
    return None


def _unstorable_scalar(value: object, kind: type) -> str | None:
    """Why a value other than text, map or array cannot be stored (None if it can)."""
    if kind is int or kind is float:
        if kind is float and not math.isfinite(value):
            return f"a number that is not finite ({value!r})"
        if not _DETAIL_NUMBERS[0] <= value <= _DETAIL_NUMBERS[1]:
            return f"a number beyond 64-bit integers ({shown(value, 40)})"
        return None
    if value is None or kind is bool:
        return None
    return f"{shown(value, 40)}, a CBOR item JSON has no form of"


def decode_status(payload: bytes, content_type: str | None = None) -> Status | None:
    """A presence payload, or None when it is not one (counted by the caller): among others, a
    status whose t the store cannot hold as a timestamp."""
    enc = payload_encoding(payload, content_type)
    if enc is None:
        return None
    try:
        return Status.model_validate(parse_payload(payload, enc))
    except Exception:  # any parse or validation failure: not a status
        return None
