"""`fleetgate migrate validation-sample|signoff|load-evidence|gate` against a real database: a
sample of an imported batch beside its export, signed off only when every row is checked and the
file is as written, load evidence from an ingest benchmark's JSON, and the gate's verdict from
evidence of every age (time is driven by recorded_at, not waited for)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from telemetry.store import TelemetryStore
from tests import REPO
from tests.cli_runner import run_fleetgate
from tests.traccar_standin import recent_copy

pytestmark = pytest.mark.integration


@pytest.fixture
def env(pg_dsn):
    return {"FLEETGATE_DATABASE_URL": pg_dsn}


@pytest.fixture
def imported(env, tmp_path):
    """examples/traccar-export (its times moved close to now) imported as batch berlin-1."""
    export = recent_copy(tmp_path / "export")
    result = run_fleetgate(
        "migrate", "import", "--source", "traccar", str(export), "--batch", "berlin-1", env=env
    )
    assert result.exit_code == 0, result.output
    return export


def evidence(dsn: str, kind: str | None = None) -> list:
    async def read():
        async with await TelemetryStore.open(dsn) as store:
            return await store.migration_evidence(kind)

    return asyncio.run(read())


def record(dsn: str, kind: str, batch: str | None, days_ago: float, passed=True, **detail) -> int:
    async def write():
        async with await TelemetryStore.open(dsn) as store:
            return await store.record_migration_evidence(
                kind,
                batch=batch,
                passed=passed,
                detail=detail,
                recorded_at=datetime.now(UTC) - timedelta(days=days_ago),
            )

    return asyncio.run(write())


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def write_rows(path, rows) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    path.write_text(out.getvalue())


# --- validation-sample and signoff -----------------------------------------------------------


def test_a_sample_shows_the_stored_beside_the_export_and_its_signoff_is_recorded(
    env, imported, tmp_path, pg_dsn
):
    # One stored position moved by ~11 m: the sample must show it beside the export's.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE positions SET lat = lat + 0.0001 WHERE (vehicle, time) = "
            "(SELECT vehicle, min(time) FROM positions GROUP BY vehicle ORDER BY vehicle LIMIT 1)"
        )
    out = tmp_path / "sample.csv"
    args = ("migrate", "validation-sample", "--source", "traccar", str(imported), "--batch",
            "berlin-1", "--percent", "100", "--seed", "3", "--out", str(out))  # fmt: skip
    result = run_fleetgate(*args, env=env)
    assert result.exit_code == 0, result.output
    assert "4 of 4 vehicles, 3 of 3 zones, 80 positions; 94 rows to check" in result.output
    assert "1 rows differ from the export" in result.output
    rows = rows_of(out.read_text())
    kinds = [r[0] for r in rows[2:]]
    assert kinds.count("vehicle") == 8 and kinds.count("zone") == 6
    assert kinds.count("position") == 80, "20 positions of each of the 4 vehicles"
    moved = [r for r in rows[2:] if r[5]]
    assert len(moved) == 1 and moved[0][0] == "position" and moved[0][5] == "11.12 m"
    same = [r for r in rows[2:] if r[0] == "position" and not r[5]]
    assert all(r[3] == r[4] for r in same), "the rest stored as exported"
    again = tmp_path / "again.csv"
    run_fleetgate(*args[:-1], str(again), env=env)
    assert [r[:6] for r in rows_of(again.read_text())[2:]] == [r[:6] for r in rows[2:]], (
        "the same seed, the same sample (the digests differ: each sample is dated)"
    )

    for row in rows[2:]:
        row[7] = "ok"
    moved_line = rows.index(moved[0]) + 1
    rows[moved_line - 1][7] = "moved 11 m: checked the legacy track, fleetgate's is right"
    write_rows(out, rows)
    result = run_fleetgate("migrate", "signoff", "--file", str(out), "--by", "Ada Lovelace",
                           env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    (signed,) = evidence(pg_dsn, "signoff")
    assert f"(evidence {signed.id})" in result.output
    assert "100 % of the migrated records, 94 rows, 93 ok, 1 with a comment" in result.output
    assert signed.batch == "berlin-1" and signed.passed
    assert signed.detail["by"] == "Ada Lovelace" and signed.detail["percent"] == 100.0
    assert signed.detail["comments"][0]["line"] == str(moved_line)
    assert signed.detail["rows"] == 94 and signed.detail["ok"] == 93


def test_signoff_refuses_unchecked_rows_and_an_altered_file_and_records_nothing(
    env, imported, tmp_path, pg_dsn
):
    out = tmp_path / "sample.csv"
    result = run_fleetgate(
        "migrate", "validation-sample", "--source", "traccar", str(imported),
        "--batch", "berlin-1", "--out", str(out), env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 of 4 vehicles, 1 of 3 zones, 20 positions" in result.output
    rows = rows_of(out.read_text())
    for row in rows[2:]:
        row[7] = "ok"
    rows[4][7] = ""  # line 5 left unchecked
    write_rows(out, rows)
    result = run_fleetgate("migrate", "signoff", "--file", str(out), "--by", "Ada", env=env)
    assert result.exit_code == 2, result.output
    assert f"line 5 ({rows[4][0]} {rows[4][1]} {rows[4][2]}): neither ok nor a comment" in (
        result.output
    )
    assert "not signed off: 1 reasons above; nothing recorded" in result.output

    rows[4][7] = "ok"
    rows[10][4] = "52.000000,13.000000"  # a stored value "corrected" in the file
    write_rows(out, rows)
    result = run_fleetgate("migrate", "signoff", "--file", str(out), "--by", "Ada", env=env)
    assert result.exit_code == 2, result.output
    assert "line 11 (position " in result.output and "altered since" in result.output

    foreign = tmp_path / "mine.csv"
    foreign.write_text("vehicle,check\nbike-1,ok\n")
    result = run_fleetgate("migrate", "signoff", "--file", str(foreign), "--by", "Ada", env=env)
    assert result.exit_code == 2
    assert "not a file written by `fleetgate migrate validation-sample`" in result.output
    assert evidence(pg_dsn) == []


def test_below_ten_percent_is_accepted_with_a_warning_and_an_unknown_batch_refused(
    env, imported, tmp_path, pg_dsn
):
    out = tmp_path / "sample.csv"
    result = run_fleetgate(
        "migrate", "validation-sample", "--source", "traccar", str(imported),
        "--batch", "berlin-1", "--percent", "5", "--out", str(out), env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "5 % is below the go-live minimum of 10 %" in result.output
    result = run_fleetgate(
        "migrate", "validation-sample", "--source", "traccar", str(imported),
        "--batch", "berlin-2", "--out", str(tmp_path / "other.csv"), env=env,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "unknown batch 'berlin-2': no migration run or evidence of that name" in result.output
    assert not (tmp_path / "other.csv").exists()
    result = run_fleetgate("migrate", "gate", "--batch", "berlin-2", env=env)
    assert result.exit_code == 2 and "unknown batch 'berlin-2'" in result.output


# --- load evidence ---------------------------------------------------------------------------


def benchmark(tmp_path, samples_per_s: int, stored_once: bool = True, date: str | None = None):
    path = tmp_path / "ingest.json"
    doc = {
        "benchmark": "ingest",
        "date": date or datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {"cpus": 2},
        "vehicles": 1000,
        "fleetgate": {
            "paced": {
                "samples_per_s": samples_per_s,
                "offered_per_s": samples_per_s,
                "every_acked_sample_stored_once": stored_once,
                "latency_ms": {"p50": 12.0, "p99": 80.0},
            }
        },
    }
    path.write_text(json.dumps(doc))
    return path


def test_load_evidence_from_an_ingest_benchmark(env, tmp_path, pg_dsn):
    result = run_fleetgate("migrate", "load-evidence", "--expected-rate", "10000",
                           "--benchmark", str(benchmark(tmp_path, 16000)), env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("PASS  load: 16,000/s sustained (1.60 x the expected")
    result = run_fleetgate("migrate", "load-evidence", "--expected-rate", "12000",
                           "--benchmark", str(benchmark(tmp_path, 16000)), env=env)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "FAIL  load: 16,000/s sustained (1.33 x" in result.output
    old = benchmark(tmp_path, 16000, date="2026-01-02")
    result = run_fleetgate("migrate", "load-evidence", "--expected-rate", "10000",
                           "--benchmark", str(old), env=env)  # fmt: skip
    assert result.exit_code == 0
    # Recorded at the benchmark's date, newest first: an old benchmark is old evidence.
    failed, passed, old = evidence(pg_dsn, "load")
    assert [passed.passed, failed.passed, old.passed] == [True, False, True]
    assert failed.detail["reason"] == "1.33 x the expected rate, 1.5 x needed"
    assert passed.detail["factor"] == 1.6 and passed.detail["latency_ms"]["p99"] == 80.0
    assert old.recorded_at == datetime(2026, 1, 2, tzinfo=UTC)
    assert passed.recorded_at.date() == datetime.now(UTC).date()

    (tmp_path / "other.json").write_text('{"benchmark": "commands"}')
    result = run_fleetgate("migrate", "load-evidence", "--expected-rate", "10",
                           "--benchmark", str(tmp_path / "other.json"), env=env)  # fmt: skip
    assert result.exit_code == 2
    assert "not the output of `python -m benchmarks.ingest`" in result.output
    assert len(evidence(pg_dsn, "load")) == 3


def test_load_evidence_from_a_real_run_of_the_ingest_benchmark(env, tmp_path, pg_dsn):
    """The benchmark as docs/migration.md runs it, small: its document is what load-evidence
    reads (a paced run offering 10 x 20 = 200 samples/s against an expected 100/s)."""
    out = tmp_path / "ingest.json"
    with out.open("wb") as f:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.ingest", "--vehicles", "10", "--rate-hz", "20",
             "--duration", "3", "--max-samples", "2000", "--skip-naive"],
            stdout=f, stderr=subprocess.DEVNULL, cwd=REPO, check=True, timeout=300,
        )  # fmt: skip
    result = run_fleetgate("migrate", "load-evidence", "--expected-rate", "100",
                           "--benchmark", str(out), env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    (load,) = evidence(pg_dsn, "load")
    assert load.passed and load.detail["stored_once"] is True
    assert load.detail["offered_rate"] == 200 and 1.5 <= load.detail["factor"] <= 2.0
    assert load.detail["machine"]["cpus"] >= 1


# --- the gate --------------------------------------------------------------------------------


class _Readiness(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        ok = self.path == "/readyz"
        body = {"status": "ok" if ok else "unready", "checks": {"broker": "ok" if ok else "down"}}
        data = json.dumps(body).encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def readyz():
    """An HTTP server answering /readyz 200 and /unready/readyz 503 as a process does."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readiness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


