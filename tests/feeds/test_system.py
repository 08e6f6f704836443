"""The system description: what a feed may not be published with."""

from __future__ import annotations

import pytest

from feeds import FeedSystem, InvalidFeedSystem

GOOD = dict(
    system_id="city-bikes",
    name="City Bikes",
    operator="Operator",
    languages=("en",),
    timezone="Europe/Berlin",
    feed_contact_email="feeds@example.org",
    base_url="https://feeds.example.org",
    id_secret=b"x" * 32,
)


def test_a_complete_system_builds_its_urls_and_texts():
    system = FeedSystem(**GOOD)
    assert system.url_of("gbfs") == "https://feeds.example.org/gbfs/v3/city-bikes/gbfs.json"
    assert system.text("Hi") == [{"text": "Hi", "language": "en"}]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"system_id": "a b"}, "system_id"),
        ({"languages": ("english",)}, "languages"),
        ({"languages": ()}, "languages"),
        ({"timezone": "CET+1"}, "timezone"),
        ({"feed_contact_email": "nobody"}, "feed_contact_email"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"provider_id": "not-a-uuid"}, "provider_id"),
        ({"id_secret": b"short"}, "id_secret"),
        ({"pricing_plans": ({"plan_id": "a"},)}, "pricing plan"),
        ({"alerts": ({"alert_id": "a"},)}, "alert"),
        ({"ttl_s": -1}, "ttl_s"),
    ],
)
def test_a_bad_field_is_named(change, words):
    with pytest.raises(InvalidFeedSystem, match=words):
        FeedSystem(**{**GOOD, **change})
