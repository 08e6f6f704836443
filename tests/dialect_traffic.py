"""Legacy traffic for the dialect tests: protocol samples, and the shipped dialects' files as the
simulated devices read them (firmware_sim's own encoder)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from firmware_sim.dialect import DialectEncoder
from telemetry.dialect import SHIPPED


def shipped_path(name: str) -> Path:
    assert name in SHIPPED
    return Path(str(resources.files("telemetry").joinpath(f"dialects/{name}.toml")))


def encoder(name: str) -> DialectEncoder:
    return DialectEncoder.load(shipped_path(name))


def full_samples(t0: int, n: int, i: int = 0) -> list[dict]:
    """n samples one second apart with every field the protocol has (values as a TCU rounds)."""
    return [
        {
            "t": t0 + k * 1000,
            "lat": round(52.5 + i * 1e-3 + k * 1e-5, 6),
            "lon": round(13.4 + k * 1e-5, 6),
            "speed_kmh": round(10.0 + k * 0.5, 1),
            "heading_deg": round((k * 7.5) % 360, 1),
            "soc_pct": round(80.0 - k * 0.25, 2),
            "pack_v": 48.2,
            "pack_a": -3.5,
            "aux_v": round(12.6 - k * 0.01, 3),
            "odometer_m": 12_000 + k * 5,
            "locked": k % 2 == 0,
            "ignition": k % 3 == 0,
            "immobilised": False,
            "charging": k % 4 == 0,
        }
        for k in range(n)
    ]


def mapped_fields(name: str) -> set[str]:
    """The sample fields a shipped dialect carries (the others it cannot express)."""
    return {target for target, _, _ in encoder(name).fields}


def as_dialect_can_say(samples: list[dict], name: str) -> list[dict]:
    """The samples with only what the dialect carries: what the native protocol stores of them
    to compare with."""
    keep = mapped_fields(name) | {"t"}
    return [{k: v for k, v in s.items() if k in keep} for s in samples]
