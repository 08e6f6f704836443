"""PostgreSQL's binary COPY format built from numpy columns, with no Python object per value.

Each column becomes big-endian fixed-width values behind a length word (-1 for NULL); the
whole stream, signature to trailer, is assembled by a few vectorised copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# PostgreSQL's epoch (2000-01-01 UTC) in Unix ms: timestamptz travels as int64 microseconds
# since then.
_PG_EPOCH_MS = 946_684_800_000

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"


@dataclass(frozen=True, slots=True)
class Field:
    """One column in wire form: big-endian fixed-width values and where they are NULL."""

    values: np.ndarray  # big-endian dtype, one value per row (ignored where null)
    null: np.ndarray | None = None  # bool, True = NULL; None = no NULLs


def timestamptz(ms: np.ndarray, null: np.ndarray | None = None) -> Field:
    """ms since the Unix epoch -> timestamptz."""
    us = (np.asarray(ms, dtype=np.int64) - _PG_EPOCH_MS) * 1000
    return Field(us.astype(">i8"), null)


def float8(a: np.ndarray) -> Field:
    """float -> double precision; NaN -> NULL."""
    return _floating(a, ">f8")


def float4(a: np.ndarray) -> Field:
    """float -> real; NaN -> NULL."""
    return _floating(a, ">f4")


def _floating(a: np.ndarray, dtype: str) -> Field:
    null = np.isnan(a)
    return Field(np.asarray(a).astype(dtype), null if null.any() else None)


def tristate(a: np.ndarray) -> Field:
    """int8 UNKNOWN (-1) / 0 / 1 -> NULL / false / true."""
    null = a < 0
    return Field((a > 0).astype(np.uint8), null if null.any() else None)


def int2(a: np.ndarray) -> Field:
    return Field(np.asarray(a).astype(">i2"))


def int4(a: np.ndarray) -> Field:
    return Field(np.asarray(a).astype(">i4"))


def copy_stream(fields: list[Field]) -> bytes:
    """A complete `COPY ... FROM STDIN (FORMAT BINARY)` stream for the given columns.

    Row: [int16 field count] + per field [int32 length][value], the value left out if NULL.

    Every row is first laid out at full width in one structured array; where some value is
    NULL, a byte mask drops its value bytes (its length word says -1), so that the variable
    length stream is still produced by a single vectorised copy.
    """
    n = len(fields[0].values) if fields else 0
    layout: list[tuple[str, str]] = [("count", ">i2")]
    for i, f in enumerate(fields):
        layout += [(f"l{i}", ">i4"), (f"v{i}", f.values.dtype.str)]
    dtype = np.dtype(layout)
    rec = np.empty(n, dtype=dtype)
    rec["count"] = len(fields)
    keep = None
    for i, f in enumerate(fields):
        size = f.values.dtype.itemsize
        rec[f"v{i}"] = f.values
        if f.null is None:
            rec[f"l{i}"] = size
            continue
        lengths = np.full(n, size, dtype=">i4")
        lengths[f.null] = -1
        rec[f"l{i}"] = lengths
        if keep is None:
            keep = np.ones((n, dtype.itemsize), dtype=bool)
        off = dtype.fields[f"v{i}"][1]
        keep[:, off : off + size] = ~f.null[:, None]
    raw = rec.view(np.uint8).reshape(n, dtype.itemsize)
    body = raw.reshape(-1) if keep is None else raw[keep]
    # One copy into the result: `COPY_SIGNATURE + body.tobytes() + COPY_TRAILER` made three of
    # the whole stream, 1.3 ms for a batch of 5,000 samples against 0.02 ms (the bytes objects
    # of a batch are large enough to be fresh pages every time).
    return b"".join((COPY_SIGNATURE, body, COPY_TRAILER))
