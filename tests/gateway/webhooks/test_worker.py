"""The delivery worker against a real local receiver and database: at least once, the same id
for duplicates, in order per vehicle per subscription, signed; 410 disables; dead letters after
the retry window and re-drive; replay from an event id."""

import asyncio
import contextlib

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from gateway.webhooks import WebhookConfig, WebhookMetrics, WebhookWorker
from outbound import RetryPolicy, new_secret
from telemetry.store import TelemetryStore, Webhooks
from tests.harness import eventually, metric, register
from tests.webhook_events import write_zone_events
from tests.webhook_receiver import Answer, WebhookReceiver, verifies

pytestmark = pytest.mark.integration

FAST = WebhookConfig(
    concurrency=16,
    per_subscription=8,
    timeout_s=2.0,
    poll_s=0.05,
    retry=RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, give_up_after_s=30),
    dead_letters_s=0.2,
)


@contextlib.asynccontextmanager
async def _worker(store: TelemetryStore, config: WebhookConfig = FAST):
    registry = CollectorRegistry()
    worker = WebhookWorker(store, config, WebhookMetrics(registry))
    task = asyncio.create_task(worker.run())
    try:
        yield worker, registry
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def fleet(pg_dsn):
    ids = await register(pg_dsn, [(f"wh-{i}", f"WH-{i}", "ebike") for i in range(5)])
    store = await TelemetryStore.open(pg_dsn)
    yield store, sorted(ids.values())
    await store.close()


async def _outbox_ids(dsn: str) -> list[tuple[int, int]]:
    """(event id, vehicle) of the outbox in commit order."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT event_id, vehicle FROM outbox ORDER BY position")
        return await cur.fetchall()


def _in_order_per_vehicle(received, outbox: list[tuple[int, int]]) -> None:
    """Each vehicle's events arrive in outbox order; a repeat only of the one just before."""
    position = {event_id: n for n, (event_id, _) in enumerate(outbox)}
    last: dict[str, int] = {}
    for r in received:
        event = r.event
        at = position[event["id"]]
        assert at >= last.get(event["vehicle_ref"], -1), f"{event['id']} out of order"
        last[event["vehicle_ref"]] = at


async def test_flaky_and_slow_receiver_gets_everything_once_in_order_signed(fleet, pg_dsn):
    store, vehicles = fleet

    def answer(request, nth):
        event_id = int(request.headers["fleetgate-event-id"])
        if event_id % 10 == 0 and nth <= 2:
            return Answer(503)  # the first attempts of every 10th event fail
        return Answer(200, delay_s=0.05 if event_id % 3 == 0 else 0.0)  # slow on others

    receiver = WebhookReceiver(answer)
    url = await receiver.start()
    secret = new_secret()
    sub = await Webhooks(store).create(url, None, "test", secret)
    try:
        async with _worker(store) as (_, registry):
            written = await write_zone_events(store, vehicles, per_vehicle=12)

            async def all_delivered() -> bool:
                return len({r.event["id"] for r in receiver.received}) >= written

            await eventually(all_delivered, timeout=60, what="every event delivered")
            outbox = await _outbox_ids(pg_dsn)
            assert len(outbox) == written
            assert {r.event["id"] for r in receiver.received} == {e for e, _ in outbox}
            _in_order_per_vehicle(receiver.received, outbox)
            assert all(verifies(r, secret) for r in receiver.received)
            assert all(
                r.headers["fleetgate-event-id"] == str(r.event["id"]) for r in receiver.received
            )
            assert {r.event["type"] for r in receiver.received} == {
                "geofence.zone_enter",
                "geofence.zone_exit",
            }
            failing = [e for e, _ in outbox if e % 10 == 0]
            assert failing and all(receiver.attempts[e] == 3 for e in failing)

            async def recorded() -> bool:
                rows = await Webhooks(store).deliveries(sub.id, limit=1000)
                return len(rows) == written and {r["state"] for r in rows} == {"delivered"}

            await eventually(recorded, timeout=30, what="every delivery recorded")
            assert metric(registry, "fleetgate_webhook_deliveries_total", outcome="failed") == (
                2 * len(failing)
            )
            assert (
                metric(registry, "fleetgate_webhook_deliveries_total", outcome="delivered")
                == written
            )
    finally:
        await receiver.close()


async def test_410_disables_only_that_subscription(fleet):
    store, vehicles = fleet
    gone = WebhookReceiver(lambda request, nth: Answer(410))
    fine = WebhookReceiver()
    hooks = Webhooks(store)
    gone_sub = await hooks.create(await gone.start(), None, "", new_secret())
    await hooks.create(await fine.start(), ["geofence.zone_enter"], "", new_secret())
    try:
        async with _worker(store):
            await write_zone_events(store, vehicles, per_vehicle=4)

            async def disabled() -> bool:
                return not (await hooks.get(gone_sub.id)).enabled

            await eventually(disabled, timeout=30, what="the subscription disabled")
            assert "410" in (await hooks.get(gone_sub.id)).disabled_reason
            await eventually(lambda: len(fine.received) == 2 * len(vehicles), timeout=30)
            assert {r.event["type"] for r in fine.received} == {"geofence.zone_enter"}
            gone_calls = gone.count
            await write_zone_events(store, vehicles, per_vehicle=2, start_ms=10**12)
            await eventually(lambda: len(fine.received) == 3 * len(vehicles), timeout=30)
            assert gone.count == gone_calls  # a disabled subscription gets nothing more
    finally:
        await gone.close()
        await fine.close()


