"""Must show (issue 20): `fleetgate run` delivering to a receiver that fails the first attempts
of every 10th event and is slow on others, SIGKILLed mid-delivery and started again. After the
restart every outbox event is delivered at least once, a duplicate carries the same id (and the
same bytes), none arrives out of order for its vehicle, and every signature verifies."""

import asyncio
import contextlib
import os
import signal
import time

import psycopg
import pytest

from fleetgate.embedded import free_port
from outbound import new_secret
from telemetry.store import TelemetryStore, Webhooks
from tests.harness import GatewayProcess, eventually, register, sample_sum
from tests.webhook_events import write_zone_events
from tests.webhook_receiver import Answer, WebhookReceiver, verifies

pytestmark = pytest.mark.integration

VEHICLES = 8
ROUNDS = 40


def _flaky_and_slow(request, nth):
    event_id = int(request.headers["fleetgate-event-id"])
    if event_id % 10 == 0 and nth <= 2:
        return Answer(503)
    return Answer(200, delay_s=0.15 if event_id % 3 == 0 else 0.01)


async def _outbox(dsn: str) -> list[tuple[int, int, str]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT position, event_id, body FROM outbox ORDER BY position")
        return await cur.fetchall()


async def _events(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return (await (await conn.execute("SELECT count(*) FROM events")).fetchone())[0]


async def test_sigkill_mid_delivery_then_everything_at_least_once_in_order_signed(
    pg_dsn, mosquitto, topic_root, tmp_path
):
    ids = await register(pg_dsn, [(f"k-{i}", f"K-{i}", "ebike") for i in range(VEHICLES)])
    store = await TelemetryStore.open(pg_dsn)
    receiver = WebhookReceiver(_flaky_and_slow)
    secret = new_secret()
    await Webhooks(store).create(await receiver.start(), None, "billing", secret)
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-webhooks-kill",
        tmp_path / "gw.log",
        metrics_port=free_port(),
        FLEETGATE_WEBHOOK_RETRY_FIRST_S="0.1",
        FLEETGATE_WEBHOOK_CONCURRENCY="8",
        FLEETGATE_WEBHOOK_TIMEOUT_S="5",
    ).start()
    try:
        await gw.wait_subscribed()
        vehicles = sorted(ids.values())

        async def ingest() -> None:  # the ingest path's transactions, while deliveries go on
            for n in range(ROUNDS):
                await write_zone_events(store, vehicles, 1, start_ms=1_700_000_000_000 + n)
                await asyncio.sleep(0.02)

        writing = asyncio.create_task(ingest())
        await eventually(lambda: len(receiver.received) >= 60, timeout=60, what="deliveries")
        gw.kill()  # mid-delivery: slow requests in flight, some failed ones waiting for retry
        killed_after = len(receiver.received)
        await asyncio.sleep(0.5)  # requests in flight at the kill have ended by now
        restarted_at = time.time()
        gw.start()
        await gw.wait_subscribed()
        await writing
        written = VEHICLES * ROUNDS
        assert await _events(pg_dsn) == written

        async def all_delivered() -> bool:
            outbox = await _outbox(pg_dsn)
            delivered = {r.event["id"] for r in receiver.received}
            return len(outbox) == written and delivered >= {e for _, e, _ in outbox}

        await eventually(all_delivered, timeout=120, what="every outbox event delivered")
        assert killed_after < written  # the kill did come mid-delivery
        outbox = await _outbox(pg_dsn)
        position = {event_id: p for p, event_id, _ in outbox}
        body = {event_id: b.encode() for _, event_id, b in outbox}
        # In order per vehicle: within each run of the process; and what a receiver keeping the
        # ids it has seen takes (the first of each) over the whole time. After the restart a
        # vehicle's events are sent again from the first whose delivery was not recorded.
        last: dict[tuple[bool, str], int] = {}
        first_seen: dict[str, int] = {}
        seen: set[int] = set()
        for r in receiver.received:
            event = r.event
            assert r.headers["fleetgate-event-id"] == str(event["id"])
            assert r.body == body[event["id"]]  # a duplicate is the same event, byte for byte
            assert verifies(r, secret)
            p, vehicle = position[event["id"]], event["vehicle_ref"]
            run = (r.at >= restarted_at, vehicle)
            assert p >= last.get(run, 0), "out of order for its vehicle within a run"
            last[run] = p
            if event["id"] not in seen:
                seen.add(event["id"])
                assert p > first_seen.get(vehicle, 0), "a new event before an older one"
                first_seen[vehicle] = p
        failing = [e for e in position if e % 10 == 0]
        assert failing and all(receiver.attempts[e] >= 3 for e in failing)
        assert (await gw.get("/readyz")).status_code == 200
        scraped = await gw.scrape()
        assert sample_sum(scraped, "fleetgate_webhook_worker_active") == 1
        assert sample_sum(scraped, "fleetgate_webhook_deliveries_total", outcome="delivered") > 0
    finally:
        gw.stop()
        await receiver.close()
        await store.close()


def _worker_pids(gw: GatewayProcess) -> list[int]:
    return [e["pid"] for e in gw.events() if e.get("event") == "webhook_process_started"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not reaped yet) is gone too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_killed_worker_process_makes_readiness_fail_is_restarted_and_loses_nothing(
    pg_dsn, mosquitto, topic_root, tmp_path
):
    """The delivery worker runs in a child process of `fleetgate run`: SIGKILLed, readiness says
    so, a new child is started and delivers what the old one had not; killing the gateway takes
    its child with it."""
    ids = await register(pg_dsn, [(f"w-{i}", f"W-{i}", "ebike") for i in range(VEHICLES)])
    store = await TelemetryStore.open(pg_dsn)
    receiver = WebhookReceiver(lambda request, nth: Answer(200, delay_s=0.02))
    await Webhooks(store).create(await receiver.start(), None, "billing", new_secret())
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-webhooks-child",
        tmp_path / "gw.log",
        metrics_port=free_port(),
        FLEETGATE_WEBHOOK_CONCURRENCY="4",
        FLEETGATE_WEBHOOK_NICE="3",
    ).start()
    try:
        await gw.wait_subscribed()
        vehicles = sorted(ids.values())
        assert await write_zone_events(store, vehicles, 10) == 80
        await eventually(lambda: len(receiver.received) >= 20, timeout=60, what="deliveries")
        await eventually(lambda: len(_worker_pids(gw)) == 1, what="the worker process's pid")
        (first,) = _worker_pids(gw)
        assert first != gw.proc.pid
        # When the CPU is short, the gateway's ingestion goes before its child's deliveries.
        gateway_nice = os.getpriority(os.PRIO_PROCESS, gw.proc.pid)
        assert os.getpriority(os.PRIO_PROCESS, first) == min(19, gateway_nice + 3)
        assert (await gw.get("/readyz")).status_code == 200
        os.kill(first, signal.SIGKILL)

        async def unready() -> bool:
            answer = await gw.get("/readyz")
            return answer.status_code == 503 and "webhook worker process exited" in answer.text

        await eventually(unready, timeout=10, interval=0.05, what="readiness down")
        await write_zone_events(store, vehicles, 10)  # committed while no worker runs

        async def ready() -> bool:
            return (await gw.get("/readyz")).status_code == 200

        await eventually(ready, timeout=30, what="readiness back")
        second = _worker_pids(gw)[-1]
        assert second != first and _alive(second)

        async def all_delivered() -> bool:
            outbox = await _outbox(pg_dsn)
            return len(outbox) == 160 and {r.event["id"] for r in receiver.received} >= {
                e for _, e, _ in outbox
            }

        await eventually(all_delivered, timeout=60, what="every event delivered")
        assert any(e.get("event") == "webhook_process_exited" for e in gw.events())
        gw.kill()
        await eventually(lambda: not _alive(second), timeout=15, what="the child ended with it")
    finally:
        gw.stop()
        await receiver.close()
        await store.close()


