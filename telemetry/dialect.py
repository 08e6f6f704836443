"""Payload dialects: a legacy device's JSON over MQTT, mapped onto the protocol's samples.

A dialect is data (TOML, docs/dialects.md): the topic its devices publish to, with the level that
holds the device id; where in a payload each sample field is, in which unit; how the time is
written. `compile_dialect` checks a mapping once (a bad one is a DialectError naming the file and
the key); `Dialect.to_samples` turns one parsed payload into the protocol's sample objects, which
telemetry.decoder then checks column by column exactly as it checks native samples (same
rejection reasons, same counters). Sans-IO but for `load_dialect`, which reads a file.

It lives on the ground beside the decoder because the decoder applies it in its columnar path and
both shells (gateway ingress, the roof's `migrate bridge-config`) read the same mapping.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from telemetry.schema import MAX_SAMPLES_PER_MESSAGE

DEVICE_ID_LEVEL = "{device_id}"
TIME_FORMATS = ("epoch_ms", "epoch_s", "iso8601")
# Units a field may arrive in, each with its factor to the protocol's unit.
_SPEED = {"km/h": 1.0, "knot": 1.852, "m/s": 3.6, "mph": 1.609344}
_UNITS: dict[str, dict[str, float]] = {
    "lat": {"deg": 1.0},
    "lon": {"deg": 1.0},
    "speed_kmh": _SPEED,
    "heading_deg": {"deg": 1.0},
    "soc_pct": {"percent": 1.0, "fraction": 100.0},
    "pack_v": {"V": 1.0, "mV": 0.001},
    "pack_a": {"A": 1.0, "mA": 0.001},
    "aux_v": {"V": 1.0, "mV": 0.001},
    "odometer_m": {"m": 1.0, "km": 1000.0, "mi": 1609.344},
}
BOOLEAN_FIELDS = ("locked", "ignition", "immobilised", "charging")
SAMPLE_FIELDS = (*_UNITS, *BOOLEAN_FIELDS)
_SECTIONS = frozenset(("dialect", "time", "fields"))
_DIALECT_KEYS = frozenset(("name", "description", "topic", "samples"))
SHIPPED = ("fleetgate", "traccar-osmand", "flat-json")


class DialectError(ValueError):
    """A dialect mapping that cannot be used; the message names the file and the key."""


class PayloadError(ValueError):
    """A payload whose shape the dialect cannot read (counted as bad_structure)."""


@dataclass(frozen=True, slots=True)
class FieldMap:
    target: str  # a SAMPLE_FIELDS name
    path: tuple[str, ...]  # keys from the sample object down to the value
    factor: float  # to the protocol's unit; 1.0 for booleans
    unit: str | None


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    source: str  # the file it came from, for messages
    topic_levels: tuple[str, ...]  # literal levels, "+" and one DEVICE_ID_LEVEL
    samples_path: tuple[str, ...]  # where the sample list is ( () : the payload itself)
    time_path: tuple[str, ...]
    time_format: str
    fields: tuple[FieldMap, ...]

    @property
    def topic_filter(self) -> str:
        """The MQTT filter for every device's messages in this dialect."""
        return "/".join("+" if level == DEVICE_ID_LEVEL else level for level in self.topic_levels)

    def device_of(self, topic: str) -> str | None:
        """The device id in topic if the topic is one of this dialect's, else None (the id is
        not checked: an invalid one is refused as bad_topic like the native protocol's)."""
        levels = topic.split("/")
        if len(levels) != len(self.topic_levels):
            return None
        device_id = None
        for level, pattern in zip(levels, self.topic_levels):
            if pattern == DEVICE_ID_LEVEL:
                device_id = level
            elif pattern != "+" and pattern != level:
                return None
        return device_id

    def topic_for(self, device_id: str) -> str:
        return "/".join(
            device_id if level == DEVICE_ID_LEVEL else level for level in self.topic_levels
        )

    def to_samples(self, payload: object) -> list[dict]:
        """The protocol sample objects of one parsed payload. Values are carried over as sent
        (a text where a number belongs stays a text, for the decoder to reject as wrong_type);
        only numbers are converted and only well-formed times. PayloadError when the payload's
        shape does not fit the mapping at all."""
        items = _at(payload, self.samples_path) if self.samples_path else payload
        if type(items) is dict:
            items = [items]
        elif not (
            type(items) is list
            and 0 < len(items) <= MAX_SAMPLES_PER_MESSAGE
            and all(type(v) is dict for v in items)
        ):
            raise PayloadError(
                f"{self.name}: expected a sample object or a list of 1 to "
                f"{MAX_SAMPLES_PER_MESSAGE} of them at {_shown_path(self.samples_path)}"
            )
        return [self._sample(item) for item in items]

    def _sample(self, item: dict) -> dict:
        out: dict = {}
        t = _at(item, self.time_path)
        if t is not None:
            out["t"] = _time_ms(t, self.time_format)
        for f in self.fields:
            value = _at(item, f.path)
            if value is None:
                continue
            if f.factor != 1.0 and type(value) in (int, float):
                value = _converted(value, f.factor)
            out[f.target] = value
        return out


def _converted(value: float, factor: float) -> object:
    try:
        return value * factor
    except OverflowError:  # an integer beyond float64: left as sent, a wrong_type
        return value


def _at(value: object, path: tuple[str, ...]) -> object:
    for key in path:
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value


