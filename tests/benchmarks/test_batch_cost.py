"""benchmarks/batch_cost.py in small: batches of two sizes through the gateway's commit, every
sample stored, and the figures it reports (a fixed part and a part per sample, statements and
steps per batch) are there. Its speed is measured by running it, not here."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import batch_cost

pytestmark = pytest.mark.integration


def test_a_small_run_stores_every_sample_and_reports_the_cost_per_batch(
    pg_server, monkeypatch, capsys
):
    monkeypatch.setenv("FLEETGATE_BENCH_PG_DSN", pg_server.dsn)
    batch_cost.main(["--sizes", "5,40", "--reps", "2", "--vehicles", "10"])
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == (5 + 40) * 3 and report["every_sample_stored"]
    for size in ("5", "40"):
        figures = report["by_size"][size]
        assert figures["cpu_ms_per_batch"] > 0
        # Each batch copies its samples and its vehicles' state into staging tables.
        assert figures["statements_per_batch"]["copy"] == 2
        assert {"decode", "copy_build", "accounting"} <= set(figures["step_us_per_batch"])
    assert math.isfinite(report["fixed_ms_per_batch"]) and math.isfinite(report["us_per_sample"])
