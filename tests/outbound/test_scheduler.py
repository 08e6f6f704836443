"""Per-vehicle-per-subscription ordering: a failing event holds back only its vehicle's later
events of that subscription; retries back off; 410 drops the subscription."""

import random

from outbound import Delivery, OutboundEvent, RetryPolicy, Scheduler, Settled


def _event(position: int, vehicle: int) -> OutboundEvent:
    return OutboundEvent(position, 1000 + position, vehicle, "trip.ended", b"{}", 0.0)


def _scheduler(**policy) -> Scheduler:
    return Scheduler(RetryPolicy(**policy), random.Random(7))


def test_one_in_flight_per_vehicle_and_subscription_in_outbox_order():
    s = _scheduler()
    for position, vehicle in enumerate([1, 1, 2, 1, 2], start=1):
        s.add(Delivery("a", _event(position, vehicle)))
        s.add(Delivery("b", _event(position, vehicle)))
    first = s.take_due(now=0, limit=100)
    assert sorted((d.subscription, d.event.position) for d in first) == [
        ("a", 1),
        ("a", 3),
        ("b", 1),
        ("b", 3),
    ]
    assert s.take_due(now=0, limit=100) == []  # the heads are in flight
    for d in first:
        assert s.settle(d, 200, now=0) is Settled.DELIVERED
    second = s.take_due(now=0, limit=100)
    assert sorted((d.subscription, d.event.position) for d in second) == [
        ("a", 2),
        ("a", 5),
        ("b", 2),
        ("b", 5),
    ]


def test_a_failing_event_holds_back_only_its_vehicle_in_that_subscription():
    s = _scheduler(first_delay_s=10, max_delay_s=100)
    s.add(Delivery("a", _event(1, 1)))
    s.add(Delivery("a", _event(2, 1)))
    s.add(Delivery("a", _event(3, 2)))
    s.add(Delivery("b", _event(1, 1)))
    taken = {(d.subscription, d.event.position): d for d in s.take_due(0, 10)}
    assert s.settle(taken["a", 1], 503, now=0) is Settled.RETRYING
    assert 5 <= taken["a", 1].due_at <= 10  # equal jitter: half the ceiling is fixed
    assert s.settle(taken["a", 3], 200, now=0) is Settled.DELIVERED
    assert s.settle(taken["b", 1], 200, now=0) is Settled.DELIVERED
    assert s.take_due(now=4.9, limit=10) == []  # event 2 waits behind the failing event 1
    assert s.lowest_position("a") == 1
    retry = s.take_due(now=10, limit=10)
    assert [d.event.position for d in retry] == [1]
    assert s.settle(retry[0], None, now=10) is Settled.RETRYING  # a timeout: again, later
    assert taken["a", 1].due_at >= 10 + 10  # the second wait is longer (ceiling 20, half fixed)
    retry = s.take_due(now=taken["a", 1].due_at, limit=10)
    assert s.settle(retry[0], 204, now=30) is Settled.DELIVERED
    assert [d.event.position for d in s.take_due(now=30, limit=10)] == [2]


def test_gives_up_after_the_window_then_the_next_event_goes():
    s = _scheduler(first_delay_s=60, max_delay_s=3600, give_up_after_s=86400)
    s.add(Delivery("a", _event(1, 1)))
    s.add(Delivery("a", _event(2, 1)))
    now, attempts = 0.0, 0
    while True:
        [d] = s.take_due(now, 10)
        assert d.event.position == 1
        attempts += 1
        settled = s.settle(d, 500, now)
        if settled is Settled.DEAD:
            break
        assert d.due_at <= 86400  # the last attempt is at the give-up time, never later
        now = d.due_at
    assert now == 86400
    assert 20 < attempts < 60
    assert [d.event.position for d in s.take_due(now, 10)] == [2]


