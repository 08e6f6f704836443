"""Query parameters several routes share, parsed with the reason on failure."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from fastapi import Request

from api.problems import Problem

MAX_RANGE = timedelta(days=31)


def parse_bbox(value: str | None) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        x0, y0, x1, y1 = (float(p) for p in value.split(","))
    except ValueError:
        raise Problem(
            400, "bad-bbox", f"bbox is min_lon,min_lat,max_lon,max_lat in degrees, got {value!r}"
        ) from None
    if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise Problem(
            400,
            "bad-bbox",
            "bbox needs -180 <= min_lon <= max_lon <= 180 and "
            f"-90 <= min_lat <= max_lat <= 90, got {value!r}",
        )
    return x0, y0, x1, y1


def time_range(
    start: datetime | None,
    end: datetime | None,
    *,
    default: timedelta = timedelta(hours=1),
    max_range: timedelta = MAX_RANGE,
) -> tuple[datetime, datetime]:
    """A [from, to) range: timezone-aware, from before to, at most max_range long."""
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise Problem(
                400,
                "bad-time-range",
                f"'{name}' needs a time zone (RFC 3339), e.g. 2026-11-23T08:00:00Z",
            )
    end = end or datetime.now(UTC)
    if start is None:
        try:
            start = end - default
        except OverflowError:  # 'to' within `default` of year 1
            raise Problem(
                400,
                "bad-time-range",
                f"'to' ({end.isoformat()}) is too early to start {default} before it; give 'from'",
            ) from None
    if start >= end:
        raise Problem(
            400,
            "bad-time-range",
            f"'from' ({start.isoformat()}) must be before 'to' ({end.isoformat()})",
        )
    if end - start > max_range:
        raise Problem(
            400, "bad-time-range", f"the range is {end - start}; at most {max_range} per request"
        )
    return start, end


def next_page(request: Request, found: int, items: Sequence[object], cursor: str) -> str | None:
    """The URL of the page after `items`, or None on the last page. The list routes ask their
    query for one row more than the page holds: a row beyond it (found > len(items)) is how
    they know there is more without counting. The cursor is the page's last item's `cursor`
    attribute."""
    if found <= len(items):
        return None
    return str(request.url.include_query_params(after=getattr(items[-1], cursor)))
