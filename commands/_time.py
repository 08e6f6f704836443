"""Milliseconds since the epoch (the protocol's clock) <-> aware UTC datetimes (the models')."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def from_ms(ms: int | float) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def to_ms(t: datetime) -> int:
    return (t - _EPOCH) // timedelta(milliseconds=1)


def utc_now() -> datetime:
    return datetime.now(UTC)
