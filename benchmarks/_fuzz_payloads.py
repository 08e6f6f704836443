"""Seeded, reproducible adversarial device messages for benchmarks/fuzz.py: structure-aware
mutations of valid JSON, CBOR and SenML samples, events and statuses, byte-level damage, wrong
content types and topics, mixed with valid samples whose (device, t) the caller keeps.

Payloads are written by this module's own JSON and CBOR writers, so that they can hold what
well-behaved encoders refuse to write: duplicate keys, NaN literals, lone surrogate escapes,
indefinite lengths, bignums, tags, shared references, non-minimal heads.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import cbor2
import orjson

from telemetry.batch import FLOAT_COLUMNS, STATE_COLUMNS
from telemetry.schema import MAX_PAYLOAD_BYTES, MAX_SAMPLES_PER_MESSAGE
from telemetry.senml import CBOR_LABELS, encode_pack

# --- the message a generator makes ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FuzzMessage:
    family: str
    kind: str  # topic level 3: telemetry, event, status (or another one: not subscribed)
    device_id: str  # topic level 2, whatever it holds
    payload: bytes
    content_type: str | None = None
    retain: bool = False
    # Valid samples (device_id, t) and events (device_id, t, type) it carries, to be stored once.
    valid_samples: tuple[tuple[str, int], ...] = ()
    valid_events: tuple[tuple[str, int, str], ...] = ()
    subscribed: bool = True  # False: a topic the gateway does not subscribe to
    protocol: int = 5  # 4: goes out on the MQTT 3.1.1 connection (no content type)


# --- nodes the writers understand besides plain Python values -------------------------------------


class Raw(bytes):
    """A fragment written verbatim (JSON text or CBOR bytes)."""


@dataclass(frozen=True, slots=True)
class Pairs:
    """A map written from (key, value) pairs: duplicate keys, any key type, any order."""

    items: tuple


@dataclass(frozen=True, slots=True)
class Tag:
    number: int
    value: object


@dataclass(frozen=True, slots=True)
class Indefinite:
    """A CBOR list, map, text or byte string written with indefinite length (JSON: as usual)."""

    value: object


@dataclass(frozen=True, slots=True)
class Half:
    """A float written as CBOR half precision (NaN, infinities, small values)."""

    value: float


@dataclass(frozen=True, slots=True)
class Simple:
    number: int


UNDEFINED = Simple(23)


# --- JSON writer --------------------------------------------------------------------------------


def json_bytes(node: object, rng: random.Random | None = None) -> bytes:
    out: list[bytes] = []
    _json(node, out, rng)
    return b"".join(out)


def _json(node: object, out: list[bytes], rng: random.Random | None) -> None:
    writer = _JSON_WRITERS.get(type(node))
    if writer is None:
        raise TypeError(f"no JSON for {type(node).__name__}")
    writer(node, out, rng)


def _json_float(node: float, out: list[bytes], rng) -> None:
    if math.isfinite(node):
        out.append(orjson.dumps(node))
    else:
        out.append({"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}[repr(node)])


def _json_list(node: list | tuple, out: list[bytes], rng) -> None:
    out.append(b"[")
    for i, item in enumerate(node):
        if i:
            out.append(b"," if rng is None or rng.random() > 0.05 else b" ,\n\t")
        _json(item, out, rng)
    out.append(b"]")


def _json_map(node: dict | Pairs, out: list[bytes], rng) -> None:
    out.append(b"{")
    for i, (k, v) in enumerate(node.items() if type(node) is dict else node.items):
        if i:
            out.append(b",")
        if type(k) is Raw:
            out.append(k)
        else:
            out.append(orjson.dumps(k if type(k) is str else _key_text(k)))
        out.append(b":")
        _json(v, out, rng)
    out.append(b"}")


def _int_text(n: int) -> bytes:
    # str() of an integer beyond 4,300 digits raises (CPython's limit, which this process keeps
    # as the gateway does); such numbers are written as Raw digit runs by the generators.
    return str(n).encode() if n.bit_length() < 14_000 else b"1" + b"0" * 4000


def _key_text(k: object) -> str:
    return k.decode("latin-1") if type(k) is bytes else str(k)[:100]


def _json_value_alone(node, out: list[bytes], rng) -> None:  # JSON has no tags, half floats...
    _json(node.value, out, rng)


_JSON_WRITERS: dict[type, Callable] = {
    Raw: lambda node, out, rng: out.append(node),
    type(None): lambda node, out, rng: out.append(b"null"),
    bool: lambda node, out, rng: out.append(orjson.dumps(node)),
    str: lambda node, out, rng: out.append(orjson.dumps(node)),
    int: lambda node, out, rng: out.append(_int_text(node)),
    float: _json_float,
    list: _json_list,
    tuple: _json_list,
    dict: _json_map,
    Pairs: _json_map,
    Tag: _json_value_alone,
    Indefinite: _json_value_alone,
    Half: _json_value_alone,
    Simple: lambda node, out, rng: out.append(b"null"),
    bytes: lambda node, out, rng: out.append(b"null"),
}


# --- CBOR writer --------------------------------------------------------------------------------


def cbor_bytes(node: object, rng: random.Random | None = None) -> bytes:
    out = bytearray()
    _cbor(node, out, rng)
    return bytes(out)


def cbor_head(major: int, n: int, *, wide: bool = False) -> bytes:
    """The head of a data item; wide: a longer (non-minimal, still valid) form."""
    m = major << 5
    if n < 24 and not wide:
        return bytes((m | n,))
    if n < 0x100 and not (wide and n >= 24):
        return bytes((m | 24, n))
    if n < 0x10000:
        return bytes((m | 25,)) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes((m | 26,)) + struct.pack(">I", n)
    return bytes((m | 27,)) + struct.pack(">Q", n)


def _cbor(node: object, out: bytearray, rng: random.Random | None) -> None:
    writer = _CBOR_WRITERS.get(type(node))
    if writer is None:
        raise TypeError(f"no CBOR for {type(node).__name__}")
    # Now and then a head longer than it needs to be: valid CBOR, not what encoders write.
    writer(node, out, rng, rng is not None and rng.random() < 0.02)


def _cbor_int(node: int, out: bytearray, rng, wide: bool) -> None:
    if 0 <= node < 2**64:
        out += cbor_head(0, node, wide=wide)
    elif -(2**64) <= node < 0:
        out += cbor_head(1, -1 - node, wide=wide)
    else:  # bignum (RFC 8949 3.4.3)
        tag, mag = (2, node) if node >= 0 else (3, -1 - node)
        raw = mag.to_bytes((mag.bit_length() + 7) // 8 or 1, "big")
        out += cbor_head(6, tag) + cbor_head(2, len(raw)) + raw


def _cbor_list(node: list | tuple, out: bytearray, rng, wide: bool) -> None:
    out += cbor_head(4, len(node), wide=wide)
    for item in node:
        _cbor(item, out, rng)


def _cbor_map(node: dict | Pairs, out: bytearray, rng, wide: bool) -> None:
    items = list(node.items() if type(node) is dict else node.items)
    out += cbor_head(5, len(items), wide=wide)
    for k, v in items:
        _cbor(k, out, rng)
        _cbor(v, out, rng)


def _cbor_tag(node: Tag, out: bytearray, rng, wide: bool) -> None:
    out += cbor_head(6, node.number)
    _cbor(node.value, out, rng)


def _cbor_indefinite(node: Indefinite, out: bytearray, rng, wide: bool) -> None:
    inner = node.value
    if type(inner) is str or type(inner) is bytes:  # in three chunks
        out.append(((3 if type(inner) is str else 2) << 5) | 31)
        step = max(1, len(inner) // 3)
        for i in range(0, len(inner), step):
            _cbor(inner[i : i + step], out, None)
    elif type(inner) is list:
        out.append(0x9F)
        for item in inner:
            _cbor(item, out, rng)
    else:
        out.append(0xBF)
        for k, v in inner.items() if type(inner) is dict else inner.items:
            _cbor(k, out, rng)
            _cbor(v, out, rng)
    out.append(0xFF)


def _cbor_simple(node: Simple, out: bytearray, rng, wide: bool) -> None:
    out += bytes((0xE0 | node.number,)) if node.number < 24 else bytes((0xF8, node.number))


def _cbor_text(node: str, out: bytearray, rng, wide: bool) -> None:
    raw = node.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8 on the wire
    out += cbor_head(3, len(raw), wide=wide) + raw


_CBOR_WRITERS: dict[type, Callable] = {
    Raw: lambda node, out, rng, wide: out.extend(node),
    type(None): lambda node, out, rng, wide: out.append(0xF6),
    bool: lambda node, out, rng, wide: out.append(0xF5 if node else 0xF4),
    int: _cbor_int,
    float: lambda node, out, rng, wide: out.extend(b"\xfb" + struct.pack(">d", node)),
    Half: lambda node, out, rng, wide: out.extend(b"\xf9" + struct.pack(">e", node.value)),
    str: _cbor_text,
    bytes: lambda node, out, rng, wide: out.extend(cbor_head(2, len(node), wide=wide) + node),
    list: _cbor_list,
    tuple: _cbor_list,
    dict: _cbor_map,
    Pairs: _cbor_map,
    Tag: _cbor_tag,
    Simple: _cbor_simple,
    Indefinite: _cbor_indefinite,
}


def shared_reference_bomb(levels: int) -> Raw:
    """A CBOR array of `levels` shareable arrays (tag 28), each holding two references (tag 29) to
    the one before: a few bytes a level, 2**levels values once expanded (a repr walks them all)."""
    out = bytearray(cbor_head(4, levels + 1))
    out += cbor_head(6, 28) + cbor_head(4, 2) + b"\x01\x02"
    for i in range(levels):
        ref = cbor_head(6, 29) + cbor_head(0, i)
        out += cbor_head(6, 28) + cbor_head(4, 2) + ref + ref
    return Raw(bytes(out))


def string_reference_flood(size: int, refs: int) -> Raw:
    """One text of `size` characters, shareable, and `refs` references to it (tag 29): a small
    message holding size * refs characters once expanded."""
    text = "x" * size
    out = bytearray(cbor_head(4, refs + 1))
    out += cbor_head(6, 28)
    _cbor(text, out, None)
    ref = cbor_head(6, 29) + b"\x00"
    out += ref * refs
    return Raw(bytes(out))


# --- samples --------------------------------------------------------------------------------------

NUMBER_FIELDS = ("lat", "lon", *FLOAT_COLUMNS, "odometer_m")
BOOL_FIELDS = STATE_COLUMNS
SAMPLE_FIELDS = ("t", *NUMBER_FIELDS, *BOOL_FIELDS)
SENML_NAMES = {
    "lat": ("lat", "Vehicle.CurrentLocation.Latitude"),
    "lon": ("lon", "Vehicle.CurrentLocation.Longitude"),
    "speed_kmh": ("speed_kmh", "Vehicle.Speed"),
    "soc_pct": ("soc_pct",),
    "pack_v": ("pack_v",),
    "odometer_m": ("odometer_m", "Vehicle.TraveledDistance"),
    "locked": ("locked",),
    "charging": ("charging",),
}
SENML_CBOR_LABELS = {name: label for label, name in CBOR_LABELS.items()}
SENML_UNITS = {
    "lat": (None, "lat", "deg"),
    "lon": (None, "lon", "deg"),
    "speed_kmh": (None, "km/h", "m/s"),
    "soc_pct": (None, "%EL", "%", "/"),
    "pack_v": (None, "V", "mV"),
    "odometer_m": (None, "m", "km"),
}


def valid_sample(rng: random.Random, t: int, car: bool) -> dict:
    s = {
        "t": t,
        "lat": round(rng.uniform(52.3, 52.7), 6),
        "lon": round(rng.uniform(13.1, 13.7), 6),
        "speed_kmh": round(rng.uniform(0, 40), 1),
        "heading_deg": round(rng.uniform(0, 359), 1),
        "soc_pct": round(rng.uniform(5, 100), 2),
        "pack_v": round(rng.uniform(33, 42), 2),
        "pack_a": round(rng.uniform(-5, 20), 2),
        "odometer_m": round(rng.uniform(0, 1e7), 1),
        "locked": rng.random() < 0.5,
        "charging": rng.random() < 0.1,
    }
    if car:
        s.update(
            aux_v=round(rng.uniform(11.5, 14.4), 2),
            ignition=rng.random() < 0.5,
            immobilised=rng.random() < 0.1,
        )
    for name in ("heading_deg", "pack_a", "odometer_m", "charging"):  # optional fields vary
        if rng.random() < 0.2:
            del s[name]
    if rng.random() < 0.05:
        del s["lat"], s["lon"]  # no fix
    return s


# Values any encoding can carry, of every type a field might be confused with.
GENERIC_VALUES = (
    None,
    True,
    False,
    0,
    1,
    -1,
    0.5,
    -0.0,
    5e-324,
    1e-300,
    1e308,
    -1e308,
    1.7976931348623157e308,
    3.4028234663852886e38,
    3.5e38,
    -3.5e38,
    2**31,
    2**31 - 1,
    2**53 + 1,
    2**63 - 1,
    2**63,
    -(2**63),
    -(2**63) - 1,
    2**64 - 1,
    2**64,
    -(2**64),
    90.0000001,
    -90.0000001,
    180.0000001,
    400.1,
    360.0001,
    100.00001,
    -1e-9,
    1e-45,
    "",
    "0",
    "1.5",
    "NaN",
    "true",
    "null",
    "\x00",
    "\u202e\u200b",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "é" * 3,
    "\U0001f6b2",
    "a" * 5000,
    [],
    {},
    [1, 2],
    {"t": 1},
    [None],
    [[[]]],
    {"": None},
)
# JSON texts a well-behaved encoder never writes.
JSON_RAW_VALUES = tuple(
    Raw(x)
    for x in (
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"nan",
        b"inf",
        b"1e999",
        b"-1e999",
        b"1e-999",
        b"-0",
        b"0e0",
        b"1E+2",
        b"1.",
        b".5",
        b"01",
        b"+1",
        b"0x10",
        b"1_000",
        b"18446744073709551616",
        b"-9223372036854775809",
        b"9" * 400,
        b"9" * 5000,
        b"-" + b"9" * 5000,
        b"1" + b"0" * 310,
        b"1e308",
        b"2.5e-324",
        b"true ",
        b"tru",
        b"nul",
        b'"\\u0000"',
        b'"\\ud800"',
        b'"\\udfff"',
        b'"\\ud83d\\ude00"',
        b'"\\ud800\\u0041"',
        b'"\\uDEAD\\uBEEF"',
        b'"\\u00"',
        b'"\\x41"',
        b'"\\/\\b\\f\\n\\r\\t"',
        b'"\xff\xfe"',
        b'"\xc0\xaf"',
        b'"\xed\xa0\x80"',
        b'"\xf4\x90\x80\x80"',
        b'"\t"',
        b'"\x7f"',
        b"[" * 1023 + b"]" * 1023,
        b"[" * 1025 + b"]" * 1025,
        b'{"a":' * 600 + b"1" + b"}" * 600,
        b"[" * 20000,
        b'{"t":1,"t":2}',
        b"[1,]",
        b"{,}",
        b"'x'",
        b"/* */1",
        b"1 2",
    )
)
# CBOR items a JSON encoder has no form of, and CBOR's own edge cases.
CBOR_NODES: tuple = (
    Tag(2, b"\x01" + b"\x00" * 8),
    Tag(2, b"\xff" * 40),
    Tag(3, b"\xff" * 40),
    Tag(2, b"\x01" + b"\x00" * 2000),
    Tag(3, b"\x7f" * 2500),
    Tag(2, b""),
    2**1030,
    -(2**1030),
    Half(float("nan")),
    Half(float("inf")),
    Half(float("-inf")),
    Half(-0.0),
    Half(6e-8),
    Raw(b"\xfa\x7f\xc0\x00\x00"),
    Raw(b"\xfa\x7f\x80\x00\x00"),
    Raw(b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x01"),
    UNDEFINED,
    Simple(16),
    Simple(19),
    Raw(b"\xf8\x20"),
    Raw(b"\xf8\xff"),
    Raw(b"\xf8\x10"),
    b"",
    b"\x00\xff",
    bytes(300),
    Tag(0, "2026-12-06T12:00:00Z"),
    Tag(0, "not a date"),
    Tag(1, 1764412800),
    Tag(1, 1e300),
    Tag(1, float("nan")),
    Tag(4, [-2, 12345]),
    Tag(4, [10**6, 1]),
    Tag(4, [-(10**6), 1]),
    Tag(4, [2, Tag(2, b"\x01" + b"\x00" * 2000)]),
    Tag(5, [-1, 3]),
    Tag(5, [100000, 1]),
    Tag(30, [1, 3]),
    Tag(30, [1, 0]),
    Tag(30, [2**2000, 1]),
    Tag(30, [-(2**2000), 3]),
    Tag(30, [1, 2**2000]),
    Tag(258, [1, 2, 2]),
    Tag(258, [[1]]),
    Tag(55799, 1.5),
    Tag(55799, Tag(55799, 42)),
    Tag(12345, 1.0),
    Tag(2**64 - 1, None),
    Tag(24, b"\xa1\x61t\x01"),
    Tag(24, b"\xff"),
    Tag(32, "http://[::1"),
    Tag(35, "(a+)+$"),
    Tag(35, "("),
    Tag(36, "x"),
    Tag(37, b"\x00" * 3),
    Tag(37, bytes(16)),
    Tag(260, b"\x7f\x00\x00\x01"),
    Tag(260, b"\x01"),
    Tag(261, {b"\x0a": 8}),
    Tag(256, ["a", Tag(25, 0)]),
    Tag(25, 0),
    Tag(29, 0),
    Tag(29, 99),
    Tag(28, Tag(29, 0)),
    Indefinite("indef"),
    Indefinite(b"by"),
    Indefinite([1, 2]),
    Indefinite({"t": 1}),
    Raw(b"\x7f\x61a\x41b\xff"),
    Raw(b"\x9f\x9f\xff"),
    Raw(b"\x5f\xff"),
    Raw(b"\x1c"),
    Raw(b"\x1f"),
    Raw(b"\xff"),
    Raw(b"\xc0\x00"),
    Raw(b"\x61\xff"),
    Raw(b"\x62\xed\xa0"),
    Pairs(((1, 2),)),
    Pairs(((b"t", 1),)),
    Pairs(((float("nan"), 1),)),
    Pairs((([1], 1),)),
    Pairs((({"a": 1}, 1),)),
    Pairs(((None, 1), (True, 2))),
    Pairs((("a", 1), ("a", 2))),
)


# --- the fuzzer -----------------------------------------------------------------------------------


@dataclass
class Devices:
    valid: list[str]  # registered; only valid samples and events go to them
    fuzz: list[str]  # registered; adversarial messages
    cars: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)  # well-formed ids, not registered
    coap_valid: list[str] = field(default_factory=list)  # provisioned; valid CoAP uplinks only
    coap_fuzz: list[str] = field(default_factory=list)  # provisioned; adversarial CoAP requests
    # Ids the protocol refuses; all valid in a topic (Mosquitto disconnects a client for control
    # characters in one, so there are none: that is the broker's check, not the gateway's).
    invalid: tuple[str, ...] = (
        "",
        " ",
        "a b",
        "ünïcödé",
        "\U0001f6b2",
        "x" * 65,
        "$sys",
        "..",
        "a\u200bb",
        "x" * 200,
        "dev%00",
        "dev'; DROP TABLE--",
        "\ufeffdev",
        "dev\u202e",
    )


class PayloadFuzzer:
    """next() makes one message of a family drawn by weight; everything follows from the seed.

    `now_ms` anchors the times: valid samples lie in the hour before it, adversarial times are
    either well inside the accepted window or far outside it (a day ahead, a year back), never
    near its edges, so that the gateway judges them as the caller's decoder did moments earlier.
    """

    def __init__(
        self,
        seed: int,
        devices: Devices,
        now_ms: int,
        *,
        valid_share: float = 0.07,
        v3_share: float = 0.1,
    ) -> None:
        self.rng = random.Random(seed)
        self.devices = devices
        self.now_ms = now_ms
        self.v3_share = v3_share
        self._valid_t = {d: now_ms - 3_600_000 + i * 97 for i, d in enumerate(devices.valid)}
        self._event_t = {d: now_ms - 3_500_000 + i * 89 for i, d in enumerate(devices.valid)}
        rest = 1.0 - valid_share
        # Share of the adversarial messages per family; the big ones are rare (each is up to
        # 300 kB, or 1,000 samples).
        shares = {
            "json_structure": 0.20,
            "json_bytes": 0.11,
            "cbor_structure": 0.16,
            "cbor_bytes": 0.10,
            "senml": 0.11,
            "content_type": 0.06,
            "random_bytes": 0.05,
            "event": 0.08,
            "status": 0.04,
            "topic": 0.035,
            "oversize": 0.0015,
            "big_batch": 0.001,
        }
        total = sum(shares.values())
        self.families: dict[str, Callable[[], FuzzMessage]] = {
            "valid": self.valid,
            **{name: getattr(self, name) for name in shares},
        }
        self._names = list(self.families)
        self._weights = [valid_share] + [rest * w / total for w in shares.values()]

    def next(self) -> FuzzMessage:
        family = self.rng.choices(self._names, self._weights)[0]
        return self.families[family]()

    # --- helpers ----------------------------------------------------------------------------

    def _fuzz_device(self) -> str:
        return self.rng.choice(self.devices.fuzz)

    def _t_inside(self) -> int:
        # At least 10 minutes back: SenML time offsets of up to 400 s (GENERIC_VALUES) keep such
        # a time out of the edge of the 5-minute window ahead, which moves during the run.
        return self.now_ms - self.rng.randrange(600_000, 86_400_000)

    def _t_any(self) -> object:
        r = self.rng.random()
        if r < 0.6:
            return self._t_inside()
        return self.rng.choice(
            (
                self.now_ms + 86_400_000,
                self.now_ms + 10 * 365 * 86_400_000,
                0,
                -1,
                1,
                self.now_ms - 400 * 86_400_000,
                2**63 - 1,
                2**63,
                -(2**63),
                2**64,
                253_402_300_800_000,
                -(2**64) - 5,
                2**200,
                float(self.now_ms - 3_600_000),
                str(self.now_ms - 3_600_000),
                True,
                None,
                [self.now_ms - 3_600_000],
                self.now_ms * 1000,
                self.now_ms // 1000,
            )
        )

    def _sample(self, device: str) -> dict:
        return valid_sample(self.rng, self._t_inside(), device in self.devices.cars)

    def _value(self, cbor: bool) -> object:
        r = self.rng.random()
        if r < 0.55:
            return self.rng.choice(GENERIC_VALUES)
        if cbor:
            if r < 0.6:
                return shared_reference_bomb(self.rng.randrange(10, 19))
            return self.rng.choice(CBOR_NODES)
        return self.rng.choice(JSON_RAW_VALUES)

    def _deep(self, cbor: bool) -> object:
        depth = self.rng.choice((10, 100, 254, 255, 399, 400, 401, 1000, 1023, 1024, 1025, 3000))
        node: object = self.rng.choice((1, "x", None))
        if not cbor and depth > 400:  # as text: the writers recurse
            return Raw(b"[" * depth + b"1" + b"]" * depth)
        if cbor and depth > 400:
            return Raw(b"\x81" * depth + b"\x01")
        for _ in range(depth):
            node = [node] if self.rng.random() < 0.5 else {"k": node}
        return node

    def _mutate_sample(self, s: dict, cbor: bool) -> object:
        """1 to 3 structure-aware mutations of one sample object."""
        rng = self.rng
        pairs = list(s.items())
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            op = rng.random()
            if op < 0.45:  # type confusion / edge value in a known field
                name = rng.choice(SAMPLE_FIELDS)
                value = self._t_any() if name == "t" and rng.random() < 0.5 else self._value(cbor)
                pairs = [(k, v) for k, v in pairs if k != name] + [(name, value)]
            elif op < 0.55:  # a required or paired field left out
                name = rng.choice(("t", "lat", "lon", "t"))
                pairs = [(k, v) for k, v in pairs if k != name]
            elif op < 0.65:  # the same key twice, the bad value first or last
                name = rng.choice(SAMPLE_FIELDS)
                bad = (name, self._value(cbor))
                pairs = pairs + [bad] if rng.random() < 0.5 else [bad] + pairs
            elif op < 0.73:  # unknown fields: deep, long, odd keys
                key = rng.choice(
                    (
                        "x",
                        "",
                        "t\x00",
                        "T",
                        "ｔ",
                        "lat ",
                        "_",
                        "a" * 1000,
                        "\ud800" if cbor else Raw(b'"\\ud800"'),
                        "Vehicle.Speed",
                    )
                )
                pairs.append((key, self._deep(cbor)))
            elif op < 0.80:  # a key that looks like a field
                name = rng.choice(SAMPLE_FIELDS)
                alias = rng.choice(
                    (
                        name.upper(),
                        name + "\x00",
                        " " + name,
                        name + "\u200b",
                        name.replace("_", "-"),
                    )
                )
                pairs = [(alias if k == name else k, v) for k, v in pairs]
            elif op < 0.87 and cbor:  # CBOR: non-text keys, tags around the whole sample
                pairs.append((rng.choice((1, -3, b"t", 2.5, None, True)), 1))
            elif op < 0.93:  # every value a string / every value null
                how = rng.choice((str, lambda v: None, lambda v: [v]))
                pairs = [(k, how(v)) for k, v in pairs]
            else:  # values out of range but of the right type
                name = rng.choice(("lat", "lon", "soc_pct", "speed_kmh", "heading_deg"))
                pairs.append(
                    (name, rng.choice((-1e-7, 1e6, -1e6, 90.5, 180.5, 100.5, 400.5, 360.5, -0.5)))
                )
        return Pairs(tuple(pairs)) if rng.random() < 0.7 else dict(pairs)

    def _wrap(self, node: object, cbor: bool, device: str) -> object:
        """Sometimes not one sample but a batch or something that is not a sample at all."""
        rng = self.rng
        r = rng.random()
        if r < 0.6:
            return node
        if r < 0.8:
            batch = [node] + [self._sample(device) for _ in range(rng.randrange(0, 5))]
            rng.shuffle(batch)
            return batch
        return rng.choice(
            (
                [],
                [node, 1],
                [[node]],
                {"samples": [node]},
                "x",
                1,
                None,
                [None],
                Tag(55799, node) if cbor else [node],
                Indefinite([node]) if cbor else node,
                Tag(28, [node, Tag(29, 0)]) if cbor else node,
            )
        )

    def _encode(self, node: object, cbor: bool) -> bytes:
        return cbor_bytes(node, self.rng) if cbor else json_bytes(node, self.rng)

    def _damage(self, data: bytes) -> bytes:
        """1 to 4 byte-level mutations."""
        b = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 3, 4))):
            b = self.rng.choice(_DAMAGE)(self.rng, b) if b else b + b"\x00"
        return bytes(b)

    # --- families -----------------------------------------------------------------------------

    def valid(self) -> FuzzMessage:
        """A valid sample (or a small batch) of a valid device, whose keys are kept."""
        rng = self.rng
        device = rng.choice(self.devices.valid)
        samples = []
        for _ in range(1 if rng.random() < 0.8 else rng.randrange(2, 6)):
            t = self._valid_t[device] = self._valid_t[device] + 1000
            samples.append(valid_sample(rng, t, device in self.devices.cars))
        if rng.random() < 0.08:  # a valid event now and then, also kept
            t = self._event_t[device] = self._event_t[device] + 1000
            ev = {
                "t": t,
                "type": rng.choice(("tamper", "fall_detected", "battery_removed")),
                "detail": {"sensor": "lock_cable", "n": rng.randrange(100)},
            }
            cbor = rng.random() < 0.5
            return FuzzMessage(
                "valid",
                "event",
                device,
                cbor2.dumps(ev) if cbor else orjson.dumps(ev),
                rng.choice((None, "application/cbor" if cbor else "application/json")),
                valid_events=((device, t, ev["type"]),),
                protocol=4 if rng.random() < self.v3_share else 5,
            )
        keys = tuple((device, s["t"]) for s in samples)
        body: object = samples[0] if len(samples) == 1 and rng.random() < 0.7 else samples
        r = rng.random()
        if r < 0.4:
            payload, ct = orjson.dumps(body), rng.choice((None, "application/json"))
        elif r < 0.8:
            payload, ct = cbor2.dumps(body), rng.choice((None, "application/cbor"))
        else:
            cbor = r < 0.9
            payload = encode_pack(samples, cbor=cbor, base_name=f"{device}/")
            ct = "application/senml+cbor" if cbor else "application/senml+json"
            return FuzzMessage("valid", "telemetry", device, payload, ct, valid_samples=keys)
        protocol = 4 if ct is None and rng.random() < self.v3_share else 5
        return FuzzMessage(
            "valid", "telemetry", device, payload, ct, valid_samples=keys, protocol=protocol
        )

    def json_structure(self) -> FuzzMessage:
        device = self._fuzz_device()
        node = self._wrap(self._mutate_sample(self._sample(device), False), False, device)
        ct = self.rng.choice((None, None, "application/json", "application/json; charset=utf-8"))
        return FuzzMessage(
            "json_structure",
            "telemetry",
            device,
            self._encode(node, False),
            ct,
            protocol=4 if ct is None and self.rng.random() < self.v3_share else 5,
        )

    def json_bytes(self) -> FuzzMessage:
        device = self._fuzz_device()
        rng = self.rng
        body = (
            self._sample(device)
            if rng.random() < 0.7
            else [self._sample(device) for _ in range(rng.randrange(2, 6))]
        )
        return FuzzMessage(
            "json_bytes",
            "telemetry",
            device,
            self._damage(orjson.dumps(body)),
            rng.choice((None, None, "application/json")),
        )

    def cbor_structure(self) -> FuzzMessage:
        device = self._fuzz_device()
        rng = self.rng
        if rng.random() < 0.03:  # one text, thousands of references to it
            node = dict(
                self._sample(device),
                lat=string_reference_flood(rng.choice((1000, 20000)), rng.choice((100, 5000))),
            )
        else:
            node = self._mutate_sample(self._sample(device), True)
        node = self._wrap(node, True, device)
        if rng.random() < 0.1:
            node = Indefinite(node) if type(node) in (list, dict) else node
        ct = rng.choice((None, None, "application/cbor"))
        return FuzzMessage(
            "cbor_structure",
            "telemetry",
            device,
            self._encode(node, True),
            ct,
            protocol=4 if ct is None and rng.random() < self.v3_share else 5,
        )

    def cbor_bytes(self) -> FuzzMessage:
        device = self._fuzz_device()
        rng = self.rng
        body = (
            self._sample(device)
            if rng.random() < 0.7
            else [self._sample(device) for _ in range(rng.randrange(2, 6))]
        )
        r = rng.random()
        if r < 0.15:  # heads claiming far more than follows
            payload = rng.choice(
                (
                    b"\x9b" + b"\xff" * 8,
                    b"\xbb\x7f" + b"\xff" * 7,
                    b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00",
                    b"\x7a\xff\xff\xff\xff",
                    b"\x9a\x00\x0f\x42\x40" + b"\xf6" * 10,
                    b"\x81" * 100_000,
                    b"\xa1\x61t" * 5000 + b"\x01",
                    b"\x9f" * 50_000,
                    b"\xd8\x1c" * 10_000 + b"\x01",
                )
            )
        else:
            payload = self._damage(cbor2.dumps(body))
        return FuzzMessage(
            "cbor_bytes", "telemetry", device, payload, rng.choice((None, None, "application/cbor"))
        )

    def senml(self) -> FuzzMessage:
        """SenML packs with mutated records, base fields, names, units, values and times."""
        rng = self.rng
        device = self._fuzz_device()
        cbor = rng.random() < 0.5
        t0 = self._t_inside() / 1000.0
        records: list = [
            self._senml_record(i, t0, device) for i in range(rng.choice((1, 2, 3, 5, 8)))
        ]
        for _ in range(rng.choice((0, 1, 1, 2, 3))):
            self._senml_mutation(records, t0, cbor)
        if rng.random() < 0.08:
            # Near and over 1,000 samples, a second apart: after the mutations, under a base
            # time of their own in the past, so that no run of them straddles an edge of the
            # accepted window (relative times move with the moment the gateway receives them).
            n = rng.choice((999, 1000, 1001, 1500))
            records.append({"bt": t0, "n": "soc_pct", "v": 50})
            records += [{"n": "soc_pct", "v": 50, "t": -k} for k in range(1, n)]
        node: object = records
        if rng.random() < 0.05:
            node = rng.choice(({}, [], "pack", [records], {"e": records}))
        if cbor:
            node = _relabel(node, SENML_CBOR_LABELS)
        right = "application/senml+cbor" if cbor else "application/senml+json"
        wrong = "application/senml+json" if cbor else "application/senml+cbor"
        ct = rng.choice((right,) * 6 + (wrong, None, "application/senml-exi", right.upper()))
        return FuzzMessage("senml", "telemetry", device, self._encode(node, cbor), ct)

    def _senml_record(self, i: int, t0: float, device: str) -> dict:
        rng = self.rng
        name = rng.choice(list(SENML_NAMES))
        rec: dict = {"n": rng.choice(SENML_NAMES[name])}
        if name in ("locked", "charging"):
            rec["vb"] = rng.random() < 0.5
        else:
            rec["v"] = round(rng.uniform(0, 50), 3)
            unit = rng.choice(SENML_UNITS[name])
            if unit is not None:
                rec["u"] = unit
        if i == 0:
            rec["bt"] = t0
            if rng.random() < 0.5:
                rec["bn"] = f"urn:dev:{device}:"
        elif rng.random() < 0.3:
            rec["t"] = rng.choice((1, 2, 0.001, -1))
        return rec

    def _senml_mutation(self, records: list, t0: float, cbor: bool) -> None:
        rng = self.rng
        rec = rng.choice(records[:8])
        if type(rec) is not dict:
            return
        op = rng.random()
        if op < 0.35:
            label = rng.choice(
                ("bver", "bn", "bt", "bu", "bv", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut")
            )
            value = self._value(cbor)
            if label in ("bt", "t") and rng.random() < 0.5:
                # Relative times and far-off ones: never near the accepted window's edges.
                value = rng.choice(
                    (
                        0,
                        -60,
                        -3600.5,
                        10**7,
                        2**28 - 1,
                        2**28,
                        -(2**40),
                        1e299,
                        -1e299,
                        t0 + 86400 * 400,
                    )
                )
            rec[label] = value
        elif op < 0.45:
            rec[rng.choice(("x_", "foo_", "bn_", "n_"))] = 1  # must-understand labels
        elif op < 0.55:
            rec.pop(rng.choice(("n", "v", "vb", "bt", "u")), None)
        elif op < 0.62:
            rec["bver"] = rng.choice((0, 10, 11, -1, 2**70, 10.0, True, "10"))
        elif op < 0.7:
            records.append(rng.choice(([], 1, None, "x", [rec], {})))
        elif op < 0.78:
            rec["u"] = rng.choice(("", "K", "%RH", "dBm", "lat", "rad", "m/s", "Cel", "ms"))
        else:
            rec["v"] = rng.choice(
                (
                    Half(float("nan")) if cbor else Raw(b"NaN"),
                    10**400 if cbor else Raw(b"1e400"),
                    "5",
                    True,
                    [5],
                    {"v": 5},
                )
            )

    def content_type(self) -> FuzzMessage:
        """Valid-looking payloads under a content type that does not fit them."""
        rng = self.rng
        device = self._fuzz_device()
        sample = self._sample(device)
        cbor = rng.random() < 0.5
        payload = cbor2.dumps(sample) if cbor else orjson.dumps(sample)
        ct = rng.choice(
            (
                "application/json" if cbor else "application/cbor",
                "text/plain",
                "application/octet-stream",
                "",
                " ",
                ";",
                "application/json;",
                "application/senml+json",
                "application/senml+cbor",
                "APPLICATION/JSON",
                "application/json ; q=1",
                "application/x-json",
                "json",
                "é/ü",
                "application/" + "j" * 5000,
                "\U0001f6b2",
                "application/cbor-seq",
                "application/vnd.fleetgate+json",
                "multipart/mixed; boundary=x",
            )
        )
        return FuzzMessage("content_type", "telemetry", device, payload, ct)

    def random_bytes(self) -> FuzzMessage:
        rng = self.rng
        n = rng.choice((0, 1, 2, 3, 8, 64, 512, 4096, rng.randrange(0, 2000)))
        payload = rng.randbytes(n)
        if rng.random() < 0.3 and n:  # starting like JSON or CBOR so it gets parsed
            payload = rng.choice((b"{", b"[", b" ", b"\xa1", b"\x81", b"\xd9\xd9\xf7")) + payload
        return FuzzMessage(
            "random_bytes",
            rng.choice(("telemetry", "telemetry", "event")),
            self._fuzz_device(),
            payload,
            rng.choice((None, None, "application/json", "application/cbor")),
        )

    def event(self) -> FuzzMessage:
        rng = self.rng
        device = self._fuzz_device()
        cbor = rng.random() < 0.5
        ev: dict = {
            "t": self._t_inside(),
            "type": rng.choice(("tamper", "crash", "door_open")),
            "detail": {"sensor": "x", "n": 1},
        }
        op = rng.random()
        if op < 0.25:
            ev[rng.choice(("t", "type", "detail"))] = (
                self._t_any() if rng.random() < 0.3 else self._value(cbor)
            )
        elif op < 0.45:  # a detail the store cannot hold, or only just can
            ev["detail"] = rng.choice(
                (
                    {"a": "\x00"},
                    {"\x00": 1},
                    {"n": 2**64},
                    {"n": 2**64 - 1},
                    {"n": -(2**63) - 1},
                    {"n": 1e308},
                    {"deep": self._deep(cbor)},
                    {"s": "é" * 1000},
                    {"n": Raw(b"NaN") if not cbor else Half(float("inf"))},
                    {"b": b"\x00" if cbor else "b"},
                    {"d": Tag(1, 1.5) if cbor else 1},
                    {"u": UNDEFINED if cbor else None},
                    {"k": Pairs(((1, 2),)) if cbor else {}},
                    {"bomb": shared_reference_bomb(rng.randrange(10, 40)) if cbor else []},
                    {"flood": string_reference_flood(20000, 5000) if cbor else ""},
                    {"big": Tag(2, b"\x01" * 3000) if cbor else Raw(b"9" * 5000)},
                    {"r": Tag(30, [2**2000, 1]) if cbor else 1},
                    [],
                    "x",
                    None,
                )
            )
        elif op < 0.6:
            ev["type"] = rng.choice(
                ("", "Tamper", "a" * 49, "a" * 48, "x-y", "é", "\x00", 7, None, "tamper\n")
            )
        elif op < 0.7:
            ev = rng.choice(([ev] * rng.randrange(1, 20), [ev, 1], [], [[ev]], "x", None))
        elif op < 0.8:
            ev.pop(rng.choice(("t", "type")))
        node = Pairs(tuple(ev.items())) if type(ev) is dict and rng.random() < 0.5 else ev
        payload = self._encode(node, cbor)
        if rng.random() < 0.1:
            payload = self._damage(payload)
        ct = rng.choice(
            (
                None,
                "application/cbor" if cbor else "application/json",
                "application/senml+json",
                "text/plain",
            )
        )
        return FuzzMessage("event", "event", device, payload, ct)

    def status(self) -> FuzzMessage:
        rng = self.rng
        device = rng.choice(self.devices.fuzz + self.devices.unknown)
        cbor = rng.random() < 0.3
        st: object = {"online": rng.random() < 0.5, "t": self._t_inside(), "fw": "1.4.2"}
        op = rng.random()
        if op < 0.4:
            st[rng.choice(("online", "t", "fw"))] = (
                self._t_any() if rng.random() < 0.3 else self._value(cbor)
            )
        elif op < 0.5:
            st["t"] = rng.choice((-1, 0, 253_402_300_799_999, 253_402_300_800_000, 2**63))
        elif op < 0.6:
            st = rng.choice(([st], "online", None, [], 1, {"online": "true"}, {}))
        payload = self._encode(st, cbor)
        if op > 0.9:
            payload = rng.choice((b"", self._damage(payload)))
        return FuzzMessage(
            "status",
            "status",
            device,
            payload,
            rng.choice((None, "application/cbor" if cbor else "application/json")),
            retain=rng.random() < 0.3,
        )

    def topic(self) -> FuzzMessage:
        """Valid payloads on topics of unknown or invalid device ids, or not subscribed at all."""
        rng = self.rng
        payload = orjson.dumps(valid_sample(rng, self._t_inside(), False))
        r = rng.random()
        kind = rng.choice(("telemetry", "telemetry", "event", "status"))
        if r < 0.45:
            return FuzzMessage("topic", kind, rng.choice(self.devices.unknown), payload)
        if r < 0.9:
            return FuzzMessage("topic", kind, rng.choice(self.devices.invalid), payload)
        device = self._fuzz_device()
        # Not subscribed: the gateway never sees these (and must not count them).
        kind = rng.choice(("cmd", "telemetry/extra", "Telemetry", "events", "cmd/result"))
        return FuzzMessage("topic", kind, device, payload, subscribed=False)

    def oversize(self) -> FuzzMessage:
        """Payloads just under, at and over the 256 KiB limit (the broker takes up to 300 kB)."""
        rng = self.rng
        device = self._fuzz_device()
        size = MAX_PAYLOAD_BYTES + rng.choice((-1000, -1, 0, 1, 2, 1000, 30_000))
        sample = self._sample(device)
        if rng.random() < 0.5:  # CBOR: one text pads the map to the exact size
            overhead = len(cbor2.dumps({**sample, "pad": "x" * 100_000})) - 100_000
            payload = cbor2.dumps({**sample, "pad": "x" * (size - overhead)})
        else:
            head = orjson.dumps(sample)[:-1] + b',"pad":"'
            payload = head + b"x" * (size - len(head) - 2) + b'"}'
        assert len(payload) == size
        return FuzzMessage("oversize", "telemetry", device, payload, None)

    def big_batch(self) -> FuzzMessage:
        """Batches of 999 to 1,001 samples: valid, repeated, partly broken."""
        rng = self.rng
        device = self._fuzz_device()
        n = rng.choice((999, 1000, 1001))
        t = self._t_inside()
        how = rng.random()
        if how < 0.4:  # one sample repeated (duplicates of one key)
            samples = [valid_sample(rng, t, False)] * n
        else:
            samples = [valid_sample(rng, t - k, False) for k in range(n)]
            if how < 0.8:
                for k in rng.sample(range(n), rng.randrange(1, 50)):
                    samples[k] = dict(samples[k], soc_pct=rng.choice((101, "x", None, -1)))
        cbor = rng.random() < 0.5
        return FuzzMessage(
            "big_batch",
            "telemetry",
            device,
            cbor2.dumps(samples) if cbor else orjson.dumps(samples),
            None,
        )


def _truncated(rng: random.Random, b: bytearray) -> bytearray:
    return b[: rng.randrange(len(b))]


def _bit_flipped(rng: random.Random, b: bytearray) -> bytearray:
    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return b


def _inserted(rng: random.Random, b: bytearray) -> bytearray:
    i = rng.randrange(len(b) + 1)
    b[i:i] = rng.choice(
        (
            bytes((rng.randrange(256),)),
            b"\x00",
            b"\xff",
            b'"',
            b"{",
            b"]",
            b"\\",
            b"\xed\xa0\x80",
            b"\x9f",
            b"\xbf",
        )
    )
    return b


def _range_deleted(rng: random.Random, b: bytearray) -> bytearray:
    i = rng.randrange(len(b))
    del b[i : i + rng.randrange(1, 16)]
    return b


def _range_repeated(rng: random.Random, b: bytearray) -> bytearray:
    i = rng.randrange(len(b))
    b[i:i] = b[i : i + rng.randrange(1, 32)] * rng.randrange(1, 4)
    return b


def _garbage_after(rng: random.Random, b: bytearray) -> bytearray:
    return b + rng.choice((b"x", b"\x00", b" ", b"}", b"\xff", rng.randbytes(8), b"{}"))


def _something_before(rng: random.Random, b: bytearray) -> bytearray:
    head = (b"\xef\xbb\xbf", b" ", b"\x00", b"\xd9\xd9\xf7", b"\n\r\t", b"\xc0\x80", b"\x80")
    return bytearray(rng.choice(head)) + b


def _byte_replaced(rng: random.Random, b: bytearray) -> bytearray:
    b[rng.randrange(len(b))] = rng.choice(
        (0x00, 0x1B, 0x1F, 0x5F, 0x7F, 0x9F, 0xBF, 0xFF, 0xF7, 0xC2, 0x22, 0x5C, 0x30, 0x2D)
    )
    return b


def _halves_swapped(rng: random.Random, b: bytearray) -> bytearray:
    i = rng.randrange(len(b) + 1)
    return b[i:] + b[:i]


_DAMAGE = (
    _truncated,
    _bit_flipped,
    _inserted,
    _range_deleted,
    _range_repeated,
    _garbage_after,
    _something_before,
    _byte_replaced,
    _halves_swapped,
)


def _relabel(node: object, labels: dict[str, int]) -> object:
    """A SenML pack with CBOR's integer labels where RFC 8428 has one."""
    if type(node) is list:
        return [_relabel(r, labels) for r in node]
    if type(node) is dict:
        return {labels.get(k, k): v for k, v in node.items()}
    return node


assert MAX_SAMPLES_PER_MESSAGE == 1000  # big_batch's sizes are chosen around it