def _time_ms(value: object, fmt: str) -> object:
    """A time in ms since the epoch, or the value as sent where it is not one in this format
    (the decoder then rejects it as wrong_type)."""
    kind = type(value)
    if fmt == "epoch_ms":
        return int(value) if kind is float and value.is_integer() else value
    if fmt == "epoch_s":
        if kind is int or (kind is float and value == value and abs(value) < 1e15):
            return round(value * 1000)
        return value
    if kind is not str:
        return value
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return value  # a time without an offset is ambiguous: refused rather than guessed
        return round(parsed.astimezone(UTC).timestamp() * 1000)
    except (ValueError, OverflowError):  # not ISO-8601, or beyond the years datetime holds
        return value


def _shown_path(path: tuple[str, ...]) -> str:
    return ".".join(path) or "the payload's top"


def compile_dialect(mapping: dict, source: str) -> Dialect:
    """Check a parsed TOML mapping and build its Dialect; DialectError says which key is wrong."""

    def fail(key: str, why: str) -> DialectError:
        return DialectError(f"{source}: {key}: {why}")

    unknown = set(mapping) - _SECTIONS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown section (the sections: {sorted(_SECTIONS)})")
    head = _table(mapping, "dialect", fail)
    unknown = set(head) - _DIALECT_KEYS
    if unknown:
        raise fail(f"dialect.{sorted(unknown)[0]}", f"unknown key (known: {sorted(_DIALECT_KEYS)})")
    name = _text(head, "name", "dialect.name", fail)
    topic = _text(head, "topic", "dialect.topic", fail)
    levels = tuple(topic.split("/"))
    if levels.count(DEVICE_ID_LEVEL) != 1 or any(
        not level or "#" in level or (level not in ("+", DEVICE_ID_LEVEL) and "+" in level)
        for level in levels
    ):
        raise fail(
            "dialect.topic",
            f"{topic!r}: topic levels separated by '/', exactly one of them {DEVICE_ID_LEVEL}, "
            "others literal or '+', no '#'",
        )
    samples = head.get("samples", "")
    if type(samples) is not str:
        raise fail("dialect.samples", "a dotted path (text), empty for the payload itself")
    time_table = _table(mapping, "time", fail)
    time_path = _path(time_table.get("field"), "time.field", fail)
    time_format = time_table.get("format")
    if time_format not in TIME_FORMATS:
        raise fail("time.format", f"{time_format!r} is not one of {list(TIME_FORMATS)}")
    unknown = set(time_table) - {"field", "format"}
    if unknown:
        raise fail(f"time.{sorted(unknown)[0]}", "unknown key (known: field, format)")
    fields = tuple(
        _field(target, spec, fail) for target, spec in _table(mapping, "fields", fail).items()
    )
    if not fields:
        raise fail("fields", "maps no field")
    return Dialect(
        name,
        source,
        levels,
        tuple(samples.split(".")) if samples else (),
        time_path,
        time_format,
        fields,
    )


def _table(mapping: dict, key: str, fail) -> dict:
    value = mapping.get(key)
    if type(value) is not dict:
        raise fail(key, "missing table" if value is None else "must be a table")
    return value


def _text(table: dict, key: str, shown: str, fail) -> str:
    value = table.get(key)
    if type(value) is not str or not value:
        raise fail(shown, "missing" if value is None else "must be a non-empty text")
    return value


def _path(value: object, key: str, fail) -> tuple[str, ...]:
    if type(value) is not str or not value or "" in value.split("."):
        raise fail(key, "a dotted path of keys, such as 'location.coords.latitude'")
    return tuple(value.split("."))


def _field(target: str, spec: object, fail) -> FieldMap:
    key = f"fields.{target}"
    if target not in SAMPLE_FIELDS:
        raise fail(key, f"not a sample field (the fields: {list(SAMPLE_FIELDS)})")
    if type(spec) is str:
        spec = {"path": spec}
    if type(spec) is not dict:
        raise fail(key, "a path, or a table with path and unit")
    unknown = set(spec) - {"path", "unit"}
    if unknown:
        raise fail(f"{key}.{sorted(unknown)[0]}", "unknown key (known: path, unit)")
    path = _path(spec.get("path"), f"{key}.path", fail)
    unit = spec.get("unit")
    if target in BOOLEAN_FIELDS:
        if unit is not None:
            raise fail(f"{key}.unit", "a boolean field has no unit")
        return FieldMap(target, path, 1.0, None)
    units = _UNITS[target]
    if unit is None:
        unit = next(iter(units))
    if unit not in units:
        raise fail(f"{key}.unit", f"{unit!r} is not one of {list(units)}")
    return FieldMap(target, path, units[unit], unit)


def parse_dialect(text: str, source: str) -> Dialect:
    try:
        mapping = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DialectError(f"{source}: not valid TOML: {exc}") from exc
    return compile_dialect(mapping, source)


def load_dialect(spec: str) -> Dialect:
    """A dialect from a file path, or one of the SHIPPED ones by name."""
    if spec in SHIPPED:
        text = resources.files("telemetry").joinpath(f"dialects/{spec}.toml").read_text()
        return parse_dialect(text, f"{spec} (shipped)")
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DialectError(
            f"{spec}: cannot read it ({exc.__class__.__name__}: {exc}); a dialect is a TOML "
            f"file or one of the shipped names {list(SHIPPED)}"
        ) from exc
    return parse_dialect(text, spec)


def load_dialects(specs: list[str] | tuple[str, ...]) -> tuple[Dialect, ...]:
    """Several dialects; their names and topic filters must differ."""
    dialects = tuple(load_dialect(s) for s in specs)
    seen: dict[str, str] = {}
    for d in dialects:
        for key in (f"name {d.name}", f"topic {d.topic_filter}"):
            if key in seen:
                raise DialectError(
                    f"{d.source}: dialect.{key.split()[0]}: same {key} as {seen[key]}"
                )
            seen[key] = d.source
    return dialects
