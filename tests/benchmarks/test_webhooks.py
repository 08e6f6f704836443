"""benchmarks/webhooks.py runs and reports its figures (a small run: the figures themselves are
for benchmarks/README.md, not asserted here)."""

import os

import orjson
import pytest

from benchmarks import webhooks

pytestmark = pytest.mark.integration


def test_the_webhooks_benchmark_delivers_everything_and_compares_ingest(capsys):
    webhooks.main(
        ["--vehicles", "20", "--events", "50", "--subscriptions", "2", "--samples", "2000"]
        + ["--event-rate", "20", "--rounds", "1"]
    )
    report = orjson.loads(capsys.readouterr().out)
    (deliveries,) = report["deliveries"]
    assert deliveries["received"] == deliveries["recorded_delivered"] == 100
    assert len(report["baseline_bare_posts"]) == 1
    off, on = report["ingest"]["webhooks_off"], report["ingest"]["webhooks_on"]
    assert off["every_sample_stored_once"] and on["every_sample_stored_once"]
    assert off["deliveries"] == 0
    assert on["deliveries"] >= 2 * on["outbound_events"]
    assert set(report["targets"]) == {"5000_deliveries_per_s", "ingest_within_10_percent"}


def test_the_webhooks_benchmark_leaves_the_environment_as_it_was(capsys):
    before = dict(os.environ)
    webhooks.main(["--vehicles", "4", "--samples", "400", "--event-rate", "10", "--rounds", "0"])
    capsys.readouterr()
    assert dict(os.environ) == before
