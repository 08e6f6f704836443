"""The system a feed describes: who operates it, in which languages, at which URL, with which
pricing plans and alerts. Plain data, checked once (the roof builds it from the settings)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Z]{2})?$")
_SYSTEM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidFeedSystem(ValueError):
    """A system description the feeds cannot publish; the message names the field."""


@dataclass(frozen=True)
class FeedSystem:
    """One shared-mobility system, as GBFS system_information and MDS provider_id describe it.

    system_id           GBFS system_id (also in the feed URLs)
    name                the system's name, shown to riders
    operator            the operator's name
    languages           GBFS languages; the first is used for every localised text
    timezone            IANA time zone of the system
    feed_contact_email  who answers questions about the feed
    base_url            public URL the feeds are served under (…/gbfs/v3/{system_id}/…)
    opening_hours       OSM opening_hours syntax ("24/7")
    url, email          the operator's web site and rider contact (optional)
    ttl_s               GBFS ttl of the near-real-time files (vehicle and station status)
    pricing_plans       GBFS system_pricing_plans plans[] (as published)
    alerts              GBFS system_alerts alerts[] (as published)
    provider_id         MDS provider_id (a UUID, assigned by OMF); None: no MDS
    id_secret           key of the rotating public vehicle ids (GBFS privacy)
    """

    system_id: str
    name: str
    operator: str
    languages: tuple[str, ...]
    timezone: str
    feed_contact_email: str
    base_url: str
    opening_hours: str = "24/7"
    url: str | None = None
    email: str | None = None
    ttl_s: int = 30
    pricing_plans: tuple[dict[str, Any], ...] = ()
    alerts: tuple[dict[str, Any], ...] = ()
    provider_id: str | None = None
    id_secret: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise InvalidFeedSystem(f"feed system {self.system_id!r}: {problem}")

    @property
    def language(self) -> str:
        return self.languages[0]

    def text(self, value: str) -> list[dict[str, str]]:
        """A GBFS localised string in the system's first language."""
        return [{"text": value, "language": self.language}]

    def url_of(self, name: str) -> str:
        return f"{self.base_url.rstrip('/')}/gbfs/v3/{self.system_id}/{name}.json"


def _problem(s: FeedSystem) -> str | None:  # noqa: C901 - one flat list of field checks
    if not _SYSTEM_ID.match(s.system_id or ""):
        return "system_id must be 1 to 64 of [A-Za-z0-9_.-]"
    if not s.name.strip() or not s.operator.strip():
        return "name and operator must not be empty"
    if not s.languages or any(not _LANGUAGE.match(lang) for lang in s.languages):
        return "languages must be IETF tags like 'en' or 'de-CH', at least one"
    if not s.timezone or "/" not in s.timezone and s.timezone != "UTC":
        return f"timezone {s.timezone!r} is not an IANA time zone"
    if not _EMAIL.match(s.feed_contact_email or ""):
        return "feed_contact_email must be an e-mail address"
    if not s.base_url.startswith(("http://", "https://")):
        return "base_url must be an http(s) URL"
    if not 0 <= s.ttl_s <= 3600:
        return "ttl_s must be between 0 and 3600"
    for plan in s.pricing_plans:
        if not isinstance(plan, dict) or not {"plan_id", "currency", "price"} <= plan.keys():
            return "every pricing plan needs plan_id, currency and price"
    for alert in s.alerts:
        if not isinstance(alert, dict) or not {"alert_id", "type", "summary"} <= alert.keys():
            return "every alert needs alert_id, type and summary"
    if s.provider_id is not None:
        try:
            uuid.UUID(s.provider_id)
        except ValueError:
            return f"provider_id {s.provider_id!r} is not a UUID"
    if len(s.id_secret) < 16:
        return "id_secret must be at least 16 bytes (it keys the public vehicle ids)"
    return None