async def test_dead_letter_after_the_window_holds_nothing_back_and_redrive_delivers(fleet):
    store, vehicles = fleet
    broken = {"on": True}

    def answer(request, nth):
        first_vehicle = request.event["vehicle_ref"] == "WH-0"
        return Answer(500) if broken["on"] and first_vehicle else Answer(200)

    receiver = WebhookReceiver(answer)
    hooks = Webhooks(store)
    sub = await hooks.create(await receiver.start(), None, "", new_secret())
    config = WebhookConfig(
        poll_s=0.05,
        timeout_s=2.0,
        retry=RetryPolicy(first_delay_s=0.05, max_delay_s=0.1, give_up_after_s=0.3),
        dead_letters_s=0.1,
    )
    try:
        async with _worker(store, config) as (_, registry):
            await write_zone_events(store, vehicles, per_vehicle=3)
            others = 3 * (len(vehicles) - 1)

            async def three_dead() -> bool:
                return len(await hooks.deliveries(sub.id, state="dead")) == 3

            await eventually(three_dead, timeout=30, what="WH-0's events dead-lettered")
            await eventually(lambda: len(receiver.received) == others, timeout=30)
            await eventually(
                lambda: metric(registry, "fleetgate_webhook_dead_letters") == 3, timeout=10
            )
            broken["on"] = False
            assert await hooks.redrive(sub.id) == 3
            await eventually(lambda: len(receiver.received) == others + 3, timeout=30)
            assert await hooks.deliveries(sub.id, state="dead") == []
            redriven = [r.event for r in receiver.received[others:]]
            assert {e["vehicle_ref"] for e in redriven} == {"WH-0"}
            assert [e["id"] for e in redriven] == sorted(e["id"] for e in redriven)
    finally:
        await receiver.close()


async def test_replay_from_an_event_id_sends_the_same_ids_again(fleet, pg_dsn):
    store, vehicles = fleet
    receiver = WebhookReceiver()
    hooks = Webhooks(store)
    sub = await hooks.create(await receiver.start(), None, "", new_secret())
    try:
        async with _worker(store):
            written = await write_zone_events(store, vehicles, per_vehicle=4)
            await eventually(lambda: len(receiver.received) == written, timeout=30)
            first = {r.event["id"]: r.body for r in receiver.received}
            outbox = await _outbox_ids(pg_dsn)
            from_id = outbox[len(outbox) // 2][0]
            again = await hooks.replay(sub.id, from_id)
            assert again == len(outbox) - len(outbox) // 2
            await eventually(lambda: len(receiver.received) == written + again, timeout=30)
            replayed = receiver.received[written:]
            assert {r.event["id"] for r in replayed} == {e for e, _ in outbox[len(outbox) // 2 :]}
            assert all(r.body == first[r.event["id"]] for r in replayed)  # the same bytes
            _in_order_per_vehicle(replayed, outbox)
    finally:
        await receiver.close()


@pytest.mark.timeout(60)  # a broken watchdog would leave the attempt hanging for 30 s a try
async def test_an_attempt_without_an_answer_in_time_fails_and_frees_its_lane(fleet):
    store, vehicles = fleet

    def answer(request, nth):
        # WH-0's receiver hangs far beyond the worker's timeout; every other vehicle's answers.
        return Answer(200, delay_s=30.0 if request.event["vehicle_ref"] == "WH-0" else 0.0)

    receiver = WebhookReceiver(answer)
    hooks = Webhooks(store)
    sub = await hooks.create(await receiver.start(), None, "", new_secret())
    config = WebhookConfig(
        concurrency=2,  # a lane lost to a hung attempt would stop the others' deliveries
        timeout_s=0.3,
        poll_s=0.05,
        retry=RetryPolicy(first_delay_s=0.05, max_delay_s=0.1, give_up_after_s=0.0),
    )
    try:
        async with _worker(store, config) as (_, registry):
            await write_zone_events(store, vehicles, per_vehicle=3)

            async def three_dead() -> bool:
                return len(await hooks.deliveries(sub.id, state="dead")) == 3

            await eventually(three_dead, timeout=10, what="WH-0's hung attempts given up")
            dead = await hooks.deliveries(sub.id, state="dead")
            assert {d["vehicle_ref"] for d in dead} == {"WH-0"}
            assert {d["last_error"] for d in dead} == {"no answer within 0.3 s"}
            assert {d["last_status"] for d in dead} == {None}
            delivered = 3 * (len(vehicles) - 1)

            async def others_delivered() -> bool:
                return len(await hooks.deliveries(sub.id, state="delivered")) == delivered

            await eventually(others_delivered, timeout=10, what="the other vehicles' events")
            assert (
                metric(registry, "fleetgate_webhook_deliveries_total", outcome="dead_lettered") == 3
            )
    finally:
        await receiver.close()
