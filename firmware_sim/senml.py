"""SenML packs (RFC 8428) as the simulated NB-IoT locks write them (docs/coap.md, "SenML").

One record per reported field, named by the protocol's field name with its RFC 8428 unit;
booleans as `vb`. The first record carries the base time (the first sample's, Unix seconds) and
later samples' records their offset `t` from it, so records of one time make one sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cbor2
import orjson

# The unit a lock writes each numeric field in (docs/coap.md's table lists what the gateway takes).
UNITS: Mapping[str, str] = {
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
# SenML-CBOR's integer labels (RFC 8428, section 6) for the labels a lock writes.
CBOR_LABELS: Mapping[str, int] = {"bn": -2, "bt": -3, "n": 0, "u": 1, "v": 2, "vb": 4, "t": 6}


def _record(name: str, value: Any, offset_s: float) -> dict[str, Any]:
    if isinstance(value, bool):
        record: dict[str, Any] = {"n": name, "vb": value}
    else:
        record = {"n": name, "u": UNITS[name], "v": value}
    if offset_s:
        record["t"] = offset_s
    return record


def senml_pack(
    samples: Sequence[Mapping[str, Any]], *, cbor: bool = True, base_name: str = ""
) -> bytes:
    """Protocol sample objects (oldest first, each with its `t` in ms) as one pack, SenML-CBOR
    (Content-Format 112) or SenML-JSON (110); fields that are None are not reported."""
    if not samples:
        raise ValueError("a SenML pack holds at least one sample")
    t0_ms = samples[0]["t"]
    records = [
        _record(name, value, (sample["t"] - t0_ms) / 1000.0)
        for sample in samples
        for name, value in sample.items()
        if name != "t" and value is not None
    ]
    if not records:
        raise ValueError("the samples report no field")
    base = {"bn": base_name} if base_name else {}
    base["bt"] = t0_ms / 1000.0
    records[0] = base | records[0]
    if cbor:
        return cbor2.dumps([{CBOR_LABELS[k]: v for k, v in r.items()} for r in records])
    return orjson.dumps(records)
