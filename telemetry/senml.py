"""SenML (RFC 8428) packs, in JSON or CBOR, as the protocol's sample objects (docs/coap.md).

A pack is resolved (base name, time, unit and value applied to each record), each record's name
is mapped to a protocol field with its unit converted, and records of one time form one sample.
The decoder then checks those samples exactly like JSON or CBOR ones; a value of the wrong kind
or in a unit the field does not take arrives there as a `WrongValue` and fails as `wrong_type`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import cbor2
import orjson

from telemetry._shown import shown
from telemetry.schema import MAX_SAMPLES_PER_MESSAGE

# RFC 8428 section 6: the CBOR representation's integer labels.
CBOR_LABELS = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}
SENML_VERSION = 10  # the version RFC 8428 defines, and the highest this codec understands
RELATIVE_TIME_LIMIT = 2**28  # times below this are relative to "now" (RFC 8428 section 4.5.3)
_JSON_LABEL_NAMES = frozenset(CBOR_LABELS.values())


class SenmlError(ValueError):
    """The pack is not valid SenML (a whole-message rejection: `bad_structure`)."""


class WrongValue:
    """A value the decoder must reject as `wrong_type`; its repr says why, for the log."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"<{self.why}>"


@dataclass(frozen=True, slots=True)
class FieldMapping:
    """How SenML records become one protocol field.

    units maps each accepted unit (None: no unit given) to the factor that converts a value in
    it to the protocol's unit; boolean fields take `vb` values and no unit.
    """

    field: str
    names: tuple[str, ...]
    units: dict[str | None, float]
    boolean: bool = False


