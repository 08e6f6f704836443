"""The checked positions kept for the writing pass: the same rows back, in order, whether they
stayed in memory or went to the temporary file, and the file gone after close()."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from migration.kept import KeptChunks
from migration.records import PositionColumns
from telemetry.batch import TelemetryBatch


def chunk(start: int, n: int, devices: list[str]) -> PositionColumns:
    index = np.arange(start, start + n)
    return PositionColumns(
        list(devices),
        (index % len(devices)).astype(np.int32),
        {
            "time_ms": index.astype(np.int64) * 1000,
            "lat": index * 1e-6 + 52.123456789,
            "speed_kmh": np.where(index % 3 == 0, np.nan, index * 0.5),
            "ignition": (index % 3 - 1).astype(np.int8),
        },
    )


def read_back(kept: KeptChunks) -> list[PositionColumns]:
    return [mapped.rows for mapped in kept]


def assert_same(got: list[PositionColumns], want: list[PositionColumns]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.devices == w.devices
        np.testing.assert_array_equal(g.device, w.device)
        assert set(g.columns) == set(w.columns)
        for name, values in w.columns.items():
            dtype = TelemetryBatch.DTYPES[name]
            assert g.columns[name].dtype == dtype
            np.testing.assert_array_equal(g.columns[name], values.astype(dtype))


def test_chunks_past_the_memory_bound_go_to_a_file_and_come_back_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again
    devices = ["dev-a", "dev-b", "dev-c"]
    chunks = [chunk(i * 1000, 1000, devices) for i in range(5)]
    kept = KeptChunks(memory_bytes=2 * 1000 * 30)  # two chunks fit, three go to the file
    for c in chunks:
        kept.add(c)
    kept.add(chunk(0, 0, devices))  # an empty chunk adds nothing
    assert kept.rows == 5000 and kept.bytes_in_memory > 0 and kept.bytes_spilled > 0
    files = list(Path(tmp_path).glob("fleetgate-import-*"))
    assert len(files) == 1
    assert_same(read_back(kept), chunks)
    assert_same(read_back(kept), chunks)  # read again: the same
    kept.close()
    assert not files[0].exists()


def test_rows_within_the_bound_stay_in_memory_and_share_one_device_list():
    devices = [f"dev-{i}" for i in range(100)]
    chunks = [chunk(i * 10, 10, devices) for i in range(3)]
    kept = KeptChunks()
    for c in chunks:
        kept.add(c)
    assert kept.bytes_spilled == 0
    got = read_back(kept)
    assert_same(got, chunks)
    assert got[0].devices is got[1].devices is got[2].devices
    kept.close()
