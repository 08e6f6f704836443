"""A legacy device's payload dialect, as the simulated TCU writes it.

The simulator reads the same TOML mapping the gateway reads (docs/dialects.md) but encodes with
its own code: it imports nothing of the backend, so a test that has it speak a dialect checks
the backend's decoder against an encoder written apart. Only what encoding needs is read here;
the backend checks the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

# Per unit, how many of it one protocol unit is worth (the inverse of the backend's factors).
_PER_PROTOCOL_UNIT = {
    "knot": 1 / 1.852,
    "m/s": 1 / 3.6,
    "mph": 1 / 1.609344,
    "fraction": 0.01,
    "mV": 1000.0,
    "mA": 1000.0,
    "km": 0.001,
    "mi": 1 / 1609.344,
}


@dataclass(frozen=True, slots=True)
class DialectEncoder:
    name: str
    topic_pattern: str
    samples_path: tuple[str, ...]
    time_path: tuple[str, ...]
    time_format: str
    fields: tuple[tuple[str, tuple[str, ...], float], ...]  # (sample field, path, factor)

    @classmethod
    def load(cls, path: str | Path) -> DialectEncoder:
        """From a dialect's TOML file."""
        m = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        fields = []
        for target, f in m["fields"].items():
            f = {"path": f} if isinstance(f, str) else f
            factor = _PER_PROTOCOL_UNIT.get(f.get("unit", ""), 1.0)
            fields.append((target, tuple(f["path"].split(".")), factor))
        samples = m["dialect"].get("samples", "")
        return cls(
            m["dialect"]["name"],
            m["dialect"]["topic"],
            tuple(samples.split(".")) if samples else (),
            tuple(m["time"]["field"].split(".")),
            m["time"]["format"],
            tuple(fields),
        )

    def topic(self, device_id: str) -> str:
        return self.topic_pattern.replace("{device_id}", device_id)

    def encode(self, samples: list[dict]) -> bytes:
        """One message holding protocol samples (t in ms, the protocol's names and units)."""
        return self.encode_objects([self._object(s) for s in samples])

    def fragment(self, native: bytes) -> bytes:
        """A native single-sample JSON payload (firmware_sim.payloads) in this dialect: the
        simulated fleet computes its samples once and speaks either."""
        return self.encode([orjson.loads(native)])

    def batch(self, fragments: list[bytes]) -> bytes:
        """Several of fragment()'s payloads as one message, oldest first as given."""
        if not self.samples_path:
            return b"[" + b",".join(fragments) + b"]"
        objs = [orjson.loads(f) for f in fragments]
        for key in self.samples_path:
            objs = [o[key] for o in objs]
        return self.encode_objects(objs)

    def encode_objects(self, objs: list[dict]) -> bytes:
        body: object = objs[0] if len(objs) == 1 else objs
        for key in reversed(self.samples_path):
            body = {key: body}
        return orjson.dumps(body)

    def _object(self, sample: dict) -> dict:
        out: dict = {}
        _put(out, self.time_path, _time(sample["t"], self.time_format))
        for target, path, factor in self.fields:
            value = sample.get(target)
            if value is None:
                continue
            if factor != 1.0 and not isinstance(value, bool):
                value = value * factor
            _put(out, path, value)
        return out


def _put(obj: dict, path: tuple[str, ...], value: object) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
    obj[path[-1]] = value


def _time(t_ms: int, fmt: str) -> object:
    if fmt == "epoch_ms":
        return t_ms
    if fmt == "epoch_s":
        return t_ms / 1000
    return datetime.fromtimestamp(t_ms / 1000, UTC).isoformat(timespec="milliseconds")
