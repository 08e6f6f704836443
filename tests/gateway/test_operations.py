"""What an operator sees of a running `fleetgate run`: metrics that exist and move with traffic,
/healthz and /readyz on the operator's port and the API, readiness following the database (a cut
connection, and a PostgreSQL server shut down and started again)."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg
import pytest

from fleetgate.embedded import free_port
from telemetry.store import TelemetryStore, migrate
from tests import mqtt_devices
from tests.fixtures_db import PrivateCluster, Server, dsn_for
from tests.harness import GatewayProcess, eventually, register, sample_sum
from tests.mqtt_devices import publish, sample
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.integration

DEVICES = mqtt_devices.DEVICES[:5]  # a handful: these tests count, they do not load

# What issue 8 asks operators to see, by the names they are exported under.
EXPECTED_FAMILIES = {
    "fleetgate_samples_received": "counter",
    "fleetgate_samples_stored": "counter",
    "fleetgate_samples_rejected": "counter",
    "fleetgate_samples_duplicate": "counter",
    "fleetgate_batch_messages": "histogram",
    "fleetgate_batch_samples": "histogram",
    "fleetgate_batch_commit_seconds": "histogram",
    "fleetgate_sample_commit_delay_seconds": "histogram",
    "fleetgate_pipeline_queued_messages": "gauge",
    "fleetgate_pipeline_pending_messages": "gauge",
    "fleetgate_devices_online": "gauge",
    "fleetgate_devices_registered": "gauge",
    "fleetgate_broker_connected": "gauge",
    "fleetgate_database_up": "gauge",
    "fleetgate_database_errors": "counter",
    "fleetgate_core_seconds": "histogram",
    "fleetgate_handover_check_seconds": "histogram",
    "fleetgate_handover_vehicles": "counter",
    "fleetgate_commands_dispatcher_active": "gauge",
    "fleetgate_commands_submitted": "counter",
    "fleetgate_commands_finished": "counter",
    "fleetgate_command_round_trip_seconds": "histogram",
    "fleetgate_commands_broker_connected": "gauge",
    "fleetgate_timescaledb_jobs_failing": "gauge",
    "fleetgate_build_info": "gauge",  # an Info: a gauge of 1 with the version as a label
}


async def test_metrics_exist_and_move_with_traffic(mosquitto, pg_dsn, topic_root, tmp_path):
    await register(pg_dsn, DEVICES)
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-metrics",
        tmp_path / "gw.log",
        metrics_port=free_port(),
        FLEETGATE_FLEET_GAUGES_S=0.2,
    ).start()
    try:
        await gw.wait_subscribed()
        before = await gw.scrape()
        for family, kind in EXPECTED_FAMILIES.items():
            assert before.get(family, {}).get("type") == kind, family
        for name in ("fleetgate_samples_stored_total", "fleetgate_samples_received_total"):
            assert sample_sum(before, name, transport="mqtt") == 0
        assert sample_sum(before, "fleetgate_broker_connected") == 1
        assert sample_sum(before, "fleetgate_commands_dispatcher_active") == 1

        t0 = int(time.time() * 1000) - 60_000
        for i, (device_id, _, _) in enumerate(DEVICES):
            await publish(
                mosquitto,
                topic_root,
                device_id,
                [sample(t0 + k * 1000, i) for k in range(20)] + [b'{"t": 1'],
            )
        await eventually(lambda: _stored(gw, 100), what="100 samples in the metrics")
        after = await gw.scrape()
        assert sample_sum(after, "fleetgate_samples_received_total", transport="mqtt") == 105
        assert (
            sample_sum(
                after, "fleetgate_samples_rejected_total", reason="malformed_json", transport="mqtt"
            )
            == 5
        )
        assert sample_sum(after, "fleetgate_samples_duplicate_total") == 0
        assert sample_sum(after, "fleetgate_batch_samples_sum") == 100
        for moved in (
            "fleetgate_batch_messages_count",
            "fleetgate_batch_commit_seconds_count",
            "fleetgate_sample_commit_delay_seconds_count",
            "fleetgate_handover_check_seconds_count",
        ):
            assert sample_sum(after, moved) > sample_sum(before, moved), moved
        assert sample_sum(after, "fleetgate_core_seconds_count", core="geofence") >= 1
        assert sample_sum(after, "fleetgate_core_seconds_count", core="battery") >= 1
        assert sample_sum(after, "fleetgate_handover_vehicles_total") == 0, "one process"
        assert sample_sum(after, "fleetgate_pipeline_pending_messages") == 0
        assert sample_sum(after, "fleetgate_devices_registered") == len(DEVICES)
        await eventually(
            lambda: _gauge(gw, "fleetgate_devices_online", len(DEVICES)),
            what="the online vehicles counted",
        )
    finally:
        gw.stop()


async def _stored(gw: GatewayProcess, n: int) -> bool:
    return sample_sum(await gw.scrape(), "fleetgate_samples_stored_total", transport="mqtt") >= n


async def _gauge(gw: GatewayProcess, name: str, value: float) -> bool:
    return sample_sum(await gw.scrape(), name) == value


async def test_readyz_follows_the_database_on_both_ports(mosquitto, pg_dsn, topic_root, tmp_path):
    await register(pg_dsn, DEVICES)
    proxy = await TcpProxy.start_for(pg_dsn)
    api_port = free_port()
    gw = GatewayProcess(
        proxy.dsn(pg_dsn),
        mosquitto,
        topic_root,
        "gw-ready",
        tmp_path / "gw.log",
        metrics_port=free_port(),
        FLEETGATE_API_PORT=api_port,
    ).start()
    api = f"http://127.0.0.1:{api_port}"
    try:
        await gw.wait_subscribed()
        await eventually(lambda: _status(gw, api, "/readyz", 200), what="ready")
        ready = (await gw.get("/readyz")).json()
        assert ready == {
            "status": "ok",
            "checks": {"broker": "ok", "database": "ok", "webhooks": "ok"},
        }

        await proxy.cut()
        await eventually(
            lambda: _status(gw, api, "/readyz", 503),
            timeout=20,
            what="unready while the database is away",
        )
        unready = (await gw.get("/readyz")).json()
        assert unready["status"] == "unready" and unready["checks"]["broker"] == "ok"
        assert unready["checks"]["database"] != "ok"
        assert await _status(gw, api, "/healthz", 200), "alive all the same"

        await proxy.restore()
        await eventually(
            lambda: _status(gw, api, "/readyz", 200),
            timeout=30,
            what="ready again after the database is back",
        )
        events = [e["event"] for e in gw.events()]
        assert "database_unavailable" not in events or "database_recovered" in events
    finally:
        gw.stop()
        await proxy.close()


async def _status(gw: GatewayProcess, api: str, path: str, code: int) -> bool:
    """Both the operator's port and the API answer `path` with `code`."""
    import httpx

    async with httpx.AsyncClient(timeout=10.0) as client:
        answers = await asyncio.gather(client.get(gw.ops_url + path), client.get(api + path))
    return all(a.status_code == code for a in answers)


