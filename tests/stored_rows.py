"""Reading back what the store wrote: rows as dicts, and the check that samples_between returns
exactly the samples written, which both storage kinds (native partitions, TimescaleDB) pass."""

from __future__ import annotations

import numpy as np
import psycopg
from psycopg.rows import dict_row

from telemetry.batch import UNKNOWN, TelemetryBatch
from telemetry.store import TelemetryStore
from tests.batches import make_batch


async def fetch(dsn: str, query: str, *params) -> list[dict]:
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        return await (await conn.execute(query, params)).fetchall()


def replay_rows(t0: int, vehicles: list[int]) -> TelemetryBatch:
    """Samples of several vehicles with every kind of column, some values missing."""
    rows = []
    for k in range(40):
        for j, v in enumerate(vehicles):
            rows.append(
                {
                    "vehicle": v,
                    "t": t0 + k * 1000 + j,
                    "lat": 52.5 + k * 1e-4,
                    "lon": 13.4,
                    "speed_kmh": 12.5,
                    "heading_deg": 90.0,
                    "soc_pct": 80 - k * 0.1,
                    "pack_v": 38.25,
                    "pack_a": 4.5 if k % 3 else 0,
                    "aux_v": 12.6 if j == 1 else np.nan,
                    "odometer_m": 1e6 + 5.0 * k,
                    "locked": k % 2,
                    "ignition": UNKNOWN if j else 1,
                    "immobilised": 0,
                    "charging": 0,
                    "flags": 1 if k == 7 else 0,
                }
            )
    return make_batch(rows)


async def assert_samples_between_reads_back_what_was_written(
    store: TelemetryStore, vehicles: list[int], t0: int, before_read=None
) -> None:
    written = replay_rows(t0, vehicles)
    await store.write(written)
    if before_read is not None:
        await before_read()
    a, b, c = vehicles
    # a: samples 10..39; b: samples 5..19; c: none (its range is empty).
    ranges = {a: (t0 + 9_000, t0 + 60_000), b: (t0 + 4_001, t0 + 19_001), c: (t0, t0)}
    got = TelemetryBatch.concat([x async for x in store.samples_between(ranges, page=17)])
    keep = np.zeros(len(written), dtype=bool)
    for v, (since, until) in ranges.items():
        keep |= (written.vehicle == v) & (written.time_ms > since) & (written.time_ms <= until)
    want = written.take(keep)
    order = np.lexsort((want.vehicle, want.time_ms))  # what samples_between promises
    want = want.take(order)
    assert len(got) == 30 + 15 and np.all(np.diff(got.time_ms) >= 0)
    for name, column in want.columns().items():
        if name == "received_ms":
            continue  # stored as the gateway's receipt time; not compared
        np.testing.assert_array_equal(getattr(got, name), column, err_msg=name)
        assert getattr(got, name).dtype == column.dtype, name
