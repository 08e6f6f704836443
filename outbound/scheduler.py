"""Which delivery goes out next: ordered per vehicle per subscription.

Each (subscription, vehicle) pair is a queue in outbox order (commit order). Only its head may
be in flight or waiting for a retry, so a failing event holds back that vehicle's later events for
that subscription only; every other queue goes on. The shell (gateway/webhooks) takes what is
due, bounded by its concurrency, posts it, and settles the answer here; what it records follows
the returned Settled.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from outbound.retry import Outcome, RetryPolicy, classify


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    position: int  # the outbox's commit-order number
    event_id: int  # the envelope's id
    vehicle: int
    type: str
    body: bytes
    sequenced_at: float  # when it entered the outbox (s since epoch): the lag's start


@dataclass(slots=True, eq=False)
class Delivery:
    subscription: str
    event: OutboundEvent
    failures: int = 0
    first_attempt_at: float | None = None
    due_at: float = 0.0

    @property
    def key(self) -> tuple[str, int]:
        return (self.subscription, self.event.vehicle)


class Settled(str, Enum):
    DELIVERED = "delivered"
    RETRYING = "retrying"  # due again at delivery.due_at
    DEAD = "dead"  # gave up: dead-lettered, the vehicle's next event goes on
    GONE = "gone"  # 410: the subscription is to be disabled, its queues are dropped
    STALE = "stale"  # the subscription was dropped while this was in flight: record nothing


@dataclass
class Scheduler:
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    rng: random.Random = field(default_factory=random.Random)
    # At most this many of one subscription in flight, so that a slow receiver cannot take
    # every slot of the shell's concurrency from the others.
    per_subscription: int | None = None

    def __post_init__(self) -> None:
        self._queues: dict[tuple[str, int], deque[Delivery]] = {}
        self._keys_by_subscription: dict[str, set[tuple[str, int]]] = {}
        self._due: list[tuple[float, int, Delivery]] = []  # heads not in flight (lazy deletion)
        self._in_flight: set[tuple[str, int]] = set()
        self._in_flight_by_subscription: dict[str, int] = {}
        # Heads of a subscription at its per_subscription limit, in the order they left the
        # heap: set aside until one of its attempts settles, rather than pushed back onto the
        # heap and popped again by every take (with lanes taking one at a time, that was most of
        # the scheduler's cost: hundreds of held-back heads per take).
        self._parked: dict[str, deque[tuple[float, int, Delivery]]] = {}
        self._tiebreak = itertools.count()
        self.queued = 0

    def add(self, delivery: Delivery) -> None:
        """Queue behind the vehicle's earlier events of the same subscription (add in outbox
        order)."""
        key = delivery.key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._keys_by_subscription.setdefault(delivery.subscription, set()).add(key)
        queue.append(delivery)
        self.queued += 1
        if len(queue) == 1:
            self._push(delivery)

    def take_due(self, now: float, limit: int) -> list[Delivery]:
        """Up to limit heads due by now, marked in flight (earliest due first)."""
        taken: list[Delivery] = []
        while self._due and len(taken) < limit and self._due[0][0] <= now:
            entry = heapq.heappop(self._due)
            due, _, delivery = entry
            if not self._is_live(due, delivery):
                continue  # an entry left behind by a retry or a dropped subscription
            busy = self._in_flight_by_subscription.get(delivery.subscription, 0)
            if self.per_subscription is not None and busy >= self.per_subscription:
                self._parked.setdefault(delivery.subscription, deque()).append(entry)
                continue
            self._in_flight.add(delivery.key)
            self._in_flight_by_subscription[delivery.subscription] = busy + 1
            if delivery.first_attempt_at is None:
                delivery.first_attempt_at = now
            taken.append(delivery)
        return taken

    def settle(self, delivery: Delivery, status: int | None, now: float) -> Settled:
        """The answer to an attempt (status None: timeout or connection error)."""
        key = delivery.key
        self._in_flight.discard(key)
        left = self._in_flight_by_subscription.get(delivery.subscription, 1) - 1
        if left > 0:
            self._in_flight_by_subscription[delivery.subscription] = left
        else:
            self._in_flight_by_subscription.pop(delivery.subscription, None)
        self._unpark(delivery.subscription, left)
        queue = self._queues.get(key)
        if not queue or queue[0] is not delivery:
            if queue and queue[0].key not in self._in_flight:
                self._push(queue[0])  # a reloaded queue whose head waited for this one
            return Settled.STALE
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            self._pop_head(key)
            return Settled.DELIVERED
        if outcome is Outcome.GONE:
            self.drop(delivery.subscription)
            return Settled.GONE
        delivery.failures += 1
        first = now if delivery.first_attempt_at is None else delivery.first_attempt_at
        again = self.policy.next_attempt_at(delivery.failures, first, now, self.rng)
        if again is None:
            self._pop_head(key)
            return Settled.DEAD
        delivery.due_at = again
        self._push(delivery)
        return Settled.RETRYING

    def drop(self, subscription: str) -> None:
        """Forget a subscription's queues (disabled, deleted, or to be reloaded). Its deliveries
        in flight settle as STALE."""
        for key in self._keys_by_subscription.pop(subscription, ()):
            self.queued -= len(self._queues.pop(key))
        self._parked.pop(subscription, None)

    def next_due_at(self) -> float | None:
        while self._due:
            due, _, delivery = self._due[0]
            if self._is_live(due, delivery):
                return due
            heapq.heappop(self._due)
        return None

    def _is_live(self, due: float, delivery: Delivery) -> bool:
        """Whether a heap entry still stands for a head waiting to go out."""
        queue = self._queues.get(delivery.key)
        return (
            bool(queue)
            and queue[0] is delivery
            and due == delivery.due_at
            and delivery.key not in self._in_flight
        )

    def lowest_position(self, subscription: str) -> int | None:
        """The earliest outbox position of the subscription not settled yet (queued, in flight
        or waiting for a retry); None when it has nothing queued."""
        keys = self._keys_by_subscription.get(subscription, ())
        return min((self._queues[k][0].event.position for k in keys), default=None)

    def oldest_sequenced_at(self) -> float | None:
        """When the oldest undelivered event entered the outbox (the lag's start)."""
        return min((q[0].event.sequenced_at for q in self._queues.values()), default=None)

    def queued_for(self, subscription: str) -> int:
        return sum(len(self._queues[k]) for k in self._keys_by_subscription.get(subscription, ()))

    def _unpark(self, subscription: str, busy: int) -> None:
        """Back onto the heap, as many of the subscription's parked heads as it has slots free
        (in their order; those a drop or reload left behind do not count)."""
        parked = self._parked.get(subscription)
        if parked is None:
            return
        free = max(0, self.per_subscription - busy) if self.per_subscription is not None else 1
        while parked and free > 0:
            entry = parked.popleft()
            if self._is_live(entry[0], entry[2]):
                heapq.heappush(self._due, entry)
                free -= 1
        if not parked:
            del self._parked[subscription]

    def _pop_head(self, key: tuple[str, int]) -> None:
        queue = self._queues[key]
        queue.popleft()
        self.queued -= 1
        if queue:
            self._push(queue[0])
        else:
            del self._queues[key]
            keys = self._keys_by_subscription[key[0]]
            keys.discard(key)
            if not keys:
                del self._keys_by_subscription[key[0]]

    def _push(self, delivery: Delivery) -> None:
        heapq.heappush(self._due, (delivery.due_at, next(self._tiebreak), delivery))
