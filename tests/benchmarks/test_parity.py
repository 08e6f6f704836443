"""The parallel-run validation benchmark stays runnable: a small run prints its report, and the
numpy core and the plain-Python baseline agree on what both compute. Its speed is measured by
running it, not here."""

from __future__ import annotations

import json

from benchmarks import parity


def test_a_small_run_reports_both_and_they_agree(capsys):
    parity.main(["--vehicles", "30", "--days", "1", "--baseline-vehicles", "30", "--repeat", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["benchmark"] == "parity" and report["samples_both_sides"] > 17_000
    sub, base = report["numpy_on_baseline_vehicles"], report["plain_python"]
    assert sub["coverage"] == base["coverage"]
    assert report["numpy"]["position_p95_m"] == base["position_p95_m"]
    assert report["numpy"]["rides_legacy"] == base["rides_legacy"]
    assert set(report["numpy"]["colours"]) == {
        "coverage", "position", "state", "presence", "latency", "gaps", "usage"
    }  # fmt: skip