_SAME = 1.0
FIELDS: tuple[FieldMapping, ...] = (
    FieldMapping(
        "lat",
        ("lat", "Vehicle.CurrentLocation.Latitude"),
        {None: _SAME, "lat": _SAME, "deg": _SAME},
    ),
    FieldMapping(
        "lon",
        ("lon", "Vehicle.CurrentLocation.Longitude"),
        {None: _SAME, "lon": _SAME, "deg": _SAME},
    ),
    FieldMapping(
        "speed_kmh", ("speed_kmh", "Vehicle.Speed"), {None: _SAME, "km/h": _SAME, "m/s": 3.6}
    ),
    FieldMapping(
        "heading_deg",
        ("heading_deg", "Vehicle.CurrentLocation.Heading"),
        {None: _SAME, "deg": _SAME, "rad": 180.0 / math.pi},
    ),
    FieldMapping(
        "soc_pct",
        ("soc_pct", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"),
        {None: _SAME, "%EL": _SAME, "%": _SAME, "/": 100.0},
    ),
    FieldMapping(
        "pack_v",
        ("pack_v", "Vehicle.Powertrain.TractionBattery.CurrentVoltage"),
        {None: _SAME, "V": _SAME, "mV": 0.001},
    ),
    FieldMapping(
        "pack_a",
        ("pack_a", "Vehicle.Powertrain.TractionBattery.CurrentCurrent"),
        {None: _SAME, "A": _SAME, "mA": 0.001},
    ),
    FieldMapping(
        "aux_v",
        ("aux_v", "Vehicle.LowVoltageBattery.CurrentVoltage"),
        {None: _SAME, "V": _SAME, "mV": 0.001},
    ),
    FieldMapping(
        "odometer_m",
        ("odometer_m", "Vehicle.TraveledDistance"),
        {None: _SAME, "m": _SAME, "km": 1000.0},
    ),
    FieldMapping(
        "locked",
        ("locked", "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"),
        {None: _SAME},
        boolean=True,
    ),
    FieldMapping("ignition", ("ignition",), {None: _SAME}, boolean=True),
    FieldMapping("immobilised", ("immobilised",), {None: _SAME}, boolean=True),
    FieldMapping(
        "charging",
        ("charging", "Vehicle.Powertrain.TractionBattery.Charging.IsCharging"),
        {None: _SAME},
        boolean=True,
    ),
)
_BY_NAME = {name: m for m in FIELDS for name in m.names}
_RESOLVED: dict[str, FieldMapping | None] = {}  # resolved names seen, a few per device


def field_for(name: str) -> FieldMapping | None:
    """The mapping for a resolved record name, or None for a name the protocol does not know.

    Only the part after the last '/' or ':' counts, so that a base name identifying the device
    (`urn:dev:imei:356...:`, `tcu-0001/`) can be in front of the field name.
    """
    try:
        return _RESOLVED[name]
    except KeyError:
        pass
    cut = max(name.rfind("/"), name.rfind(":"))
    mapping = _BY_NAME.get(name[cut + 1 :])
    if len(_RESOLVED) >= 100_000:
        _RESOLVED.clear()
    _RESOLVED[name] = mapping
    return mapping


def to_samples(pack: Any, now_ms: int) -> list[dict[str, Any]]:
    """The protocol sample objects of a parsed SenML pack (JSON or CBOR labels).

    Records are grouped by their resolved time into samples, in order of first appearance.
    Records with names the protocol does not know are ignored, as unknown fields are. Raises
    SenmlError when the pack is not SenML or holds no record with a known name.
    """
    if type(pack) is not list or not pack:
        raise SenmlError("a SenML pack is a non-empty array of records")
    now_s = now_ms / 1000.0
    base_name, base_time, base_unit, base_value = "", 0.0, None, None
    samples: dict[Any, dict[str, Any]] = {}
    for index, raw in enumerate(pack):
        if type(raw) is not dict:
            raise SenmlError(f"record {index} is a {type(raw).__name__}, not a map")
        record = _labelled(raw, index)
        if not _BASE_LABELS.isdisjoint(record):
            base_name, base_time, base_unit, base_value = _bases(
                record, index, base_name, base_time, base_unit, base_value
            )
        name = base_name + (_text(record, "n", index) if "n" in record else "")
        mapping = field_for(name)
        if mapping is None:
            continue  # an unknown name, or a record with base fields only
        unit = _text(record, "u", index) if "u" in record else base_unit
        value = _value(mapping, record, unit, base_value)
        if value is _NO_VALUE:
            continue  # a sum-only record: nothing the protocol has a field for
        key, t_ms = _time(record, base_time, now_s)
        sample = samples.get(key)
        if sample is None:
            sample = samples[key] = {"t": t_ms}
        sample[mapping.field] = value  # a field repeated at one time: the later record wins
    return _checked_count(list(samples.values()))


_BASE_LABELS = frozenset(("bver", "bn", "bt", "bu", "bv"))


def _bases(
    record: dict[str, Any],
    index: int,
    name: str,
    time: float,
    unit: str | None,
    value: float | None,
) -> tuple[str, float, str | None, float | None]:
    """The base name, time, unit and value in force from this record on (RFC 8428 section 4.1):
    the record's own base fields, the earlier ones where it has none."""
    if "bver" in record:
        bver = record["bver"]
        if type(bver) is not int or not 1 <= bver <= SENML_VERSION:
            raise SenmlError(
                f"record {index}: bver {shown(bver)} is not a version up to {SENML_VERSION}"
            )
    if "bn" in record:
        name = _text(record, "bn", index)
    if "bt" in record:
        time = _number(record, "bt", index)
    if "bu" in record:
        unit = _text(record, "bu", index)
    if "bv" in record:
        value = _number(record, "bv", index)
    return name, time, unit, value


def _checked_count(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not samples:
        raise SenmlError("no record with a name the protocol knows (docs/coap.md)")
    if len(samples) > MAX_SAMPLES_PER_MESSAGE:
        raise SenmlError(f"{len(samples)} sample times, more than {MAX_SAMPLES_PER_MESSAGE}")
    return samples


_NO_VALUE = object()


def _labelled(raw: dict, index: int) -> dict[str, Any]:
    """A record with JSON labels, whichever representation it came in."""
    try:  # the common cases: only RFC 8428 labels, as CBOR integers or JSON text
        return {CBOR_LABELS[k]: v for k, v in raw.items()}
    except (KeyError, TypeError):
        pass
    if all(type(k) is str and k in _JSON_LABEL_NAMES for k in raw):
        return raw
    out: dict[str, Any] = {}
    for label, value in raw.items():
        if type(label) is int:
            name = CBOR_LABELS.get(label)
            if name is None:
                continue  # an extension label this codec does not know: ignored
        elif type(label) is str:
            name = label
            if name.endswith("_"):
                # RFC 8428 section 4.4: a label ending in "_" must be understood, else the
                # whole pack is rejected.
                raise SenmlError(f"record {index}: must-understand label {shown(label)} is unknown")
        else:
            raise SenmlError(f"record {index}: label {shown(label)} is neither text nor an integer")
        out[name] = value
    return out


def _text(record: dict, label: str, index: int) -> str:
    value = record[label]
    if type(value) is not str:
        raise SenmlError(f"record {index}: {label} must be text, not {type(value).__name__}")
    return value


def _as_float(value: Any) -> float | None:
    """A SenML number as a float (CBOR decimal fractions and rationals included), else None:
    also for a number float64 cannot hold."""
    if type(value) in (int, float):
        return float(value) if abs(value) < 1e300 else None
    if isinstance(value, (Decimal, Fraction)):
        try:
            return float(value)
        except (OverflowError, ValueError):  # a rational beyond float64; a signalling NaN
            return None
    return None


def _number(record: dict, label: str, index: int) -> float:
    value = _as_float(record[label])
    if value is None or not math.isfinite(value):
        raise SenmlError(
            f"record {index}: {label} must be a finite number, not {shown(record[label])}"
        )
    return value


def _value(mapping: FieldMapping, record: dict, unit: str | None, base_value: float | None):
    """A record's value in the field's unit, a WrongValue saying why not, or _NO_VALUE for a
    sum-only record. The right kind of value goes straight through; the wrong ones are named by
    _wrong_boolean and _wrong_number, off the common path."""
    has = [k for k in ("v", "vs", "vb", "vd") if k in record]
    if len(has) != 1:
        if not has:
            return _NO_VALUE if "s" in record else WrongValue("record without a value")
        return WrongValue(f"more than one value ({', '.join(has)})")
    kind = has[0]
    raw = record[kind]
    if mapping.boolean:
        if kind == "vb" and type(raw) is bool and unit is None:
            return raw
        return _wrong_boolean(kind, raw, unit)
    value = _as_float(raw) if kind == "v" else None
    if value is None or unit not in mapping.units:
        return _wrong_number(mapping, kind, raw, unit)
    if base_value is not None:
        value += base_value
    factor = mapping.units[unit]
    # An integer stays an integer when it needs no conversion (odometer readings, whole %).
    if factor == _SAME and type(raw) is int and base_value is None:
        return raw
    return value * factor


def _wrong_boolean(kind: str, raw: Any, unit: str | None) -> WrongValue:
    if kind != "vb" or type(raw) is not bool:
        return WrongValue(f"{kind}={shown(raw)}, expected a boolean vb")
    return WrongValue(f"unit {shown(unit)} on a boolean")


def _wrong_number(mapping: FieldMapping, kind: str, raw: Any, unit: str | None) -> WrongValue:
    if kind != "v":
        return WrongValue(f"{kind}={shown(raw)}, expected a number v")
    if _as_float(raw) is None:
        return WrongValue(f"v={shown(raw)}, expected a number")
    accepted = ", ".join(repr(u) for u in mapping.units if u is not None)
    return WrongValue(f"unit {shown(unit)}, expected one of {accepted}")


def _time(record: dict, base_time: float, now_s: float) -> tuple[Any, int | WrongValue]:
    """(grouping key, sample time in ms) of a record."""
    t = record.get("t", 0)
    offset = _as_float(t)
    if offset is None or not math.isfinite(offset):
        bad = WrongValue(f"t={shown(t)}, expected a number")
        return ("bad", id(record)), bad
    when = base_time + offset
    if when < RELATIVE_TIME_LIMIT:
        when += now_s  # relative to now: devices without a clock send t=0 or negative ages
    t_ms = round(when * 1000.0)
    return t_ms, t_ms


# The unit each protocol field is written with by encode_pack (RFC 8428 / RFC 8798 names).
UNITS = {
    "lat": "lat",
    "lon": "lon",
    "speed_kmh": "km/h",
    "heading_deg": "deg",
    "soc_pct": "%EL",
    "pack_v": "V",
    "pack_a": "A",
    "aux_v": "V",
    "odometer_m": "m",
}
_JSON_LABELS = {v: k for k, v in CBOR_LABELS.items()}


def encode_pack(
    samples: list[dict[str, Any]],
    *,
    cbor: bool = True,
    base_name: str = "",
    relative_to_ms: int | None = None,
) -> bytes:
    """Protocol samples as one SenML pack: the first record carries bn and bt, every record
    its time offset t (seconds) unless it is the first sample's time.

    relative_to_ms: write times relative to this "now" (as a device without a clock does:
    t = 0 is now, negative is the past) instead of absolute Unix seconds.
    """
    if not samples:
        raise ValueError("a pack needs at least one sample")
    t0 = samples[0]["t"]
    base_time = (t0 - relative_to_ms) / 1000.0 if relative_to_ms is not None else t0 / 1000.0
    records: list[dict[str, Any]] = []
    for sample in samples:
        offset = (sample["t"] - t0) / 1000.0
        for name, value in sample.items():
            if name == "t" or value is None:
                continue
            rec: dict[str, Any] = {"n": name}
            if type(value) is bool:
                rec["vb"] = value
            else:
                rec["u"] = UNITS[name]
                rec["v"] = value
            if offset:
                rec["t"] = offset
            records.append(rec)
    if not records:
        raise ValueError("samples without any field to send")
    records[0] = (
        {"bn": base_name, "bt": base_time, **records[0]}
        if base_name
        else {"bt": base_time, **records[0]}
    )
    if not cbor:
        return orjson.dumps(records)
    return cbor2.dumps([{_JSON_LABELS[k]: v for k, v in r.items()} for r in records])
