"""The go-live gate's evaluation (sans-IO): time is a parameter, so two weeks of parallel run and
evidence ageing past its window are a matter of recorded_at and now."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from migration.gate import (
    CRITERIA,
    GateThresholds,
    ProcessReadiness,
    evaluate_gate,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
GREEN = {"coverage": "green", "position": "green", "state": "green", "usage": "green"}


@dataclass(frozen=True)
class Ev:
    id: int
    kind: str
    batch: str | None
    passed: bool
    recorded_at: datetime
    detail: dict[str, Any] = field(default_factory=dict)


def days_ago(d: float) -> datetime:
    return NOW - timedelta(days=d)


def complete(batch: str = "berlin-1") -> list[Ev]:
    """Every piece of evidence, fresh and passed."""
    return [
        Ev(
            1,
            "parallel_run",
            batch,
            True,
            days_ago(0.5),
            {"percent": 10.0, "days": 14.2, "colours": GREEN, "overall": "green"},
        ),
        Ev(2, "signoff", batch, True, days_ago(1), {"percent": 11.0, "by": "Ada"}),
        Ev(3, "rehearsal", None, True, days_ago(20), {}),
        Ev(4, "rollback", "test-batch", True, days_ago(3), {}),
        Ev(5, "failover_drill", None, True, days_ago(2), {"command_s": 6.1}),
        Ev(6, "load", None, True, days_ago(4), {"factor": 1.6, "rate": 480, "expected_rate": 300}),
    ]


READY = [ProcessReadiness("http://gw1:9108/readyz", True)]


def unmet(verdict) -> dict[str, str]:
    return {c.name: c.detail for c in verdict.criteria if not c.met}


def test_complete_fresh_evidence_passes_every_criterion():
    verdict = evaluate_gate("berlin-1", complete(), NOW, READY)
    assert verdict.passed, unmet(verdict)
    assert [c.name for c in verdict.criteria] == list(CRITERIA)
    assert [c.evidence for c in verdict.criteria] == [1, 2, 3, 4, 5, 6, None]
    doc = verdict.to_json()
    assert doc["passed"] is True and doc["batch"] == "berlin-1"


def test_no_evidence_lists_every_criterion_with_what_is_missing():
    verdict = evaluate_gate("berlin-1", [], NOW, [])
    assert not verdict.passed
    missing = unmet(verdict)
    assert list(missing) == list(CRITERIA)
    assert "fleetgate migrate validate" in missing["parallel_run"]
    assert "migrate signoff" in missing["signoff"]
    assert missing["rehearsal"] == "no passed rehearsal recorded"
    assert missing["rollback"] == "no executed roll-back recorded"
    assert missing["load"] == "no load evidence at >= 1.5 x the expected rate recorded"
    assert "--ready-url" in missing["processes_ready"]


def test_evidence_of_another_batch_does_not_count_for_parallel_run_and_signoff():
    verdict = evaluate_gate("hamburg", complete("berlin-1"), NOW, READY)
    assert set(unmet(verdict)) == {"parallel_run", "signoff"}


def test_a_parallel_run_two_weeks_long_passes_only_once_the_time_has_run():
    evidence = complete()
    short = replace(evidence[0], detail={**evidence[0].detail, "days": 13.9})
    verdict = evaluate_gate("berlin-1", [short, *evidence[1:]], NOW, READY)
    assert unmet(verdict) == {"parallel_run": "it covered 13.9 days; at least 14 days needed"}


def test_a_parallel_run_below_ten_percent_or_not_all_green_is_unmet_and_says_which():
    evidence = complete()
    bad = replace(
        evidence[0],
        passed=False,
        detail={
            "percent": 8.0,
            "days": 15.0,
            "colours": {**GREEN, "coverage": "yellow", "position": "red"},
            "overall": "red",
        },
    )
    detail = unmet(evaluate_gate("berlin-1", [bad, *evidence[1:]], NOW, READY))["parallel_run"]
    assert "8 % of the vehicles; at least 10 % needed" in detail
    assert "not all green: coverage yellow, position red" in detail


def test_the_newest_parallel_run_counts_not_an_older_green_one():
    evidence = complete()
    newer_red = Ev(
        9,
        "parallel_run",
        "berlin-1",
        False,
        days_ago(0.1),
        {"percent": 10.0, "days": 14.5, "colours": {**GREEN, "usage": "red"}},
    )
    verdict = evaluate_gate("berlin-1", [*evidence, newer_red], NOW, READY)
    assert unmet(verdict)["parallel_run"] == "not all green: usage red"
    assert verdict.criteria[0].evidence == 9


def test_evidence_older_than_its_window_is_named_with_its_age():
    evidence = complete()
    old = [
        replace(evidence[2], recorded_at=days_ago(41.25)),  # rehearsal
        replace(evidence[0], recorded_at=days_ago(31)),  # parallel run
    ]
    verdict = evaluate_gate("berlin-1", [old[1], evidence[1], old[0], *evidence[3:]], NOW, READY)
    missing = unmet(verdict)
    assert set(missing) == {"rehearsal", "parallel_run"}
    assert missing["rehearsal"] == (
        "no passed rehearsal within 30 days: the newest is 41.2 days old, recorded "
        "2026-10-26 06:00 UTC (evidence 3)"
    )
    assert "31.0 days old" in missing["parallel_run"]
    assert "at most 30 days old" in missing["parallel_run"]
    # Driving time forward: the complete evidence of today is stale in 31 days.
    later = evaluate_gate("berlin-1", complete(), NOW + timedelta(days=31), READY)
    assert set(unmet(later)) == {
        "parallel_run",
        "signoff",
        "rehearsal",
        "rollback",
        "failover_drill",
        "load",
    }


def test_windows_are_configurable():
    evidence = complete()
    strict = GateThresholds(windows_days={**GateThresholds().windows_days, "rehearsal": 7.0})
    verdict = evaluate_gate("berlin-1", evidence, NOW, READY, strict)
    assert set(unmet(verdict)) == {"rehearsal"}
    assert "within 7 days" in unmet(verdict)["rehearsal"]


def test_a_failed_rehearsal_does_not_count_but_an_older_passed_one_in_the_window_does():
    evidence = complete()
    failed = Ev(10, "rehearsal", None, False, days_ago(1), {"reason": "2 commands failed"})
    verdict = evaluate_gate("berlin-1", [*evidence, failed], NOW, READY)
    assert verdict.passed and verdict.criteria[2].evidence == 3
    only_failed = [e for e in evidence if e.kind != "rehearsal"] + [failed]
    detail = unmet(evaluate_gate("berlin-1", only_failed, NOW, READY))["rehearsal"]
    assert "failed: 2 commands failed" in detail and "evidence 10" in detail


def test_load_below_one_and_a_half_times_the_expected_rate_is_unmet():
    evidence = [e for e in complete() if e.kind != "load"]
    low = Ev(11, "load", None, True, days_ago(1), {"factor": 1.2, "rate": 360})
    detail = unmet(evaluate_gate("berlin-1", [*evidence, low], NOW, READY))["load"]
    assert "1.20 x the expected rate" in detail and "at least 1.5 x needed" in detail


def test_every_process_must_be_ready_and_the_unready_are_named():
    processes = [
        ProcessReadiness("http://gw1:9108/readyz", True),
        ProcessReadiness("http://gw2:9108/readyz", False, "503: broker not connected"),
    ]
    verdict = evaluate_gate("berlin-1", complete(), NOW, processes)
    assert unmet(verdict) == {
        "processes_ready": "not ready: http://gw2:9108/readyz (503: broker not connected)"
    }


def test_a_signoff_below_ten_percent_is_unmet():
    evidence = complete()
    low = replace(evidence[1], detail={"percent": 5.0, "by": "Ada"})
    detail = unmet(evaluate_gate("berlin-1", [evidence[0], low, *evidence[2:]], NOW, READY))
    assert detail == {"signoff": "it covered 5 % of the migrated records; at least 10 % needed"}
