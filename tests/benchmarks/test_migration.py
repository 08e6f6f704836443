"""The migration benchmark stays runnable: its generated Traccar export is one the migration reads
without a problem, and a small run imports every position and COPYs the same rows back, with the
figures the README is read from. Its speed is measured by running it, not here."""

from __future__ import annotations

import json

import pytest

from benchmarks import migration
from benchmarks._traccar_export import ExportShape, write_traccar_export
from migration.analysis import analyse
from migration.columns import TimeWindow
from migration.importer import map_export
from migration.mapping import DEFAULT
from migration.traccar_export import read_traccar_folder

pytestmark = pytest.mark.integration


def test_the_generated_export_is_traccar_json_the_migration_takes_without_a_problem(tmp_path):
    shape = ExportShape(vehicles=10, positions=50, end_ms=1_795_132_800_000)
    assert write_traccar_export(tmp_path, shape) == 500
    export = read_traccar_folder(tmp_path)
    assert {d["category"] for d in export.devices} == {"bicycle", "scooter", "car"}
    first = next(iter(export.positions))
    assert first[0]["fixTime"].endswith("+00:00") and first[0]["speed"] >= 0  # knots
    report = analyse(
        map_export(export, DEFAULT), DEFAULT, TimeWindow(now_ms=shape.end_ms), fitted=None
    )
    assert report.problems == [] and report.counts["positions"] == 500


def test_a_small_run_imports_everything_and_copies_the_same_rows(capsys, tmp_path):
    try:
        migration.main(
            ["--vehicles", "6", "--positions", "300", "--export", str(tmp_path / "export")]
        )
    except SystemExit as exit:  # 1: below the targets, which a run this small may well be
        assert exit.code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["export"]["positions"] == 1800 and not report["export"]["reused"]
    assert report["import"]["positions"] == report["copy"]["rows"] == 1800
    assert report["import"]["vehicles"] == 6
    assert {"positions_per_s", "seconds", "cpu_s_this_process"} <= set(report["import"])
    assert report["import_share_of_copy"] > 0
    assert report["targets"] == {"positions_per_s": 50_000, "share_of_copy": 0.5}
