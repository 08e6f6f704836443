"""A feed system for the API's feed tests: the system settings, and a clock that can be moved
forward (MDS serves an hour's trips and events once the hour is over)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.feed_service import FeedService, RateLimiter
from feeds import FeedSystem

PROVIDER_ID = "5f7114d1-4091-46ee-b492-e55875f7de00"
SECRET = b"feeds-test-secret-0123456789"


def feed_system(**changes) -> FeedSystem:
    fields = dict(
        system_id="test-city",
        name="Test City Mobility",
        operator="Test Operator",
        languages=("en",),
        timezone="Europe/Berlin",
        feed_contact_email="feeds@example.org",
        base_url="https://feeds.example.org",
        ttl_s=0,
        pricing_plans=({"plan_id": "basic", "name": "Basic", "currency": "EUR", "price": 1.0},),
        alerts=({"alert_id": "a1", "type": "other", "summary": "Test alert"},),
        provider_id=PROVIDER_ID,
        id_secret=SECRET,
    )
    return FeedSystem(**{**fields, **changes})


class MovableClock:
    """The feeds' clock: now, plus an offset a test sets."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


def feed_service(system: FeedSystem | None = None, **kw) -> FeedService:
    kw.setdefault("limiter", RateLimiter(0, 1))
    kw.setdefault("clock", MovableClock())
    return FeedService(feed_system() if system is None else system, **kw)
