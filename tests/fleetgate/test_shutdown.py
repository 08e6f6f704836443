"""Stopping `fleetgate run` (a child process, real broker, database and HTTP clients): SIGTERM
ends open live streams and command waits and exits 0 within the grace period whatever clients
are connected; a second signal, or the grace period running out, ends a stop that hangs."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

from fleetgate.embedded import free_port
from fleetgate.shutdown import FORCED_EXIT_STATUS
from telemetry.store import TelemetryStore
from tests.harness import GatewayProcess, eventually, register, sample_sum, stored_at_least
from tests.mqtt_devices import DEVICES, publish, sample
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.integration


async def _admin_key(dsn: str) -> str:
    store = await TelemetryStore.open(dsn)
    try:
        return (await store.create_api_key(f"ops-{uuid.uuid4().hex[:6]}", ["admin"]))[1]
    finally:
        await store.close()


async def _read_stream(url: str, key: str, opened: asyncio.Event) -> bytes:
    """Everything the stream sends until the server ends it (httpx raises if it is cut)."""
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as client,
        client.stream(
            "GET", f"{url}/v1/stream", headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        assert response.status_code == 200
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            opened.set()
        return body


async def _exit_status(gw: GatewayProcess, timeout: float) -> int:
    await eventually(
        lambda: gw.proc.poll() is not None,
        timeout=timeout,
        interval=0.05,
        what="the process to exit",
    )
    return gw.proc.returncode


async def test_sigterm_ends_open_streams_and_command_waits_and_exits_0_within_the_grace_period(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    await register(pg_dsn, DEVICES)
    key = await _admin_key(pg_dsn)
    grace_s = 10.0
    api_port = free_port()
    url = f"http://127.0.0.1:{api_port}"
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-sigterm",
        tmp_path / "gw.log",
        FLEETGATE_API_PORT=api_port,
        FLEETGATE_SHUTDOWN_GRACE_S=grace_s,
    ).start()
    try:
        await gw.wait_subscribed()
        async with httpx.AsyncClient(
            base_url=url, timeout=10.0, headers={"Authorization": f"Bearer {key}"}
        ) as api:
            await eventually(lambda: _ready(api), what="the API ready")
            opened = [asyncio.Event() for _ in range(3)]
            streams = [asyncio.create_task(_read_stream(url, key, o)) for o in opened]
            # A command to a vehicle that is not connected: the call waits up to `wait`.
            waiting = asyncio.create_task(
                api.post(
                    "/v1/vehicles/veh-000/commands",
                    params={"wait": 30},
                    json={"type": "lock"},
                    headers={"Idempotency-Key": "shutdown-1"},
                    timeout=60,
                )
            )
            for o in opened:
                await asyncio.wait_for(o.wait(), 10)
            await eventually(lambda: _commands(api, 1), what="the command accepted")

            started = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            status = await _exit_status(gw, grace_s + 10)
            took = time.monotonic() - started
            assert status == 0, gw.log_path.read_text()[-3000:]
            assert took < grace_s

            for body in await asyncio.wait_for(asyncio.gather(*streams), 5):
                assert body.startswith(b": fleetgate live stream\n\n")
                assert body.endswith(b": server stopping\n\n"), body[-200:]
            answer = await asyncio.wait_for(waiting, 5)
            assert answer.status_code == 202, answer.text
            assert answer.headers["Location"] == f"/v1/commands/{answer.json()['id']}"
        events = [e["event"] for e in gw.events()]
        assert "shutdown_started" in events and "gateway_stopped" in events
        assert "shutdown_forced" not in events
    finally:
        gw.stop()


@pytest.mark.parametrize(
    "second",
    [signal.SIGTERM, signal.SIGINT, None],
    ids=["second-sigterm", "sigint-after-sigterm", "grace-period-over"],
)
async def test_a_stop_that_hangs_ends_at_a_second_signal_or_after_the_grace_period(
    mosquitto, pg_dsn, topic_root, tmp_path, second
):
    """The stop hangs for a real reason: the database is cut while the gateway holds samples it
    has not committed, and a graceful stop waits for that commit."""
    await register(pg_dsn, DEVICES)
    proxy = await TcpProxy.start_for(pg_dsn)
    grace_s = 3.0 if second is None else 300.0
    gw = GatewayProcess(
        proxy.dsn(pg_dsn),
        mosquitto,
        topic_root,
        "gw-hang",
        tmp_path / "gw.log",
        metrics_port=free_port(),
        FLEETGATE_SHUTDOWN_GRACE_S=grace_s,
    )
    try:
        gw.start()
        await gw.wait_subscribed()
        await proxy.cut()
        t0 = int(time.time() * 1000) - 60_000
        await publish(
            mosquitto, topic_root, DEVICES[0][0], [sample(t0 + k * 1000) for k in range(10)]
        )
        await eventually(lambda: _pending(gw, 10), timeout=20, what="the samples held")

        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        if second is not None:
            await asyncio.sleep(2.0)
            assert gw.proc.poll() is None, "the stop waits for the commit"
            started = time.monotonic()
            gw.proc.send_signal(second)
        status = await _exit_status(gw, 10.0)
        took = time.monotonic() - started
        assert status == FORCED_EXIT_STATUS
        if second is None:
            assert took >= grace_s - 0.5
        forced = [e for e in gw.events() if e["event"] == "shutdown_forced"]
        assert len(forced) == 1
        assert ("second" in forced[0]["reason"]) == (second is not None), forced

        # As safe as a crash: the next start stores what the forced exit left unacknowledged.
        await proxy.restore()
        gw.start()
        await gw.wait_subscribed()
        await eventually(lambda: stored_at_least(pg_dsn, 10), timeout=30, what="the samples stored")
    finally:
        gw.stop()
        await proxy.close()


async def _ready(api: httpx.AsyncClient) -> bool:
    return (await api.get("/readyz")).status_code == 200


async def _commands(api: httpx.AsyncClient, n: int) -> bool:
    return len((await api.get("/v1/commands")).json()["items"]) >= n


async def _pending(gw: GatewayProcess, n: int) -> bool:
    return sample_sum(await gw.scrape(), "fleetgate_pipeline_pending_messages") >= n