GREEN = {"coverage": "green", "position": "green", "state": "green", "usage": "green"}


def all_evidence(dsn: str, rehearsal_days_ago: float = 20) -> None:
    record(dsn, "parallel_run", "berlin-1", 0.2, percent=10.0, days=14.5, colours=GREEN,
           overall="green")  # fmt: skip
    record(dsn, "signoff", "berlin-1", 1, percent=10.0, by="Ada")
    record(dsn, "rehearsal", None, rehearsal_days_ago)
    record(dsn, "rollback", "test-batch", 2)
    record(dsn, "failover_drill", None, 3, command_s=7.2)
    record(dsn, "load", None, 4, factor=1.6, rate=16000, expected_rate=10000)


def test_the_gate_opens_only_on_complete_fresh_evidence(env, imported, pg_dsn, readyz):
    result = run_fleetgate("migrate", "gate", "--batch", "berlin-1",
                           "--ready-url", f"{readyz}/readyz", env=env)  # fmt: skip
    assert result.exit_code == 1
    assert result.output.count("NOT MET") == 6, result.output
    assert "batch berlin-1: go-live gate CLOSED (6 of 7 unmet)" in result.output

    all_evidence(pg_dsn)
    result = run_fleetgate("migrate", "gate", "--batch", "berlin-1",
                           "--ready-url", f"{readyz}/readyz", env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "NOT MET" not in result.output
    assert result.output.splitlines()[-1] == "batch berlin-1: go-live gate OPEN"

    result = run_fleetgate("migrate", "gate", "--batch", "berlin-1", "--json",
                           "--ready-url", f"{readyz}/readyz",
                           "--ready-url", f"{readyz}/unready/readyz", env=env)  # fmt: skip
    assert result.exit_code == 1
    verdict = json.loads(result.output)
    assert verdict["passed"] is False
    unmet = {c["name"]: c["detail"] for c in verdict["criteria"] if not c["met"]}
    assert unmet == {"processes_ready": f"not ready: {readyz}/unready/readyz (503: broker: down)"}


def test_the_gate_names_evidence_older_than_its_window_with_its_age(env, imported, pg_dsn, readyz):
    all_evidence(pg_dsn, rehearsal_days_ago=41.5)
    # A newer parallel run that is not yet two weeks long counts over the older one.
    record(pg_dsn, "parallel_run", "berlin-1", 0.1, passed=False, percent=10.0, days=6.0,
           colours={**GREEN, "coverage": "yellow"}, overall="yellow")  # fmt: skip
    result = run_fleetgate("migrate", "gate", "--batch", "berlin-1",
                           "--ready-url", f"{readyz}/readyz", env=env)  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert (
        "NOT MET  parallel_run: it covered 6.0 days; at least 14 days needed; "
        "not all green: coverage yellow"
    ) in lines
    (rehearsal,) = [line for line in lines if "rehearsal" in line]
    assert rehearsal.startswith(
        "NOT MET  rehearsal: no passed rehearsal within 30 days: the newest is 41.5 days old"
    )
    # A narrower window for the drill; without --ready-url the processes are unknown.
    result = run_fleetgate("migrate", "gate", "--batch", "berlin-1", "--window",
                           "failover_drill=2", env=env)  # fmt: skip
    assert (
        "NOT MET  failover_drill: no passed fail-over drill within 2 days: the newest is "
        "3.0 days old" in result.output
    )
    assert "NOT MET  processes_ready: no process to check" in result.output
    result = run_fleetgate("migrate", "gate", "--batch", "berlin-1", "--window", "drill=2",
                           env=env)  # fmt: skip
    assert result.exit_code == 2 and "--window 'drill=2': expected KIND=DAYS" in result.output