async def test_a_stopped_database_makes_it_unready_and_nothing_is_lost(
    mosquitto, topic_root, tmp_path
):
    """The real thing, not a cut connection: the PostgreSQL server is shut down under a running
    gateway while devices keep publishing, and started again."""
    cluster = PrivateCluster(timescaledb=False)
    try:
        cluster.start()  # thrown away whole afterwards, its database with it
        dsn = dsn_for(cluster.dsn, Server(cluster.dsn).create_database("fgtest_outage"))
        await migrate(dsn, storage="native")
        await register(dsn, DEVICES)
        gw = GatewayProcess(
            dsn, mosquitto, topic_root, "gw-outage", tmp_path / "gw.log", metrics_port=free_port()
        ).start()
        try:
            t0 = await _ready_with_a_first_round_stored(gw, mosquitto, topic_root)

            cluster.halt()
            await eventually(
                lambda: _ready(gw, 503), timeout=20, what="unready while PostgreSQL is down"
            )
            body = (await gw.get("/readyz")).json()
            assert body["checks"]["broker"] == "ok" and body["checks"]["database"] != "ok"
            await _publish_round(mosquitto, topic_root, t0, 1)  # held, not acknowledged
            await eventually(
                lambda: _gauge(gw, "fleetgate_database_up", 0),
                timeout=30,
                what="the failed write reported",
            )
            scraped = await gw.scrape()
            assert sample_sum(scraped, "fleetgate_pipeline_pending_messages") == 50
            assert sample_sum(scraped, "fleetgate_samples_stored_total") == 50
            assert (await gw.get("/healthz")).status_code == 200
            assert gw.proc.poll() is None, "the gateway keeps running"

            cluster.resume()
            await eventually(lambda: _ready(gw, 200), timeout=30, what="ready again")
            await eventually(
                lambda: _stored(gw, 100), timeout=30, what="the samples of the outage stored"
            )
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                rows = await (
                    await conn.execute(
                        "SELECT count(*), count(DISTINCT (vehicle, time)) FROM positions"
                    )
                ).fetchone()
            assert rows == (100, 100)
            assert sample_sum(await gw.scrape(), "fleetgate_pipeline_pending_messages") == 0
            events = [e["event"] for e in gw.events()]
            assert "database_unavailable" in events and "database_recovered" in events
        finally:
            gw.stop()
    finally:
        cluster.stop()


