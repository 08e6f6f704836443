"""benchmarks/ingest.py's ceiling (mosquitto_sub consuming the load generator's messages) and its
stage profile of the gateway: a real Mosquitto, mosquitto_sub and load generator child, tiny loads.
Speed is not tested here; that the figures are what they claim to be is."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import ingest
from benchmarks._stage_profile import StageProfile
from gateway.mqtt._packets import PacketStream
from telemetry import decoder

pytestmark = pytest.mark.integration

WORKLOAD = ingest.Workload(vehicles=3, samples=20, rate_hz=100.0, fast=True, seed=1)


async def test_the_ceiling_counts_every_message_mosquitto_sub_received(mosquitto, topic_root):
    ceiling = ingest.Ceiling(mosquitto, topic_root, count=60)
    out = await ingest.measure(ceiling, mosquitto, WORKLOAD, timeout=60)
    assert out["samples"] == 60 and out["every_acked_sample_received"]
    assert out["samples_per_s"] > 0 and out["consumer_cpu_us_per_sample"] > 0
    assert len(out["loadavg"]) == 3
    # The rounds of a run resume the same persistent session.
    again = await ingest.measure(ceiling, mosquitto, WORKLOAD, timeout=60)
    assert again["samples"] == 60 and again["every_acked_sample_received"]


async def test_a_ceiling_that_misses_messages_fails_rather_than_reports(mosquitto, topic_root):
    # 61 expected where 60 are sent: mosquitto_sub never exits, the run times out.
    ceiling = ingest.Ceiling(mosquitto, topic_root, count=61)
    with pytest.raises(TimeoutError, match="ceiling to commit 60 samples"):
        await ingest.measure(ceiling, mosquitto, WORKLOAD, timeout=3)


def test_the_ceiling_pairs_each_fleetgate_run_with_the_ceiling_run_of_its_round():
    def run(per_s: int, cpu: float) -> dict:
        return {"samples_per_s": per_s, "consumer_cpu_us_per_sample": cpu, "loadavg": [1, 1, 1]}

    results = {
        "ceiling": {"max": run(40_000, 1.0), "max_2": run(20_000, 1.0)},
        "fleetgate": {"max": run(36_000, 6.0), "max_2": run(19_000, 8.0)},
    }
    out = ingest.vs_ceiling(results)
    assert [r["ratio"] for r in out["rounds"]] == [0.9, 0.95]
    assert out["median_ratio"] == 0.925 and out["best_ratio"] == 0.95
    assert out["median_gateway_cpu_us_per_sample"] == 7.0


def test_the_stage_profile_times_each_step_on_its_own_and_puts_everything_back():
    original_feed = PacketStream.feed
    original_columns = decoder._columns
    with StageProfile() as prof:
        assert PacketStream.feed is not original_feed
        result = decoder.decode_telemetry(
            ["dev-1"] * 3,
            [b'{"t": 1764412800000, "lat": 52.5, "lon": 13.4}'] * 3,
            [1764412800000] * 3,
            {"dev-1": 1},
            now_ms=1764412800000,
        )
    assert len(result.batch) == 3
    assert PacketStream.feed is original_feed and decoder._columns is original_columns
    # Native JSON samples: the typed decoder takes them all, the general parse is not called.
    assert prof.calls["decode.native"] == 1 and prof.calls["decode.validate"] == 1
    assert prof.calls["decode.parse"] == 0
    assert prof.ns["decode.native"] > 0 and prof.ns["decode.validate"] > 0
    report = prof.report(samples=3, total_cpu_s=1.0)
    steps = sum(report[label] for label in prof.ns)
    assert report["total"] == pytest.approx(1e6 / 3, abs=0.01)
    assert steps + report["rest"] == pytest.approx(report["total"], abs=0.1)


async def test_mosquitto_sub_missing_is_said_plainly(mosquitto, topic_root, monkeypatch):
    monkeypatch.setattr(ingest.shutil, "which", lambda name: None)
    ceiling = ingest.Ceiling(mosquitto, topic_root, count=1)
    with pytest.raises(RuntimeError, match="mosquitto_sub not found"):
        async with ceiling.running(ingest.Recorder()):
            pass


def test_the_recorder_splits_publish_to_commit_at_the_gateways_receipt():
    recorder = ingest.Recorder()
    # Published at 1000 (twice) and 2000 ms, received at 1100, 1200 and 2010, committed in two
    # batches at 1300 and 2050.
    recorder.batch(np.array([1000, 1000]), 1300.0, np.array([1100, 1200]))
    recorder.batch(np.array([2000]), 2050.0, np.array([2010]))
    parts = recorder.latency_parts_ms(wall_offset_ms=0.0)
    assert parts["publish_to_receipt"] == {"p50": 100.0, "p99": 198.0, "max": 200.0}
    assert parts["receipt_to_commit"]["max"] == 200.0
    assert parts["receipt_to_commit"]["p50"] == 100.0
    assert parts["batches"] == 2
    assert parts["batch_samples"]["max"] == 2
    assert parts["newest_receipt_to_commit"]["max"] == 100.0  # 1300 - 1200
    assert ingest.Recorder().latency_parts_ms(0.0) == {}
