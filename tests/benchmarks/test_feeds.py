"""benchmarks/feeds.py in small: its synthetic fleet builds a schema-valid vehicle_status, and
its report has the figures the README quotes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from benchmarks import feeds as bench
from feeds import GbfsFeeds
from telemetry.vehicle_types import BUILTIN_VEHICLE_TYPES
from tests.feed_schemas import assert_gbfs_valid


def test_the_synthetic_fleet_builds_a_valid_vehicle_status():
    fleet = bench.synthetic_fleet(500, seed=3)
    feeds = GbfsFeeds(bench.system(), {t.id: t for t in BUILTIN_VEHICLE_TYPES})
    doc = feeds.vehicle_status(fleet, datetime.now(UTC))
    assert 300 < len(doc["data"]["vehicles"]) < 500
    assert_gbfs_valid("vehicle_status", doc)


def test_the_build_only_report_has_its_figures(capsys):
    bench.main(["--vehicles", "300", "--repeat", "1", "--no-http"])
    report = json.loads(capsys.readouterr().out)
    assert report["build"]["vehicles"] == 300 and report["build"]["build_s"] > 0
    assert report["build"]["bytes"] > 0 and "http" not in report
