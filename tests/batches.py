"""Telemetry batches written by hand, for the store, the cores and the API: a batch from sample
dicts, and the clock and time units the tests that build them share."""

from __future__ import annotations

import time
from datetime import datetime

from telemetry.batch import TelemetryBatch

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def now_ms() -> int:
    return int(time.time() * 1000)


def ms(t: datetime | None) -> int | None:
    """A timestamp the database gave back, in ms since the epoch."""
    return None if t is None else round(t.timestamp() * 1000)


def make_batch(rows: list[dict]) -> TelemetryBatch:
    """A batch from sample dicts (keys are batch columns, `t` for time_ms), received now; what a
    row leaves out is unknown (NaN / UNKNOWN), as the decoder leaves it."""
    b = TelemetryBatch.empty(len(rows))
    b.received_ms[:] = now_ms()
    for i, row in enumerate(rows):
        for key, value in row.items():
            getattr(b, "time_ms" if key == "t" else key)[i] = value
    return b
