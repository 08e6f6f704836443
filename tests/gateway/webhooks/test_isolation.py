"""Must show (issue 20): a receiver that never answers in time, and one that answers with an
oversized body, never hold back ingestion: the gateway stores every sample while every delivery
slot hangs on them."""

import time

import pytest

from gateway.webhooks import WebhookConfig
from outbound import RetryPolicy, new_secret
from telemetry.store import TelemetryStore, Webhooks
from tests.harness import count_positions, eventually, gateway_config, register, running_gateway
from tests.mqtt_devices import DEVICES, Stream, close_devices, open_devices
from tests.webhook_events import write_zone_events
from tests.webhook_receiver import Answer, WebhookReceiver

pytestmark = pytest.mark.integration


async def test_slow_and_oversized_receivers_never_block_ingestion(pg_dsn, mosquitto, topic_root):
    ids = await register(pg_dsn, DEVICES)
    store = await TelemetryStore.open(pg_dsn)
    slow = WebhookReceiver(lambda request, nth: Answer(200, delay_s=60))
    oversized = WebhookReceiver(lambda request, nth: Answer(200, body_bytes=50 * 2**20))
    hooks = Webhooks(store)
    await hooks.create(await slow.start(), None, "slow", new_secret())
    await hooks.create(await oversized.start(), None, "oversized", new_secret())
    config = gateway_config(
        pg_dsn,
        mosquitto,
        topic_root,
        webhooks_enabled=True,
        webhooks=WebhookConfig(
            concurrency=4,
            per_subscription=2,
            timeout_s=30,
            poll_s=0.05,
            retry=RetryPolicy(first_delay_s=0.1, max_delay_s=0.5),
        ),
    )
    clients = {}
    try:
        async with running_gateway(config) as (gateway, _):
            await write_zone_events(store, sorted(ids.values()), per_vehicle=3)
            await eventually(lambda: slow.count >= 2, timeout=30, what="the slow one hangs")
            await eventually(lambda: oversized.count >= 2, timeout=30, what="oversized answers")
            clients = await open_devices(mosquitto)
            stream = Stream(clients, topic_root, int(time.time() * 1000) - 600_000)
            started = slow.count
            await stream.run(per_device=20, rate_hz=50)
            expected = 20 * len(clients)
            await eventually(
                lambda: _stored(pg_dsn, expected),
                timeout=25,
                what="every sample stored while the receivers hang",
            )
            assert slow.received == []  # no delivery to it has finished meanwhile
            assert slow.count == started  # and its two slots were held the whole time
            assert gateway.webhooks.worker is not None
            assert await gateway.check_webhooks() is None
    finally:
        await close_devices(clients)
        await slow.close()
        await oversized.close()
        await store.close()


async def _stored(dsn: str, expected: int) -> bool:
    return await count_positions(dsn) >= expected
