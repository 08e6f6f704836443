"""`fleetgate migrate analyse|import|status` against a real database: analyse changes nothing
(a data-only dump before and after), the exit codes, unreadable input named to the byte, the
report file, secrets shown once, the runs listed."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cli_runner import run_fleetgate
from tests.migration_exports import copy_export

pytestmark = pytest.mark.integration

# A mapping file adding a Traccar category to the defaults (every test may pass it: no fixture
# has trucks).
MAPPING = '[vehicle_types.traccar]\ntruck = "car"\n[units]\nspeed = "knots"\n'


@pytest.fixture
def env(pg_dsn):
    return {"FLEETGATE_DATABASE_URL": pg_dsn}


@pytest.fixture
def mapping(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_text(MAPPING)
    return str(path)


def data_dump(dsn: str) -> str:
    run = subprocess.run(
        ["pg_dump", "--data-only", "--no-owner", "-d", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # pg_dump's \restrict lines carry a random key per dump; the data is the rest.
    return "\n".join(
        line
        for line in run.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def test_analyse_changes_nothing_and_exits_0_for_a_clean_export(env, mapping, tmp_path):
    export = copy_export("traccar", tmp_path / "export")
    run_fleetgate("migrate", "import", "--source", "traccar", str(export), "--batch", "w1",
                  "--mapping", mapping, env=env)  # fmt: skip
    before = data_dump(env["FLEETGATE_DATABASE_URL"])
    report_file = tmp_path / "report.json"
    result = run_fleetgate(
        "migrate", "analyse", "--source", "traccar", str(export), "--mapping", mapping,
        "--report", str(report_file), env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 devices, 3 geofences, 2 groups, 9 positions" in result.output
    assert data_dump(env["FLEETGATE_DATABASE_URL"]) == before
    report = json.loads(report_file.read_text())
    assert {"source", "counts", "imported", "skipped", "problems"} <= report.keys()
    assert report["source"] == "traccar" and report["problems"] == []
    assert report["mapping"]["fields"]["position.speed"] == "speed_kmh = speed × 1.852 (knots)"
    assert "  position.speed -> speed_kmh = speed × 1.852 (knots)" in result.output
    assert report["mapping"]["vehicle_types"]["truck"] == "car"  # the mapping file's


def test_analyse_lists_every_problem_and_exits_1(env, mapping, tmp_path):
    export = copy_export("traccar_traps", tmp_path / "export")
    before = data_dump(env["FLEETGATE_DATABASE_URL"])
    report_file = tmp_path / "report.json"
    result = run_fleetgate(
        "migrate", "analyse", "--source", "traccar", str(export), "--report", str(report_file),
        "--mapping", mapping, env=env,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"{export}/positions/device-15.json\t1502\tlatitude\tlat_out_of_range" in result.output
    assert f"{export}/geofences.json\t22\tarea\tunsupported_geometry (LINESTRING)" in result.output
    report = json.loads(report_file.read_text())
    assert report["skipped"]["time_beyond_retention"] == 1
    assert {"file", "record", "field", "reason"} <= report["problems"][0].keys()
    assert data_dump(env["FLEETGATE_DATABASE_URL"]) == before


def test_analyse_runs_without_a_database(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEETGATE_DATABASE_URL", raising=False)
    export = copy_export("traccar_traps", tmp_path / "export")
    result = run_fleetgate("migrate", "analyse", "--source", "traccar", str(export))
    assert result.exit_code == 1 and "duplicate_device" in result.output


def test_truncated_json_is_named_with_its_byte_offset_and_nothing_is_imported(
    env, mapping, tmp_path
):
    export = copy_export("traccar", tmp_path / "export")
    broken = export / "positions" / "device-3.json"
    broken.write_bytes(broken.read_bytes()[:500])
    for argv in (
        ("analyse",),
        ("import", "--batch", "w1"),
        ("import", "--batch", "w1", "--skip-invalid"),
    ):
        result = run_fleetgate(
            "migrate", *argv, "--source", "traccar", str(export), "--mapping", mapping, env=env
        )
        assert result.exit_code == 2, result.output
        assert f"cannot read {broken} at byte 500: invalid JSON" in result.output
    status = run_fleetgate("migrate", "status", env=env)
    assert "no migration runs" in status.output
    assert "Bike 001" not in data_dump(env["FLEETGATE_DATABASE_URL"])


def test_an_unknown_source_exits_2_listing_the_sources(env, tmp_path):
    result = run_fleetgate("migrate", "analyse", "--source", "fleetio", str(tmp_path), env=env)
    assert result.exit_code == 2
    assert "unknown source 'fleetio'; the sources are traccar, gbfs, csv" in result.output


def test_import_provisions_once_and_status_lists_the_runs(env, mapping, tmp_path):
    export = copy_export("traccar", tmp_path / "export")
    argv = ("migrate", "import", "--source", "traccar", str(export), "--batch", "wave-1",
            "--mapping", mapping, "--provision")  # fmt: skip
    report_file = tmp_path / "report.json"
    first = run_fleetgate(*argv, "--report", str(report_file), env=env)
    assert first.exit_code == 0, first.output
    assert "imported: 4 vehicles, 4 devices, 3 zones, 9 positions" in first.output
    assert len([line for line in first.output.splitlines() if line.startswith("3587")]) == 4
    report = json.loads(report_file.read_text())
    assert report["imported"] == {"vehicles": 4, "devices": 4, "zones": 3, "positions": 9}
    assert "secret" not in report_file.read_text()
    second = run_fleetgate(*argv, env=env)
    assert second.exit_code == 0 and "already imported" in second.output
    assert not [line for line in second.output.splitlines() if line.startswith("3587")]
    status = run_fleetgate("migrate", "status", "--batch", "wave-1", env=env)
    assert status.output.count("batch wave-1") == 2
    assert "already imported: 0 vehicles" in status.output
    listed = json.loads(run_fleetgate("migrate", "status", "--json", env=env).output)
    assert [r["outcome"] for r in listed] == ["already_imported", "imported"]


def test_import_without_skip_invalid_imports_nothing_and_exits_1(env, mapping, tmp_path):
    export = copy_export("traccar_traps", tmp_path / "export")
    result = run_fleetgate(
        "migrate", "import", "--source", "traccar", str(export), "--batch", "w1",
        "--mapping", mapping, env=env,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "refused: 0 vehicles, 0 devices, 0 zones, 0 positions" in result.output
    skipped = run_fleetgate(
        "migrate", "import", "--source", "traccar", str(export), "--batch", "w1",
        "--skip-invalid", "--mapping", mapping, env=env,
    )  # fmt: skip
    assert skipped.exit_code == 1
    assert "imported: 2 vehicles, 2 devices, 1 zones, 3 positions" in skipped.output


def test_an_import_killed_half_way_is_completed_by_running_it_again(env, tmp_path):
    """kill -9 between two committed chunks: what was committed stays, once; the next run adds
    exactly the rest and says how many it found stored already."""
    import os
    import signal
    import sys
    import time

    import psycopg

    from tests.migration_exports import synthetic_export

    export = synthetic_export(tmp_path / "export", devices=40, days=5, per_day=300)
    total = 40 * 5 * 300
    dsn = env["FLEETGATE_DATABASE_URL"]
    argv = [sys.executable, "-m", "fleetgate.cli", "migrate", "import", "--source", "traccar",
            str(export), "--batch", "w1", "--chunk-rows", "1000"]  # fmt: skip

    def stored() -> int:
        with psycopg.connect(dsn) as conn:
            return conn.execute("SELECT count(*) FROM positions").fetchone()[0]

    child = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while stored() == 0 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    at_kill = stored()
    assert 0 < at_kill < total, "killed between the first and the last chunk"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM migration_runs").fetchone()[0] == 0
    report_file = tmp_path / "report.json"
    again = run_fleetgate(
        "migrate", "import", "--source", "traccar", str(export), "--batch", "w1",
        "--report", str(report_file), env=env,
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    report = json.loads(report_file.read_text())
    assert report["imported"]["positions"] + report["duplicates"] == total
    assert report["duplicates"] >= at_kill
    with psycopg.connect(dsn) as conn:
        keys = conn.execute("SELECT count(*), count(DISTINCT (vehicle, time)) FROM positions")
        assert keys.fetchone() == (total, total)


def test_a_bad_mapping_file_or_a_csv_without_its_columns_exits_2(env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[units]\nspeed = "furlongs"\n')
    export = copy_export("traccar", tmp_path / "export")
    result = run_fleetgate(
        "migrate", "analyse", "--source", "traccar", str(export), "--mapping", str(bad), env=env
    )
    assert result.exit_code == 2 and "units.speed = 'furlongs'" in result.output
    sheet = tmp_path / "fleet.csv"
    sheet.write_text("ref,tcu\nbike-1,tcu-1\n")
    result = run_fleetgate("migrate", "import", "--source", "csv", str(sheet), "--batch", "b",
                           env=env)  # fmt: skip
    assert result.exit_code == 2
    assert "the header line lacks vehicle_ref, device_id, vehicle_type" in result.output


def test_gbfs_and_csv_through_the_command(env, tmp_path):
    feeds = copy_export("gbfs_v2", tmp_path / "gbfs")
    analysed = run_fleetgate("migrate", "analyse", "--source", "gbfs", str(feeds), env=env)
    assert analysed.exit_code == 1, analysed.output  # the fuel level of 120 %
    assert f"{feeds}/free_bike_status.json\tsc-9\tcurrent_fuel_percent\tsoc_out_of_range" in (
        analysed.output
    )
    # a gbfs.json whose feeds nobody serves (port 1 refuses): exit 2 naming the feed's URL
    discovery = feeds / "gbfs.json"
    discovery.write_text(
        discovery.read_text().replace("https://gbfs.example.com", "http://127.0.0.1:1")
    )
    imported = run_fleetgate(
        "migrate", "import", "--source", "gbfs", str(discovery), "--batch", "g", env=env
    )
    assert imported.exit_code == 2
    assert "cannot read http://127.0.0.1:1/v2/vehicle_types.json" in imported.output
    done = run_fleetgate(
        "migrate", "import", "--source", "gbfs", str(feeds), "--batch", "g", "--skip-invalid",
        env=env,
    )  # fmt: skip
    assert done.exit_code == 1
    assert "imported: 2 vehicles, 2 devices, 2 zones, 1 positions" in done.output
