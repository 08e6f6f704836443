"""The mapped positions of an import's checking pass, kept for its writing pass so that the
export is read and mapped once, not twice.

Each chunk's columns are kept in the dtypes of telemetry.batch.TelemetryBatch (the write casts
to them anyway, so nothing changes): about 80 bytes a row. Up to `memory_bytes` they stay in
memory; the chunks beyond go to one temporary file of numpy arrays (np.save, one after the
other), read back in order by the writing pass and removed when the import ends.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from migration.records import MappedPositions, PositionColumns
from telemetry.batch import TelemetryBatch

# 10 M rows are about 0.8 GB: a 2 GiB bound keeps an export of some 25 M rows in memory, and
# a larger one costs disk, not memory.
DEFAULT_MEMORY_BYTES = 2 << 30


def compact(rows: PositionColumns) -> PositionColumns:
    """The columns in TelemetryBatch's dtypes (float64 -> float32 where the batch keeps float32,
    tristates int8), device as int32."""
    dtypes = TelemetryBatch.DTYPES
    columns = {
        name: values.astype(dtypes.get(name, values.dtype), copy=False)
        for name, values in rows.columns.items()
    }
    return PositionColumns(rows.devices, rows.device.astype(np.int32, copy=False), columns)


def _size(rows: PositionColumns) -> int:
    return rows.device.nbytes + sum(v.nbytes for v in rows.columns.values())


class KeptChunks:
    """Mapped chunks in the order added, in memory up to memory_bytes, then in a temporary file.
    Iterate it (once or again) for MappedPositions holding the rows only; close() removes the
    file."""

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.memory_bytes = memory_bytes
        self.rows = 0
        self.bytes_in_memory = 0
        self.bytes_spilled = 0
        self._in_memory: list[PositionColumns] = []
        self._spilled: list[tuple[list[str], tuple[str, ...]]] = []  # devices, column names
        self._devices: list[str] = []
        self._file: BinaryIO | None = None
        self._path: Path | None = None

    def add(self, rows: PositionColumns) -> None:
        if not len(rows):
            return
        rows = compact(rows)
        # the device list is the export's, equal for every chunk: keep one copy of it
        if self._devices == rows.devices:
            rows = PositionColumns(self._devices, rows.device, rows.columns)
        self._devices = rows.devices
        self.rows += len(rows)
        size = _size(rows)
        if not self._spilled and self.bytes_in_memory + size <= self.memory_bytes:
            self._in_memory.append(rows)
            self.bytes_in_memory += size
            return
        if self._file is None:
            handle, name = tempfile.mkstemp(prefix="fleetgate-import-", suffix=".npy")
            self._path = Path(name)
            self._file = open(handle, "w+b")  # noqa: SIM115 (closed by close())
        np.save(self._file, rows.device, allow_pickle=False)
        for values in rows.columns.values():
            np.save(self._file, values, allow_pickle=False)
        self._spilled.append((rows.devices, tuple(rows.columns)))
        self.bytes_spilled += size

    def __iter__(self) -> Iterator[MappedPositions]:
        for rows in self._in_memory:
            yield MappedPositions(rows)
        if self._file is None:
            return
        self._file.flush()
        self._file.seek(0)
        for devices, names in self._spilled:
            device = np.load(self._file, allow_pickle=False)
            columns = {name: np.load(self._file, allow_pickle=False) for name in names}
            yield MappedPositions(PositionColumns(devices, device, columns))

    def close(self) -> None:
        self._in_memory, self._spilled = [], []
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
