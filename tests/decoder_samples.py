"""A native telemetry sample as the decoder tests write it, and the registry and clock they
decode against (tests/telemetry/test_decoder*.py)."""

from __future__ import annotations

NOW = 1_764_412_800_000
REGISTRY = {"bike-1": 1, "car-2": 2}

# A field given as DROP is left out of the sample.
DROP = object()


def sample(**over):
    s = {
        "t": NOW - 1000,
        "lat": 52.52,
        "lon": 13.405,
        "speed_kmh": 17.5,
        "heading_deg": 84.0,
        "soc_pct": 71.5,
        "pack_v": 38.9,
        "pack_a": 6.2,
        "aux_v": 12.6,
        "odometer_m": 1289034,
        "locked": False,
        "ignition": True,
        "immobilised": False,
        "charging": False,
    }
    s.update(over)
    return {k: v for k, v in s.items() if v is not DROP}
