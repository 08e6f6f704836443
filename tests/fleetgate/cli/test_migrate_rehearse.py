"""`fleetgate migrate rehearse`: the test run on throw-away services passes for a clean export
(counts, commands, live samples, a track within 1 m and 1 s), fails for one the import refuses,
and either way leaves nothing behind: no process, no temporary folder, the configured database
as it was. The live variant pulls from tests/traccar_standin.py (Traccar cannot run here)."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.cli_runner import run_fleetgate
from tests.migration_exports import copy_export
from tests.traccar_standin import TraccarStandIn, recent_copy

pytestmark = pytest.mark.integration


def data_dump(dsn: str) -> str:
    """The configured database's data (pg_dump --data-only), without pg_dump's random keys,
    but the rehearsal's verdict (migration_evidence, checked on its own)."""
    run = subprocess.run(
        [
            "pg_dump",
            "--data-only",
            "--no-owner",
            "--exclude-table-data=migration_evidence",
            "-d",
            dsn,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return "\n".join(
        line
        for line in run.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
        and "migration_evidence_id_seq" not in line
    )


def stored_evidence(env: dict) -> list:
    """The evidence in the configured database (the rehearsal records its verdict there)."""
    import asyncio

    from telemetry.store import TelemetryStore

    async def read():
        async with await TelemetryStore.open(env["FLEETGATE_DATABASE_URL"]) as store:
            return await store.migration_evidence()

    return asyncio.run(read())


def rehearsal_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("fleetgate-rehearse-*")}


@pytest.fixture
def configured(pg_dsn):
    """The operator's configured database, with something in it; it must stay as it is."""
    run_fleetgate(
        "devices", "register", "bike-0001", "tcu-0001", "--type", "ebike",
        env={"FLEETGATE_DATABASE_URL": pg_dsn},
    )  # fmt: skip
    before = data_dump(pg_dsn)
    folders = rehearsal_folders()
    yield {"FLEETGATE_DATABASE_URL": pg_dsn}
    assert data_dump(pg_dsn) == before, "the configured database changed"
    assert rehearsal_folders() == folders, "a temporary folder was left behind"


def assert_nothing_left_of(output: str) -> None:
    """No process runs from the rehearsal's folder (PostgreSQL, Mosquitto), and it is gone."""
    where = re.search(r"throw-away services in (\S+):", output).group(1)
    assert not Path(where).exists()
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(where in part for part in proc.info["cmdline"] or ()):
            left.append(proc.info["cmdline"])
    assert left == []


def test_a_clean_export_passes_and_leaves_nothing_behind(configured, tmp_path):
    export = recent_copy(tmp_path / "export")
    result = run_fleetgate(
        "migrate", "rehearse", "--source", "traccar", str(export), "--drive", "4", env=configured
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "PASS  import: 4 vehicles, 4 devices, 3 zones, 294 of 294 positions imported" in lines
    assert "PASS  commands: locate to 1 of 4 vehicles: 1 succeeded" in lines
    assert re.search(
        r"(?m)^PASS  live samples: (\d+) of \1 simulated samples stored$", result.output
    )
    assert re.search(
        r"(?m)^PASS  track: B-FG 103E \(862095051234037\): 117 stored fixes, 117 exported; "
        r"largest difference 0\.\d\d m, 0\.\d{3} s$",
        result.output,
    )
    assert lines[-1] == "rehearsal PASSED"
    assert_nothing_left_of(result.output)
    # The verdict is evidence for `migrate gate`, in the configured database.
    (evidence,) = stored_evidence(configured)
    assert f"verdict recorded as evidence {evidence.id}" in lines
    assert evidence.kind == "rehearsal" and evidence.passed and evidence.batch is None
    assert evidence.detail["source"] == "traccar" and evidence.detail["origin"] == str(export)
    assert [c["name"] for c in evidence.detail["checks"]] == [
        "import",
        "commands",
        "live samples",
        "track",
    ]


def test_an_export_the_import_refuses_fails_and_leaves_nothing_behind(configured, tmp_path):
    export = copy_export("traccar_traps", tmp_path / "export")
    result = run_fleetgate(
        "migrate", "rehearse", "--source", "traccar", str(export), env=configured
    )
    assert result.exit_code == 1, result.output
    assert re.search(r"(?m)^FAIL  import: refused: \d+ problems in the export", result.output)
    assert result.output.splitlines()[-1] == "rehearsal FAILED"
    assert_nothing_left_of(result.output)
    (evidence,) = stored_evidence(configured)
    assert not evidence.passed
    assert evidence.detail["reason"].startswith("import: refused: ")


def test_a_live_pull_is_rehearsed_like_its_folder(configured, tmp_path):
    export = recent_copy(tmp_path / "export")
    with TraccarStandIn(export, token="recorded-token") as traccar:
        result = run_fleetgate(
            "migrate", "rehearse", "--source", "traccar", "--url", traccar.url,
            "--drive", "3", env={**configured, "TRACCAR_TOKEN": "recorded-token"},
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "294 of 294 positions imported" in result.output
    assert_nothing_left_of(result.output)


def test_an_unreadable_export_exits_2_before_starting_anything(configured, tmp_path):
    export = recent_copy(tmp_path / "export")
    (export / "devices.json").write_text('[{"id": 11, "name": "Bike')
    result = run_fleetgate(
        "migrate", "rehearse", "--source", "traccar", str(export), env=configured
    )
    assert result.exit_code == 2, result.output
    assert "devices.json at byte 25" in result.output
    assert "throw-away services" not in result.output
    assert stored_evidence(configured) == []


def test_a_gbfs_feed_without_history_is_rehearsed_without_a_track_to_compare(configured):
    """GBFS (one sample per vehicle, one of an unknown type skipped as the import would) and
    no Traccar track: the import, commands and live samples are checked."""
    feeds = Path(__file__).parents[2] / "migration" / "exports" / "gbfs_v3"
    result = run_fleetgate(
        "migrate", "rehearse", "--source", "gbfs", str(feeds), "--skip-invalid", "--drive", "2",
        env=configured,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(r"(?m)^PASS  import: 3 vehicles, .*2 unknown_vehicle_type\)$", result.output)
    assert "PASS  commands: locate to 1 of 3 vehicles: 1 succeeded" in result.output
    assert "track" not in result.output
    assert_nothing_left_of(result.output)


def test_a_database_that_cannot_take_the_verdict_is_said_and_the_verdict_stands(tmp_path):
    """The configured database is away: the rehearsal ran on its own services all the same;
    its verdict and exit code stand, and stderr says the evidence was not recorded."""
    from fleetgate.embedded import free_port

    away = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
    export = copy_export("traccar_traps", tmp_path / "export")
    result = run_fleetgate(
        "migrate", "rehearse", "--source", "traccar", str(export),
        env={"FLEETGATE_DATABASE_URL": away},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "fleetgate: the verdict could not be recorded as evidence: " in result.output
    assert result.output.splitlines()[-1] == "rehearsal FAILED"
    assert_nothing_left_of(result.output)
