"""The columnar batch: many samples of many vehicles as one set of numpy arrays.

Every stage after decoding (plausibility, geofence, battery, store) works on a TelemetryBatch,
never on one Python object per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

# Tri-state flags (locked, ignition, immobilised, charging) are int8: UNKNOWN when the device did
# not report the field, else 0/1. Measurements are float with NaN for "not reported".
UNKNOWN = np.int8(-1)

# Bits of TelemetryBatch.flags; stored as-is in positions.flags.
FLAG_IMPLAUSIBLE_JUMP = np.int16(1)  # the fix implies a speed no vehicle of its type can reach

FLOAT_COLUMNS = ("speed_kmh", "heading_deg", "soc_pct", "pack_v", "pack_a", "aux_v")
STATE_COLUMNS = ("locked", "ignition", "immobilised", "charging")


@dataclass(slots=True)
class TelemetryBatch:
    """Samples in columns; row i of every array is one sample.

    vehicle      int32    vehicles.id (the registry's surrogate key)
    time_ms      int64    sample time, ms since the Unix epoch, UTC (device clock)
    lat, lon     float64  WGS 84 degrees; NaN when the sample has no fix
    speed_kmh    float32  ground speed, km/h
    heading_deg  float32  0..360, clockwise from true north
    soc_pct      float32  traction battery state of charge, 0..100 %
    pack_v       float32  traction battery voltage, V
    pack_a       float32  traction battery current, A (positive = discharging)
    aux_v        float32  12 V auxiliary battery voltage, V (cars)
    odometer_m   float64  total distance, m
    locked, ignition, immobilised, charging   int8  UNKNOWN (-1), 0 or 1
    flags        int16    FLAG_* bits set by the pipeline
    received_ms  int64    when the gateway received the message, ms since epoch
    """

    vehicle: np.ndarray
    time_ms: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    speed_kmh: np.ndarray
    heading_deg: np.ndarray
    soc_pct: np.ndarray
    pack_v: np.ndarray
    pack_a: np.ndarray
    aux_v: np.ndarray
    odometer_m: np.ndarray
    locked: np.ndarray
    ignition: np.ndarray
    immobilised: np.ndarray
    charging: np.ndarray
    flags: np.ndarray
    received_ms: np.ndarray

    DTYPES = {
        "vehicle": np.int32,
        "time_ms": np.int64,
        "lat": np.float64,
        "lon": np.float64,
        **{name: np.float32 for name in FLOAT_COLUMNS},
        "odometer_m": np.float64,
        **{name: np.int8 for name in STATE_COLUMNS},
        "flags": np.int16,
        "received_ms": np.int64,
    }

    def __len__(self) -> int:
        return len(self.time_ms)

    @classmethod
    def empty(cls, n: int = 0) -> TelemetryBatch:
        """A batch of n rows with every measurement missing (NaN / UNKNOWN)."""
        cols = {}
        for name, dtype in cls.DTYPES.items():
            if np.issubdtype(dtype, np.floating):
                cols[name] = np.full(n, np.nan, dtype=dtype)
            elif name in STATE_COLUMNS:
                cols[name] = np.full(n, UNKNOWN, dtype=dtype)
            else:
                cols[name] = np.zeros(n, dtype=dtype)
        return cls(**cols)

    @classmethod
    def concat(cls, batches: list[TelemetryBatch]) -> TelemetryBatch:
        if not batches:
            return cls.empty()
        return cls(
            **{f.name: np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(cls)}
        )

    def take(self, index: np.ndarray) -> TelemetryBatch:
        """Rows selected by an integer index or a boolean mask, as a new batch."""
        return TelemetryBatch(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def latest_per_vehicle(self) -> np.ndarray:
        """Index of the newest sample of each vehicle in the batch (ties: the later row)."""
        if len(self) == 0:
            return np.empty(0, dtype=np.intp)
        order = np.lexsort((self.time_ms, self.vehicle))
        v = self.vehicle[order]
        last = np.ones(len(v), dtype=bool)
        last[:-1] = v[1:] != v[:-1]
        return order[last]


@dataclass(slots=True, frozen=True)
class DeviceEvent:
    """One event a device reported on its event topic (docs/protocol.md, "Device events")."""

    vehicle: int
    time_ms: int
    type: str
    detail: dict | None = None
    source: str = "device"
