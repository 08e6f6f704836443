"""The ingest benchmarks' load generator (benchmarks/_loadgen.py) writes its MQTT frames by hand:
a real Mosquitto takes and acknowledges them, and what arrives is the simulated fleet's samples,
each once, as the gateway's decoder reads them."""

from __future__ import annotations

import time

import pytest

from benchmarks._loadgen import publish_load
from firmware_sim import Fleet, FleetOptions
from gateway.mqtt import MqttClient
from telemetry.decoder import decode_telemetry
from tests.harness import eventually

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fast", [True, False])
async def test_the_load_is_the_fleets_samples_each_acknowledged_and_delivered_once(
    mosquitto, topic_root, fast
):
    opts = FleetOptions(
        vehicles=4,
        rate_hz=50.0,
        samples_per_vehicle=25,
        cbor_share=0.5,
        fast=fast,
        host=mosquitto.host,
        port=mosquitto.port,
        topic_root=topic_root,
        session_expiry_s=10,
        start_ms=int(time.time() * 1000) - 60_000,
    )
    got: list = []
    listener = MqttClient(
        mosquitto.host,
        mosquitto.port,
        client_id=f"loadgen-listener-{time.monotonic_ns() % 10**9}",
        on_messages=got.extend,
    )
    await listener.connect()
    await listener.subscribe([(f"{topic_root}/+/telemetry", 1)])
    try:
        started: list[float] = []
        done = await publish_load(opts, on_publishing=lambda: started.append(time.time()))
        assert done["samples_acked"] == done["messages_published"] == 100 and started
        assert done["samples_refused"] == 0
        await eventually(lambda: len(got) >= 100, timeout=10, what="every message delivered")
    finally:
        await listener.disconnect()
    devices = Fleet(opts).device_ids  # the devices `fleetgate sim` runs with these options
    registry = {d: i for i, d in enumerate(devices)}
    now = int(time.time() * 1000)
    r = decode_telemetry(
        [m.topic.split("/")[-2] for m in got],
        [m.payload for m in got],
        [now] * len(got),
        registry,
        now_ms=now,
    )
    assert not r.rejected
    keys = list(zip((devices[v] for v in r.batch.vehicle.tolist()), r.batch.time_ms.tolist()))
    times = [opts.step_time_ms(opts.start_ms, k) for k in range(25)]
    assert sorted(keys) == sorted((d, t) for d in devices for t in times)