async def _ready_with_a_first_round_stored(gw: GatewayProcess, broker, root: str) -> int:
    """Wait for the gateway to be ready, then store one round of fixes of every device; the
    rounds' start time (ms), a minute ago."""
    await gw.wait_subscribed()
    await eventually(lambda: _ready(gw, 200), what="ready")
    t0 = int(time.time() * 1000) - 60_000
    await _publish_round(broker, root, t0, 0)
    await eventually(lambda: _stored(gw, 50), what="the first round stored")
    return t0


async def _publish_round(broker, root: str, t0: int, round_: int) -> None:
    """10 fixes from every device, the round-th ten seconds of the ride."""
    await asyncio.gather(
        *(
            publish(
                broker,
                root,
                device_id,
                [sample(t0 + (round_ * 10 + k) * 1000, i) for k in range(10)],
            )
            for i, (device_id, _, _) in enumerate(DEVICES)
        )
    )


async def _ready(gw: GatewayProcess, code: int) -> bool:
    return (await gw.get("/readyz")).status_code == code


async def test_a_database_that_hangs_makes_it_unready_and_nothing_is_lost(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """A database that stops answering without closing anything (a server stopped by SIGSTOP,
    stuck in I/O, a proxy that swallows the traffic): the kernel acknowledges every segment, so
    no TCP keepalive or user timeout fires; readiness must follow from the gateway's own
    deadlines, and what was held must be stored once the server resumes."""
    await register(pg_dsn, DEVICES)
    proxy = await TcpProxy.start_for(pg_dsn)
    gw = GatewayProcess(
        proxy.dsn(pg_dsn),
        mosquitto,
        topic_root,
        "gw-hang",
        tmp_path / "gw.log",
        metrics_port=free_port(),
    ).start()
    try:
        t0 = await _ready_with_a_first_round_stored(gw, mosquitto, topic_root)

        proxy.freeze()
        await _publish_round(mosquitto, topic_root, t0, 1)  # its batch's write hangs
        await eventually(lambda: _ready(gw, 503), timeout=20, what="unready while it hangs")
        assert (await gw.get("/readyz")).json()["checks"]["database"] != "ok"
        assert (await gw.get("/healthz")).status_code == 200
        assert gw.proc.poll() is None, "the gateway keeps running"

        proxy.thaw()
        await eventually(lambda: _ready(gw, 200), timeout=30, what="ready again")
        await eventually(lambda: _stored(gw, 100), timeout=30, what="the held round stored")
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            rows = await (
                await conn.execute(
                    "SELECT count(*), count(DISTINCT (vehicle, time)) FROM positions"
                )
            ).fetchone()
        assert rows == (100, 100)
    finally:
        gw.stop()
        await proxy.close()


async def test_an_api_request_on_a_database_that_hangs_answers_503_within_its_deadline(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """A request already holding a connection when the server froze waited for ever (its query
    had no deadline: nothing at the TCP level notices a silent server); with
    FLEETGATE_API_DB_DEADLINE_S it answers 503 past the deadline (plus psycopg's cancel attempt,
    at most about 10 s) and the API works again once the server answers."""
    store = await TelemetryStore.open(pg_dsn)
    try:
        key = (await store.create_api_key("ops", ["fleet:read"]))[1]
    finally:
        await store.close()
    proxy = await TcpProxy.start_for(pg_dsn)
    api_port = free_port()
    gw = GatewayProcess(
        proxy.dsn(pg_dsn), mosquitto, topic_root, "gw-api-hang", tmp_path / "gw.log",
        metrics_port=free_port(), FLEETGATE_API_PORT=api_port, FLEETGATE_API_DB_DEADLINE_S=2,
        FLEETGATE_API_KEY_CACHE_S=600,
    ).start()  # fmt: skip
    api, auth = f"http://127.0.0.1:{api_port}", {"Authorization": f"Bearer {key}"}
    try:
        await gw.wait_subscribed()
        async with httpx.AsyncClient(timeout=60.0) as client:
            assert (await client.get(api + "/v1/vehicles", headers=auth)).status_code == 200
            proxy.freeze()
            started = time.monotonic()
            r = await client.get(api + "/v1/vehicles", headers=auth)
            took = time.monotonic() - started
            assert r.status_code == 503, r.text
            assert "the database did not answer within 2 s" in r.json()["detail"]
            assert took < 2 + 12, f"answered after {took:.1f} s"
            proxy.thaw()
            await eventually(
                lambda: _answers(client, api + "/v1/vehicles", auth, 200),
                timeout=30,
                what="the API answers again",
            )
    finally:
        gw.stop()
        await proxy.close()


async def _answers(client, url: str, headers: dict, code: int) -> bool:
    return (await client.get(url, headers=headers)).status_code == code
