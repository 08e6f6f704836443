"""The simulator's samples as the pipeline's columnar batch, for feeding the gateway's cores
(plausibility, battery) straight from the fleet model, without a broker or a decoder.

The conversion lives with the tests: the simulator is a device and knows nothing of the batch.
"""

from __future__ import annotations

import numpy as np

from firmware_sim.sensors import Samples
from firmware_sim.specs import CAR
from telemetry.batch import FLOAT_COLUMNS, TelemetryBatch

_MEASUREMENTS = ("lat", "lon", *FLOAT_COLUMNS, "odometer_m")


def as_batch(samples: Samples, vehicle: np.ndarray | None = None) -> TelemetryBatch:
    """One row per vehicle (vehicle ids default to 0..n-1); the fields a kind does not report
    (e-bikes: 12 V, ignition, immobiliser) stay missing, as the decoder leaves them."""
    n = len(samples)
    b = TelemetryBatch.empty(n)
    b.vehicle[:] = np.arange(n) if vehicle is None else vehicle
    b.time_ms[:] = samples.t_ms
    for name in _MEASUREMENTS:
        getattr(b, name)[:] = getattr(samples, name)
    car = samples.kind == CAR
    b.locked[:] = samples.locked
    b.charging[:] = samples.charging
    b.ignition[car] = samples.ignition[car]
    b.immobilised[car] = samples.immobilised[car]
    return b
