"""The live feed: vehicles' new state and new events, fanned out to stream subscribers.

The source is the database (vehicle_overview and events), so the stream shows exactly what the
API lists, with the same status rule, whether the API runs beside the gateway or alone. Beside
the gateway, each commit names the vehicles it changed (notify) and the hub reads just those
rows at once; alone, it polls vehicle_overview.updated_at with a small overlap (a transaction's
updated_at is its start, which can lie before an earlier poll).

Each position is serialised once and shared by every subscriber it matches; a subscriber keeps
only the newest position per vehicle, so a slow reader gets fresh data, not a growing backlog.
Events queue (bounded); overflow is counted and reported to the subscriber. close() ends every
subscription (the server is stopping): a stream must not keep the process alive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from api import queries
from telemetry.store import StoreUnavailable, TelemetryStore

log = logging.getLogger(__name__)

_POSITION_FIELDS = (
    "vehicle_ref",
    "vehicle_type",
    "status",
    "online",
    "time",
    "lat",
    "lon",
    "speed_kmh",
    "heading_deg",
    "soc_pct",
    "range_m",
    "locked",
    "immobilised",
    "charging",
    "zones",
)
_EVENT_OVERLAP = 500  # ids re-read per poll: an insert that commits after a higher id
_VEHICLE_OVERLAP = timedelta(seconds=2)


@dataclass(eq=False)
class Subscription:
    """One stream reader's filter and what waits for it."""

    vehicles: frozenset[str] | None = None
    bbox: tuple[float, float, float, float] | None = None  # min_lon, min_lat, max_lon, max_lat
    positions: bool = True
    events: bool = True
    max_events: int = 1000
    _positions: dict[str, bytes] = field(default_factory=dict)
    _events: collections.deque = field(default_factory=collections.deque)
    dropped_events: int = 0
    closed: bool = False  # the hub closed: take() hands out what waits, then the stream ends
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, ref: str, lat: float | None, lon: float | None) -> bool:
        if self.vehicles is not None and ref not in self.vehicles:
            return False
        if self.bbox is not None:
            if lat is None or lon is None:
                return False
            x0, y0, x1, y1 = self.bbox
            return x0 <= lon <= x1 and y0 <= lat <= y1
        return True

    def _offer_position(self, ref: str, payload: bytes) -> None:
        self._positions[ref] = payload
        self._wake.set()

    def _offer_event(self, payload: bytes) -> None:
        if len(self._events) >= self.max_events:
            self._events.popleft()
            self.dropped_events += 1
        self._events.append(payload)
        self._wake.set()

    def _close(self) -> None:
        self.closed = True
        self._wake.set()

    async def take(self, timeout: float) -> list[tuple[str, bytes]]:
        """What waits, as (SSE event name, JSON data); [] after timeout with nothing new, or at
        once when closed."""
        if not self._positions and not self._events and not self.closed:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        out: list[tuple[str, bytes]] = []
        if self._positions:
            out.append(("positions", b"[" + b",".join(self._positions.values()) + b"]"))
            self._positions = {}
        if self.dropped_events:
            out.append(("dropped", orjson.dumps({"events": self.dropped_events})))
            self.dropped_events = 0
        while self._events:
            out.append(("event", self._events.popleft()))
        return out


