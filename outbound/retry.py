"""What a receiver's answer means, and when to try again: exponential backoff with jitter, for
up to give_up_after_s (24 h) after the first attempt, then the event is dead-lettered."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Outcome(str, Enum):
    DELIVERED = "delivered"  # a 2xx
    FAILED = "failed"  # any other answer, a timeout or a connection error: retried
    GONE = "gone"  # 410: the receiver asks to be unsubscribed


def classify(status: int | None) -> Outcome:
    """status: the HTTP status, None when there was no answer (timeout, connection error).
    Only 410 is final: a 4xx is often a receiver being redeployed or a secret being rotated, and
    retrying it costs little (the vehicle's later events wait, no other vehicle's)."""
    if status is not None and 200 <= status < 300:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.GONE
    return Outcome.FAILED


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_delay_s: float = 5.0
    max_delay_s: float = 3600.0
    give_up_after_s: float = 86400.0

    def __post_init__(self) -> None:
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ValueError("need 0 < first_delay_s <= max_delay_s")
        if self.give_up_after_s < 0:
            raise ValueError("give_up_after_s must not be negative")

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """The wait after the failures-th failed attempt: doubling from first_delay_s up to
        max_delay_s, of which a random half ("equal jitter"), so that receivers coming back
        are not hit by every waiting delivery at once, yet the wait still grows."""
        ceiling = min(self.max_delay_s, self.first_delay_s * 2.0 ** min(failures - 1, 60))
        return ceiling / 2 + rng.uniform(0, ceiling / 2)

    def next_attempt_at(
        self, failures: int, first_attempt_at: float, now: float, rng: random.Random
    ) -> float | None:
        """When to try again after a failure at now, or None: give up (dead letter). The last
        attempt is made at the give-up time itself."""
        deadline = first_attempt_at + self.give_up_after_s
        if now >= deadline:
            return None
        return min(now + self.delay_s(failures, rng), deadline)
