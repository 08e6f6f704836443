"""One delivery worker per deployment (the webhook lease), and readiness loud while a worker
that failed is being started again."""

import asyncio
import contextlib

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from gateway.webhooks import WebhookConfig, WebhookMetrics
from gateway.webhooks.runner import WebhookRunner
from telemetry.store import TelemetryStore
from tests.harness import eventually, metric

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def _runner(dsn: str, store: TelemetryStore):
    registry = CollectorRegistry()
    runner = WebhookRunner(
        dsn, store, WebhookConfig(poll_s=0.05), WebhookMetrics(registry), check_s=0.2
    )
    task = asyncio.create_task(runner.run())
    try:
        yield runner, registry
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sql(dsn: str, statement: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(statement)


async def test_one_worker_among_processes_and_a_standby_takes_over(pg_dsn):
    store = await TelemetryStore.open(pg_dsn)
    try:
        async with contextlib.AsyncExitStack() as second_process:
            first_process = contextlib.AsyncExitStack()
            first, first_metrics = await first_process.enter_async_context(_runner(pg_dsn, store))
            await eventually(lambda: first.worker is not None, what="the first runs the worker")
            second, second_metrics = await second_process.enter_async_context(
                _runner(pg_dsn, store)
            )
            await asyncio.sleep(0.6)  # three lease checks: the second must stand by
            assert second.worker is None
            assert metric(second_metrics, "fleetgate_webhook_worker_active") == 0
            assert metric(first_metrics, "fleetgate_webhook_worker_active") == 1
            await first_process.aclose()  # the first process goes away
            assert metric(first_metrics, "fleetgate_webhook_worker_active") == 0
            await eventually(lambda: second.worker is not None, what="the standby takes over")
            assert metric(second_metrics, "fleetgate_webhook_worker_active") == 1
    finally:
        await store.close()


async def test_readiness_says_why_while_the_worker_fails_and_recovers(pg_dsn):
    store = await TelemetryStore.open(pg_dsn)
    try:
        async with _runner(pg_dsn, store) as (runner, _):
            await eventually(lambda: runner.worker is not None and runner.worker.turns > 0)
            assert await runner.check() is None
            await _sql(pg_dsn, "ALTER TABLE outbox RENAME TO outbox_away")  # a broken schema

            async def failing() -> bool:
                return await runner.check() is not None

            await eventually(failing, timeout=30, what="readiness to fail")
            assert "UndefinedTable" in await runner.check()
            await _sql(pg_dsn, "ALTER TABLE outbox_away RENAME TO outbox")

            async def recovered() -> bool:
                return await runner.check() is None

            await eventually(recovered, timeout=30, what="a new worker that works")
    finally:
        await store.close()
