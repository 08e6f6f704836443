"""benchmarks/webhooks.py runs and reports its figures (a small run: the figures themselves are
for benchmarks/README.md, not asserted here)."""

import orjson
import pytest

from benchmarks import webhooks

pytestmark = pytest.mark.integration


def test_the_webhooks_benchmark_delivers_everything_and_compares_ingest(capsys):
    webhooks.main(
        ["--vehicles", "20", "--events", "50", "--subscriptions", "2", "--samples", "2000"]
        + ["--event-rate", "20"]
    )
    report = orjson.loads(capsys.readouterr().out)
    deliveries = report["deliveries"]
    assert deliveries["received"] == deliveries["recorded_delivered"] == 100
    off, on = report["ingest"]["webhooks_off"], report["ingest"]["webhooks_on"]
    assert off["every_sample_stored_once"] and on["every_sample_stored_once"]
    assert off["deliveries"] == 0
    assert on["deliveries"] >= 2 * on["outbound_events"]
    assert set(report["targets"]) == {"5000_deliveries_per_s", "ingest_within_10_percent"}
