"""Signing a delivery: HMAC-SHA256 with the subscription's secret over `{timestamp}.{body}`.

The receiver recomputes it and compares in constant time, and refuses a timestamp too far from
its clock (a replayed capture). Several signatures may be sent, space-separated (a secret being
rotated); one that verifies is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_VERSION = "v1"
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class Signer:
    """Signs with one secret, its HMAC key set up once (the delivery worker keeps one per
    subscription) rather than for every delivery."""

    def __init__(self, secret: str) -> None:
        self._keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def sign(self, timestamp: int, body: bytes) -> str:
        """The Fleetgate-Signature header's value for body sent at timestamp (seconds)."""
        mac = self._keyed.copy()
        mac.update(b"%d." % timestamp)
        mac.update(body)
        return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Fleetgate-Signature header's value for body sent at timestamp (seconds)."""
    return Signer(secret).sign(timestamp, body)


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, now: float, tolerance_s: int = 300
) -> bool:
    """True if one of the header's signatures is body's at timestamp, and timestamp is within
    tolerance_s of now."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_s:
        return False
    expected = sign(secret, sent, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signature.split())
