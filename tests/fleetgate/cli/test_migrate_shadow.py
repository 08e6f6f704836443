"""`fleetgate migrate shadow start|status|stop` and `migrate validate` against a real database:
the sample stratified and reproducible, overlapping runs refused with nothing written, a share
below the go-live minimum said, validation green on identical sides and red on shifted
positions, recorded as evidence, and an unknown batch named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.cli_runner import run_fleetgate
from tests.fixtures_db import run_async
from tests.harness import register
from tests.shadow_runs import RIDE_M, an_hour_ago, both_sides, parallel_run_evidence

pytestmark = pytest.mark.integration

FLEET = [(f"ebike-{n:03d}", f"veh-e{n:03d}", "ebike") for n in range(60)]
FLEET += [(f"scoot-{n:03d}", f"veh-s{n:03d}", "scooter") for n in range(30)]
FLEET += [(f"car-{n:03d}", f"veh-c{n:03d}", "car") for n in range(10)]


@pytest.fixture
def env(pg_dsn):
    run_async(register(pg_dsn, FLEET))
    return {"FLEETGATE_DATABASE_URL": pg_dsn}


def start(env, *args: str):
    return run_fleetgate("migrate", "shadow", "start", *args, "--json", env=env)


def batch_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM shadow_batches").fetchone()[0]


def test_the_sample_is_stratified_by_type_and_reproducible_for_a_seed(env):
    result = start(env, "--batch", "pilot", "--percent", "10", "--days", "14", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    pilot = json.loads(result.stdout)
    assert pilot["by_type"] == {"car": 1, "ebike": 6, "scooter": 3}
    assert len(pilot["vehicles"]) == 10 and pilot["fleet_size"] == 100
    assert pilot["state"] == "running" and not pilot["below_minimum"]
    started = datetime.fromisoformat(pilot["started_at"])
    assert datetime.fromisoformat(pilot["ends_at"]) - started == timedelta(days=14)
    stop = run_fleetgate("migrate", "shadow", "stop", "--batch", "pilot", env=env)
    assert stop.exit_code == 0, stop.stderr
    again = start(env, "--batch", "pilot2", "--seed", "3")
    assert again.exit_code == 0, again.stderr
    again = json.loads(again.stdout)
    assert again["vehicles"] == pilot["vehicles"]
    assert run_fleetgate("migrate", "shadow", "stop", "--batch", "pilot2", env=env).exit_code == 0
    other = json.loads(start(env, "--batch", "other", "--seed", "4", "--percent", "5").stdout)
    assert other["vehicles"] != pilot["vehicles"]


def test_overlapping_shadow_runs_are_refused_with_a_reason_and_nothing_written(env):
    dsn = env["FLEETGATE_DATABASE_URL"]
    assert start(env, "--batch", "pilot", "--seed", "1").exit_code == 0
    same = start(env, "--batch", "pilot", "--seed", "2")
    assert same.exit_code == 2
    assert "shadow batch 'pilot' is running" in same.stderr
    overlap = start(env, "--batch", "wide", "--percent", "100")
    assert overlap.exit_code == 2
    assert "10 of the sampled vehicles" in overlap.stderr
    assert "running shadow batch 'pilot'" in overlap.stderr
    assert batch_rows(dsn) == 1
    # once the pilot has ended (its days are over), its vehicles may join another batch
    later = (datetime.now(UTC) + timedelta(days=15)).strftime("%Y-%m-%dT%H:%M:%S%z")
    assert start(env, "--batch", "wide", "--percent", "100", "--now", later).exit_code == 0
    status = run_fleetgate("migrate", "shadow", "status", "--now", later, env=env)
    assert "wide  running  100 vehicles" in status.stdout
    assert "pilot  ended  10 vehicles" in status.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--batch", "x", "--percent", "0"), "percent 0.0 is not in (0, 100]"),
        (("--batch", "x", "--percent", "150"), "percent 150.0 is not in (0, 100]"),
        (("--batch", "x", "--days", "0"), "--days 0 is not in [0.01, 366]"),
        (("--batch", "no spaces"), "--batch 'no spaces'"),
    ],
)
def test_bad_options_are_refused_with_a_reason(env, args, reason):
    result = start(env, *args)
    assert result.exit_code == 2 and reason in result.stderr
    assert batch_rows(env["FLEETGATE_DATABASE_URL"]) == 0


def test_below_ten_percent_is_started_and_every_report_says_so(env):
    result = run_fleetgate(
        "migrate", "shadow", "start", "--batch", "tiny", "--percent", "5", env=env
    )
    assert result.exit_code == 0
    assert "below the go-live minimum of 10 %" in result.stderr
    status = run_fleetgate("migrate", "shadow", "status", env=env)
    assert "tiny  running  6 vehicles (5 %)  below the go-live minimum" in status.stdout
    result = run_fleetgate("migrate", "validate", "--batch", "tiny", env=env)
    assert "note: the batch is 5 % of the fleet, below the go-live minimum" in result.stdout


def test_validate_is_green_on_identical_sides_and_recorded_asparallel_run_evidence(env):
    dsn = env["FLEETGATE_DATABASE_URL"]
    batch = json.loads(start(env, "--batch", "pilot", "--seed", "9", "--now", an_hour_ago()).stdout)
    run_async(both_sides(dsn, batch))
    result = run_fleetgate("migrate", "validate", "--batch", "pilot", "--json", env=env)
    report = json.loads(result.stdout)
    assert result.exit_code == 0, result.stdout
    assert report["overall"] == "green" and report["passed"] is True
    # the legacy rides are derived from its samples: 7 minutes, and the fixes' distance
    usage = report["metrics"]["usage"]
    assert usage["matched"] == 10 and usage["billed_minutes_legacy"] == 70
    assert usage["distance_m_legacy"] == pytest.approx(10 * RIDE_M, abs=0.1)
    assert report["metrics"]["coverage"]["value"] == 1.0
    assert report["metrics"]["position"]["p95_m"] == 0.0
    assert report["metrics"]["state"]["fields"]["locked"]["pairs"] == 200
    assert report["days"] == pytest.approx(19 / 1440, abs=1e-3)
    assert len(report["vehicles"]) == 10
    evidence = run_async(parallel_run_evidence(dsn))
    assert len(evidence) == 1 and evidence[0].batch == "pilot"
    assert evidence[0].detail["colours"] == {m: v["colour"] for m, v in report["metrics"].items()}
    assert evidence[0].detail["vehicles"] == 10 and evidence[0].detail["percent"] == 10.0
    assert evidence[0].passed is True and evidence[0].detail["overall"] == "green"


def test_positions_50_m_apart_turn_position_agreement_red_and_validate_exits_1(env):
    dsn = env["FLEETGATE_DATABASE_URL"]
    batch = json.loads(start(env, "--batch", "pilot", "--seed", "9", "--now", an_hour_ago()).stdout)
    run_async(both_sides(dsn, batch, shift_m=50.0))
    result = run_fleetgate("migrate", "validate", "--batch", "pilot", env=env)
    assert result.exit_code == 1
    assert "position  red     p50 50.0 m, p95 50.0 m over 200 time-matched fixes" in result.stdout
    assert "coverage  green" in result.stdout
    assert "overall   red" in result.stdout
    evidence = run_async(parallel_run_evidence(dsn))
    assert not evidence[0].passed and evidence[0].detail["overall"] == "red"


def test_an_unknown_batch_or_a_bad_threshold_is_named_and_nothing_recorded(env):
    dsn = env["FLEETGATE_DATABASE_URL"]
    result = run_fleetgate("migrate", "validate", "--batch", "nope", env=env)
    assert result.exit_code == 2 and "no shadow batch 'nope'" in result.stderr
    assert start(env, "--batch", "pilot").exit_code == 0
    for bad, reason in [
        ("coverage=1", "say coverage.green or coverage.yellow"),
        ("speed.green=1", "unknown threshold 'speed.green'"),
        ("match_s=soon", "say NAME=NUMBER"),
    ]:
        result = run_fleetgate(
            "migrate", "validate", "--batch", "pilot", "--threshold", bad, env=env
        )
        assert result.exit_code == 2 and reason in result.stderr, result.stderr
    assert run_async(parallel_run_evidence(dsn)) == []


def test_stopping_a_batch_that_does_not_run_is_named(env):
    result = run_fleetgate("migrate", "shadow", "stop", "--batch", "nope", env=env)
    assert result.exit_code == 2 and "no running shadow batch 'nope'" in result.stderr


def test_two_green_weeks_of_ten_percent_meet_the_gates_parallel_run_criterion(env):
    """Time driven forward: the batch started 15 days ago, both sides agree every 10 minutes
    since; it ended a day ago, having covered its 14 days."""
    dsn = env["FLEETGATE_DATABASE_URL"]
    fortnight = (datetime.now(UTC) - timedelta(days=15)).strftime("%Y-%m-%dT%H:%M:%S%z")
    batch = json.loads(start(env, "--batch", "berlin-1", "--seed", "2", "--now", fortnight).stdout)
    run_async(both_sides(dsn, batch, samples=15 * 144, step=timedelta(minutes=10)))
    result = run_fleetgate("migrate", "validate", "--batch", "berlin-1", env=env)
    assert result.exit_code == 0, result.stdout
    assert "10 vehicles (10 %), 14.00 of 14 days compared" in result.stdout
    gate = run_fleetgate("migrate", "gate", "--batch", "berlin-1", "--json", env=env)
    criteria = {c["name"]: c for c in json.loads(gate.stdout)["criteria"]}
    assert criteria["parallel_run"]["met"] is True, criteria["parallel_run"]
    assert gate.exit_code == 1  # the other criteria have no evidence here


def test_legacy_observations_that_arrived_before_their_device_was_registered_are_compared(env):
    dsn = env["FLEETGATE_DATABASE_URL"]
    batch = json.loads(start(env, "--batch", "pilot", "--seed", "9", "--now", an_hour_ago()).stdout)
    run_async(both_sides(dsn, batch))
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE legacy_observations SET vehicle = NULL")
    result = run_fleetgate("migrate", "validate", "--batch", "pilot", "--json", env=env)
    report = json.loads(result.stdout)
    assert result.exit_code == 0 and report["metrics"]["coverage"]["legacy_samples"] == 200