def test_gone_drops_the_subscription_and_in_flight_answers_are_stale():
    s = _scheduler()
    s.add(Delivery("a", _event(1, 1)))
    s.add(Delivery("a", _event(2, 2)))
    s.add(Delivery("b", _event(1, 1)))
    d1, d2, b1 = sorted(s.take_due(0, 10), key=lambda d: (d.subscription, d.event.position))
    assert s.settle(d1, 410, now=0) is Settled.GONE
    assert s.settle(d2, 200, now=0) is Settled.STALE
    assert s.queued == 1 and s.lowest_position("a") is None
    assert s.settle(b1, 200, now=0) is Settled.DELIVERED


def test_a_reloaded_subscription_waits_for_its_stale_head_then_goes_on():
    s = _scheduler()
    s.add(Delivery("a", _event(1, 1)))
    [old] = s.take_due(0, 10)
    s.drop("a")  # reloaded (a replay) while event 1 is in flight
    s.add(Delivery("a", _event(1, 1)))
    assert s.take_due(0, 10) == []  # never two of one vehicle in flight
    assert s.settle(old, 200, now=0) is Settled.STALE
    assert [d.event.position for d in s.take_due(0, 10)] == [1]


def test_take_due_respects_the_limit_and_next_due_at():
    s = _scheduler(first_delay_s=8, max_delay_s=8)
    for vehicle in range(5):
        s.add(Delivery("a", _event(vehicle + 1, vehicle)))
    assert len(s.take_due(0, 3)) == 3
    rest = s.take_due(0, 10)
    assert len(rest) == 2
    s.settle(rest[0], 500, now=1)
    assert 5 <= s.next_due_at() <= 9


def test_one_subscription_cannot_take_every_slot():
    s = Scheduler(RetryPolicy(), random.Random(7), per_subscription=2)
    for vehicle in range(5):
        s.add(Delivery("slow", _event(vehicle + 1, vehicle)))
    s.add(Delivery("fast", _event(9, 1)))
    taken = s.take_due(0, 10)
    assert sorted(d.subscription for d in taken) == ["fast", "slow", "slow"]
    s.settle(taken[0] if taken[0].subscription == "slow" else taken[1], 200, now=0)
    assert [d.subscription for d in s.take_due(0, 10)] == ["slow"]


def test_heads_held_back_by_the_limit_go_out_in_order_as_their_subscription_settles():
    s = Scheduler(RetryPolicy(), random.Random(7), per_subscription=2)
    for vehicle in range(6):
        s.add(Delivery("busy", _event(vehicle + 1, vehicle)))
    s.add(Delivery("other", _event(20, 1)))
    first = s.take_due(0, 1) + s.take_due(0, 1)
    assert [d.event.position for d in first] == [1, 2]
    # The limit is reached: the other subscription's head is next, taken one at a time too.
    assert [d.subscription for d in s.take_due(0, 1)] == ["other"]
    assert s.take_due(0, 1) == []
    sent = [d.event.position for d in first]
    in_flight = list(first)
    while in_flight:
        s.settle(in_flight.pop(0), 200, now=0)
        taken = s.take_due(0, 10)
        assert len(taken) == 1  # one slot came free: one held-back head, the earliest
        sent += [d.event.position for d in taken]
        in_flight += taken
        if len(sent) == 6:
            break
    assert sent == [1, 2, 3, 4, 5, 6]


def test_a_dropped_subscription_leaves_no_held_back_heads_behind():
    s = Scheduler(RetryPolicy(), random.Random(7), per_subscription=1)
    for vehicle in range(3):
        s.add(Delivery("a", _event(vehicle + 1, vehicle)))
    (first,) = s.take_due(0, 10)  # the other two heads are held back
    s.drop("a")
    for vehicle in range(3):  # reloaded, as the worker does after a change
        s.add(Delivery("a", _event(vehicle + 1, vehicle)))
    assert s.settle(first, 200, now=0) is Settled.STALE
    assert [d.event.position for d in s.take_due(0, 10)] == [1]
