"""The ingest benchmarks' load generator (benchmarks/_loadgen.py) writes its MQTT frames by hand:
a real Mosquitto takes and acknowledges them, and what arrives is the simulated fleet's samples,
each once, as the gateway's decoder reads them."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from benchmarks._loadgen import publish_load
from firmware_sim import Fleet, FleetOptions
from tests.broker_listener import Listener
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
    async with Listener(mosquitto, topic_root) as listener:
        started: list[float] = []
        done = await publish_load(opts, on_publishing=lambda: started.append(time.time()))
        assert done["samples_acked"] == done["messages_published"] == 100 and started
        assert done["samples_refused"] == 0
        await eventually(
            lambda: len(listener.of("telemetry")) >= 100, timeout=10, what="every message"
        )
    devices = Fleet(opts).device_ids  # the devices `fleetgate sim` runs with these options
    keys, r = listener.decoded(devices)
    assert not r.rejected
    times = [opts.step_time_ms(opts.start_ms, k) for k in range(25)]
    assert keys == Counter((d, t) for d in devices for t in times), "each sample once"