async def test_the_supervisor_says_why_a_child_is_not_working_and_starts_it_again():
    """WebhookProcess with real child processes standing in for the worker: one that writes
    something other than reports and exits, and one that reports, holding the lease."""
    import sys

    from prometheus_client import CollectorRegistry

    from gateway.webhooks import WebhookMetrics
    from gateway.webhooks.process import WebhookProcess
    from tests.harness import metric

    report = (
        '{"held": true, "turns": 3, "failure": null, "lag_seconds": 1.5, "dead_letters": 2, '
        '"active": 1, "deliveries": {"delivered": 7, "failed": 1, "dead_lettered": 0, "gone": 0}}'
    )
    script = (
        "import sys\n"
        "print('not a report', flush=True)\n"
        f"if len(sys.argv) > 1: print({report!r}, flush=True); sys.stdin.read()\n"
        "sys.exit(3)\n"
    )
    registry = CollectorRegistry()
    supervisor = WebhookProcess(
        [sys.executable, "-c", script], WebhookMetrics(registry), restart_after_s=0.1
    )
    assert await supervisor.check() == "the webhook worker process has not reported yet"
    task = asyncio.create_task(supervisor.run())
    try:

        async def restarted() -> bool:
            return supervisor.starts >= 2 and "exited with 3" in (await supervisor.check() or "")

        await eventually(restarted, timeout=20, what="restarted, and said why")
        supervisor.command.append("report")
        await eventually(lambda: supervisor.failure is None, timeout=20, what="a working child")
        assert await supervisor.check() is None
        assert metric(registry, "fleetgate_webhook_deliveries_total", outcome="delivered") == 7
        assert metric(registry, "fleetgate_webhook_dead_letters") == 2
        assert metric(registry, "fleetgate_webhook_worker_active") == 1
        child = supervisor.proc
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert child.returncode is not None  # stopped with the supervisor, not left behind
