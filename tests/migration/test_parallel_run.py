"""The parallel run end to end (issue 19): two real Mosquitto processes, the simulated fleet of
50 vehicles speaking a legacy dialect (flat-json) to the legacy broker, the bridge from
`fleetgate migrate bridge-config` mirroring it into fleetgate's broker, a gateway ingesting, and
a legacy platform stand-in forwarding what it sees to `POST /v1/migration/shadow/legacy`.
Validation of the whole fleet as a shadow batch is green on every metric; dropping 1 % of the
legacy platform's samples turns coverage yellow; its positions 50 m off turn position red."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from api import KeyCache
from firmware_sim.fleet import FleetOptions, run_fleet
from fleetgate.embedded import Mosquitto
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.dialect import load_dialects
from telemetry.earth import M_PER_DEG
from tests.cli_runner import run_fleetgate
from tests.dialect_traffic import shipped_path
from tests.harness import eventually, gateway_config, register, running_gateway
from tests.legacy_platform import LegacyPlatform, bridged_brokers
from tests.mqtt_devices import device

pytestmark = pytest.mark.integration

TYPES = ["ebike"] * 30 + ["scooter"] * 15 + ["car"] * 5
FLEET = [(f"{t}-{n:04d}", f"veh-{n:04d}", t) for n, t in enumerate(TYPES, 1)]
STEP_S = 45  # simulated seconds between two samples: further apart than the ±30 s window
SAMPLES = 40  # per vehicle: 2,000 in all, 30 simulated minutes
SPEEDUP = 150  # about 12 s of wall-clock time


async def _count(dsn: str, query: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return (await (await conn.execute(query)).fetchone())[0]


def _validate(env: dict) -> tuple[int, dict]:
    result = run_fleetgate("migrate", "validate", "--batch", "pilot", "--json", env=env)
    return result.exit_code, json.loads(result.stdout)


async def test_a_parallel_run_validates_green_and_each_disagreement_shows(
    tmp_path, pg_dsn, api_server
):
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    # A forwarding legacy platform posts one position per request: as deployed (api_key_cache_s),
    # the key is verified once, not hashed again for every position.
    api_server.context.key_cache = KeyCache(60)
    brokers = contextlib.ExitStack()
    legacy, ours = brokers.enter_context(bridged_brokers(tmp_path, "flat-json"))
    platform = LegacyPlatform(
        legacy.host, legacy.port, api_server.url, api_server.keys["legacy"], "legacy"
    )
    try:
        await register(pg_dsn, FLEET)
        an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S%z")
        started = await asyncio.to_thread(
            run_fleetgate, "migrate", "shadow", "start", "--batch", "pilot", "--percent", "100",
            "--seed", "1", "--now", an_hour_ago, env=env,
        )  # fmt: skip
        assert started.exit_code == 0, started.stderr
        await platform.start()
        cfg = gateway_config(pg_dsn, ours, "fg/v1", mqtt_dialects=load_dialects(["flat-json"]))
        async with running_gateway(cfg):
            # the bridge connects on its own time: fleetgate's broker subscribed to the legacy
            await _wait_bridged(legacy, ours)
            stats = await run_fleet(
                FleetOptions(
                    host=legacy.host,
                    port=legacy.port,
                    named=FLEET,
                    dialect=str(shipped_path("flat-json")),
                    rate_hz=1 / STEP_S,
                    samples_per_vehicle=SAMPLES,
                    speedup=SPEEDUP,
                    seed=19,
                )
            )
            assert stats.samples_acked == stats.samples_generated == len(FLEET) * SAMPLES
            counts: list = []
            try:
                await eventually(
                    lambda: _both_sides_have(pg_dsn, len(FLEET) * SAMPLES, counts),
                    timeout=60,
                    what="every sample on both sides",
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: (fleetgate, legacy) stored {counts[-1]}") from None
            await platform.idle()
            await eventually(lambda: _all_trips_measured(pg_dsn), timeout=15, what="trips measured")
        assert platform.refused == []

        code, report = await asyncio.to_thread(_validate, env)
        colours = {m: v["colour"] for m, v in report["metrics"].items()}
        assert colours == dict.fromkeys(colours, "green"), report["metrics"]
        assert code == 0 and report["overall"] == "green" and len(report["vehicles"]) == 50
        assert report["metrics"]["usage"]["matched"] > 0  # the fleet rode

        # 1 % of the legacy platform's samples lost (parked ones: no ride changes)
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await conn.execute(
                "DELETE FROM legacy_observations WHERE id IN (SELECT id FROM legacy_observations"
                " WHERE attributes -> 'lock' = 'true' ORDER BY md5(id::text) LIMIT %s)",
                (len(FLEET) * SAMPLES // 100,),
            )
        code, report = await asyncio.to_thread(_validate, env)
        assert code == 1
        assert report["metrics"]["coverage"]["colour"] == "yellow", report["metrics"]["coverage"]
        assert report["metrics"]["position"]["colour"] == "green"

        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await conn.execute("UPDATE legacy_observations SET lat = lat + %s", (50.0 / M_PER_DEG,))
        code, report = await asyncio.to_thread(_validate, env)
        assert report["metrics"]["position"]["colour"] == "red"
        assert report["metrics"]["position"]["p50_m"] == pytest.approx(50.0, abs=0.5)
        assert report["overall"] == "red"
    finally:
        await platform.stop()
        brokers.close()


async def _wait_bridged(legacy: Mosquitto, ours: Mosquitto) -> None:
    """Until a probe published on the legacy broker arrives on fleetgate's (the bridge makes its
    subscription on its own time; a sample before it would be lost to fleetgate)."""
    topic, seen = "devices/bridge-probe/data", []
    watcher = MqttClient(
        ConnectOptions(ours.host, ours.port, "probe-watcher"), on_messages=seen.extend
    )
    await watcher.connect()
    await watcher.subscribe([(topic, 1)])
    sender = await device(legacy, "bridge-probe")

    async def arrived() -> bool:
        if not seen:
            await sender.publish(topic, b"{}", qos=1)
        return bool(seen)

    try:
        await eventually(arrived, timeout=30, what="the bridge up")
    finally:
        await sender.disconnect()
        await watcher.disconnect()


async def _both_sides_have(dsn: str, n: int, counts: list) -> bool:
    ours = await _count(dsn, "SELECT count(*) FROM positions")
    theirs = await _count(dsn, "SELECT count(*) FROM legacy_observations WHERE vehicle IS NOT NULL")
    counts.append((ours, theirs))
    return ours >= n and theirs >= n


async def _all_trips_measured(dsn: str) -> bool:
    return await _count(dsn, "SELECT count(*) FROM trips WHERE status = 'closing'") == 0