class LiveHub:
    def __init__(
        self, store: TelemetryStore, *, poll_interval_s: float = 1.0, min_interval_s: float = 0.05
    ) -> None:
        self._store = store
        self.poll_interval_s = poll_interval_s  # without notify(): alone, or as a safety net
        self.min_interval_s = min_interval_s
        self._subs: set[Subscription] = set()
        self._notified: set[int] = set()
        self._wake = asyncio.Event()
        self._since: datetime | None = None
        self._last_sent: dict[str, datetime] = {}
        self._where: dict[str, tuple[float | None, float | None]] = {}  # for events in a bbox
        self._event_id: int | None = None
        self._seen_events: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.positions_sent = 0  # positions handed to subscribers (for metrics and benchmarks)
        self.events_sent = 0
        self.closed = False

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, **filters: Any) -> Subscription:
        """A new subscription; one made after close() is closed already."""
        sub = Subscription(**filters)
        if self.closed:
            sub._close()
        else:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def notify(self, vehicles) -> None:
        """Vehicles whose state a commit changed (called by the gateway after each batch)."""
        self._notified.update(vehicles)
        self._wake.set()

    def close(self) -> None:
        """End every subscription, and those made from now on (the server is stopping)."""
        self.closed = True
        for sub in self._subs:
            sub._close()
        self._subs.clear()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll and fan out until stop is set; then close()."""
        try:
            await self._run(stop)
        finally:
            self.close()

    async def _run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._poll()
            except StoreUnavailable as exc:
                log.warning("live_feed_paused", extra={"error": str(exc)[:200]})
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("live_feed_failed")
                await asyncio.sleep(1.0)
            self._wake.clear()
            if not self._notified:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            # Several commits within min_interval_s are read in one go.
            await asyncio.sleep(max(0.0, self.min_interval_s - (time.monotonic() - started)))

    async def _poll(self) -> None:
        if self._since is None:  # start from now: the stream shows what changes from here on
            self._since = datetime.now(UTC)
            self._event_id = await queries.latest_event_id(self._store)
            # What changed just before is not news: the overlap of the next polls skips it.
            for row in await queries.changed_vehicles(self._store, self._since - _VEHICLE_OVERLAP):
                self._last_sent[row["vehicle_ref"]] = row["updated_at"]
                self._where[row["vehicle_ref"]] = (row["lat"], row["lon"])
            return
        notified, self._notified = self._notified, set()
        if notified:
            rows = await queries.vehicles_by_id(self._store, sorted(notified))
        else:
            rows = await queries.changed_vehicles(self._store, self._since - _VEHICLE_OVERLAP)
        self._fan_out_positions(rows)
        if rows:
            self._since = max(self._since, max(r["updated_at"] for r in rows))
        await self._poll_events()

    def _fan_out_positions(self, rows: list[dict[str, Any]]) -> None:
        subs = [s for s in self._subs if s.positions]
        for row in rows:
            ref, updated = row["vehicle_ref"], row["updated_at"]
            if self._last_sent.get(ref, _EPOCH) >= updated:
                continue  # seen through the overlap already
            self._last_sent[ref] = updated
            self._where[ref] = (row["lat"], row["lon"])
            if not subs:
                continue
            payload = None
            for sub in subs:
                if sub.wants(ref, row["lat"], row["lon"]):
                    if payload is None:
                        payload = orjson.dumps({k: row[k] for k in _POSITION_FIELDS})
                    sub._offer_position(ref, payload)
                    self.positions_sent += 1

    async def _poll_events(self) -> None:
        rows = await queries.events(
            self._store, after=max(0, self._event_id - _EVENT_OVERLAP), limit=5000
        )
        subs = [s for s in self._subs if s.events]
        for row in rows:
            if row["id"] in self._seen_events or row["id"] <= self._event_id - _EVENT_OVERLAP:
                continue
            self._seen_events[row["id"]] = None
            if len(self._seen_events) > 4 * _EVENT_OVERLAP:
                self._seen_events.popitem(last=False)
            payload = None
            ref = row["vehicle_ref"]
            for sub in subs:
                # An event is where its vehicle was last seen.
                if sub.wants(ref, *self._where.get(ref, (None, None))):
                    payload = payload or _event_json(row)
                    sub._offer_event(payload)
                    self.events_sent += 1
        if rows:
            self._event_id = max(self._event_id, max(r["id"] for r in rows))


def _event_json(row: dict) -> bytes:
    """An event row as JSON. A detail read back from jsonb may hold what orjson cannot write
    (jsonb returns 1e20 as the integer 10**20, beyond 64 bits): the standard library writes it,
    rather than the row stopping the feed at every poll."""
    try:
        return orjson.dumps(row)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(row, default=str, separators=(",", ":")).encode()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
