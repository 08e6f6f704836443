"""The go-live gate of a migration batch (sans-IO): the evidence recorded so far, the time and the
thresholds in, a verdict out — one criterion per rule of docs/migration.md "The go-live gate",
each met or not with what is missing. `fleetgate migrate gate` (the shell) reads the evidence and
the processes' readiness and prints this; nothing here reads a clock or a database.

The rules, with their defaults (GateThresholds):

- parallel_run: the batch's newest validation (kind parallel_run) passed, covered >= 10 % of the
  vehicles for >= 14 days, every metric green, recorded within 30 days.
- signoff: the batch's newest sign-off covers >= 10 % of the migrated records, within 30 days.
- rehearsal: a passed rehearsal (any batch) within 30 days.
- rollback: a roll-back executed (passed, any batch: a test batch) within 30 days.
- failover_drill: a passed fail-over drill of this deployment within 30 days.
- load: passed load evidence at >= 1.5 x the expected rate within 30 days.
- processes_ready: every process named answers ready (at least one named).

For rules that take "any" passed evidence, the newest passed one inside its window counts; when
there is none, the reason names the newest evidence there is (failed, or too old with its age).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

CRITERIA = (
    "parallel_run",
    "signoff",
    "rehearsal",
    "rollback",
    "failover_drill",
    "load",
    "processes_ready",
)
GO_LIVE_MIN_PERCENT = 10.0


class Evidence(Protocol):
    """What the gate reads of a piece of evidence (telemetry.store.MigrationEvidence)."""

    id: int
    kind: str
    batch: str | None
    passed: bool
    recorded_at: datetime
    detail: dict[str, Any]


@dataclass(frozen=True)
class GateThresholds:
    parallel_percent: float = GO_LIVE_MIN_PERCENT
    parallel_days: float = 14.0
    signoff_percent: float = GO_LIVE_MIN_PERCENT
    load_factor: float = 1.5
    # How old each kind of evidence may be, in days.
    windows_days: dict[str, float] = field(
        default_factory=lambda: {
            "parallel_run": 30.0,
            "signoff": 30.0,
            "rehearsal": 30.0,
            "rollback": 30.0,
            "failover_drill": 30.0,
            "load": 30.0,
        }
    )

    def window(self, kind: str) -> timedelta:
        return timedelta(days=self.windows_days[kind])


@dataclass(frozen=True)
class ProcessReadiness:
    """One process of the deployment as the shell found it: where, and whether it is ready."""

    name: str
    ready: bool
    detail: str = ""


@dataclass(frozen=True)
class Criterion:
    name: str
    met: bool
    detail: str  # what was found, or what is missing
    evidence: int | None = None  # the id of the evidence that counted (or was looked at)

    def line(self) -> str:
        return f"{'MET    ' if self.met else 'NOT MET'}  {self.name}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "met": self.met,
            "detail": self.detail,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class GateVerdict:
    batch: str
    at: datetime
    criteria: list[Criterion]

    @property
    def passed(self) -> bool:
        return all(c.met for c in self.criteria)

    @property
    def unmet(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.met]

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "at": self.at.isoformat(),
            "passed": self.passed,
            "criteria": [c.to_json() for c in self.criteria],
        }


def evaluate_gate(
    batch: str,
    evidence: Iterable[Evidence],
    now: datetime,
    processes: Sequence[ProcessReadiness],
    thresholds: GateThresholds | None = None,
) -> GateVerdict:
    """The verdict on `batch` at `now` from every piece of evidence recorded (any order; of
    other batches too: rehearsals, roll-backs and drills count from any) and the processes'
    readiness."""
    t = thresholds or GateThresholds()
    by_kind: dict[str, list[Evidence]] = {}
    for e in sorted(evidence, key=lambda e: (e.recorded_at, e.id), reverse=True):
        by_kind.setdefault(e.kind, []).append(e)
    own = {k: [e for e in es if e.batch == batch] for k, es in by_kind.items()}
    criteria = [
        _parallel_run(own.get("parallel_run", []), now, t),
        _signoff(own.get("signoff", []), now, t),
        _any_passed("rehearsal", "passed rehearsal", by_kind.get("rehearsal", []), now, t),
        _any_passed("rollback", "executed roll-back", by_kind.get("rollback", []), now, t),
        _any_passed(
            "failover_drill", "passed fail-over drill", by_kind.get("failover_drill", []), now, t
        ),
        _load(by_kind.get("load", []), now, t),
        _processes(processes),
    ]
    return GateVerdict(batch, now, criteria)


def age_text(age: timedelta) -> str:
    days = age.total_seconds() / 86400
    if days >= 1:
        return f"{days:.1f} days"
    return f"{age.total_seconds() / 3600:.1f} hours"


def _stale(kind: str, e: Evidence, now: datetime, t: GateThresholds) -> str | None:
    """Why e is outside its window (its age), or None."""
    age = now - e.recorded_at
    if age > t.window(kind):
        return (
            f"the newest is {age_text(age)} old, recorded {e.recorded_at:%Y-%m-%d %H:%M} UTC "
            f"(evidence {e.id}); it must be at most {t.windows_days[kind]:g} days old"
        )
    return None


def _number(detail: dict[str, Any], key: str) -> float | None:
    value = detail.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _newest_judged(
    name: str,
    found: list[Evidence],
    now: datetime,
    t: GateThresholds,
    absent: str,
    shortfalls: Callable[[Evidence], list[str]],
    summary: Callable[[Evidence], str],
) -> Criterion:
    """A rule met by the batch's newest evidence of its kind alone: fresh, and no shortfall."""
    if not found:
        return Criterion(name, False, absent)
    e = found[0]
    stale = _stale(name, e, now, t)
    missing = ([stale] if stale else []) + shortfalls(e)
    if missing:
        return Criterion(name, False, "; ".join(missing), e.id)
    return Criterion(name, True, f"{summary(e)}, {age_text(now - e.recorded_at)} ago", e.id)


def _share_short(percent: float | None, needed: float, of_what: str) -> list[str]:
    if percent is not None and percent >= needed:
        return []
    share = "an unknown share" if percent is None else f"{percent:g} %"
    return [f"it covered {share} of the {of_what}; at least {needed:g} % needed"]


def _parallel_run(found: list[Evidence], now: datetime, t: GateThresholds) -> Criterion:
    def shortfalls(e: Evidence) -> list[str]:
        percent, days = _number(e.detail, "percent"), _number(e.detail, "days")
        colours = e.detail.get("colours")
        missing = _share_short(percent, t.parallel_percent, "vehicles")
        if days is None or days < t.parallel_days:
            missing.append(
                f"it covered {'an unknown time' if days is None else f'{days:.1f} days'}; "
                f"at least {t.parallel_days:g} days needed"
            )
        if not isinstance(colours, dict) or not colours:
            missing.append("it lists no metric colours")
        else:
            off = sorted(f"{m} {c}" for m, c in colours.items() if c != "green")
            if off:
                missing.append(f"not all green: {', '.join(off)}")
        if not e.passed and not missing:
            missing.append(f"it did not pass (overall {e.detail.get('overall', 'unknown')})")
        return missing

    def summary(e: Evidence) -> str:
        percent, days = _number(e.detail, "percent"), _number(e.detail, "days")
        return f"{percent:g} % of the vehicles for {days:.1f} days, all green"

    absent = "no validation of a parallel run of this batch (`fleetgate migrate validate`)"
    return _newest_judged("parallel_run", found, now, t, absent, shortfalls, summary)


def _signoff(found: list[Evidence], now: datetime, t: GateThresholds) -> Criterion:
    def shortfalls(e: Evidence) -> list[str]:
        missing = _share_short(_number(e.detail, "percent"), t.signoff_percent, "migrated records")
        if not e.passed:
            missing.append("it was not signed off")
        return missing

    def summary(e: Evidence) -> str:
        percent = _number(e.detail, "percent")
        return f"{percent:g} % signed off by {e.detail.get('by', 'unknown')}"

    absent = (
        "no sign-off of this batch (`fleetgate migrate validation-sample`, "
        "then `fleetgate migrate signoff`)"
    )
    return _newest_judged("signoff", found, now, t, absent, shortfalls, summary)


def _any_passed(
    kind: str, what: str, found: list[Evidence], now: datetime, t: GateThresholds
) -> Criterion:
    for e in found:
        if e.passed and now - e.recorded_at <= t.window(kind):
            where = f" (batch {e.batch})" if e.batch else ""
            return Criterion(kind, True, f"{what}{where} {age_text(now - e.recorded_at)} ago", e.id)
    return Criterion(kind, False, _none_fresh(kind, what, found, now, t), _first_id(found))


def _load(found: list[Evidence], now: datetime, t: GateThresholds) -> Criterion:
    kind = "load"
    enough = []
    for e in found:
        factor = _number(e.detail, "factor")
        if e.passed and factor is not None and factor >= t.load_factor:
            enough.append(e)
    for e in enough:
        if now - e.recorded_at <= t.window(kind):
            return Criterion(
                kind,
                True,
                f"{e.detail.get('rate', '?')}/s sustained, {float(e.detail['factor']):.2f} x the "
                f"expected {e.detail.get('expected_rate', '?')}/s, "
                f"{age_text(now - e.recorded_at)} ago",
                e.id,
            )
    if not enough and found:
        e = found[0]
        factor = _number(e.detail, "factor")
        return Criterion(
            kind,
            False,
            f"the newest load evidence (evidence {e.id}) reached "
            f"{'an unknown factor' if factor is None else f'{factor:.2f} x'} the expected rate"
            f"{'' if e.passed else ' and did not pass'}; at least {t.load_factor:g} x needed",
            e.id,
        )
    what = f"load evidence at >= {t.load_factor:g} x the expected rate"
    return Criterion(kind, False, _none_fresh(kind, what, enough, now, t), _first_id(enough))


def _none_fresh(kind: str, what: str, found: list[Evidence], now: datetime, t: GateThresholds):
    if not found:
        return f"no {what} recorded"
    e = found[0]
    passed = [x for x in found if x.passed]
    if passed:
        p = passed[0]
        return (
            f"no {what} within {t.windows_days[kind]:g} days: the newest is "
            f"{age_text(now - p.recorded_at)} old, recorded {p.recorded_at:%Y-%m-%d %H:%M} UTC "
            f"(evidence {p.id})"
        )
    return (
        f"no {what}: the newest ({age_text(now - e.recorded_at)} old, evidence {e.id}) "
        f"failed{_why(e)}"
    )


def _why(e: Evidence) -> str:
    reason = e.detail.get("reason")
    return f": {reason}" if isinstance(reason, str) and reason else ""


def _first_id(found: list[Evidence]) -> int | None:
    return found[0].id if found else None


def _processes(processes: Sequence[ProcessReadiness]) -> Criterion:
    name = "processes_ready"
    if not processes:
        return Criterion(
            name,
            False,
            "no process to check: name each gateway and API process's /readyz "
            "(--ready-url, FLEETGATE_MIGRATION_READY_URLS)",
        )
    unready = [p for p in processes if not p.ready]
    if unready:
        return Criterion(
            name,
            False,
            "not ready: "
            + "; ".join(f"{p.name}{f' ({p.detail})' if p.detail else ''}" for p in unready),
        )
    return Criterion(name, True, f"{len(processes)} of {len(processes)} ready")


# --- load evidence from a benchmark --------------------------------------------------------------


@dataclass
class LoadEvidence:
    passed: bool
    measured_at: datetime
    detail: dict[str, Any]

    def summary(self) -> str:
        d = self.detail
        return (
            f"{d['rate']:,}/s sustained ({d['factor']:.2f} x the expected "
            f"{d['expected_rate']:g}/s, "
            f"{d['required_factor']:g} x needed), every acknowledged sample stored once: "
            f"{'yes' if d['stored_once'] else 'no'}; measured {d['date']}"
        )


def load_from_benchmark(document: Any, expected_rate: float, factor: float) -> LoadEvidence:
    """The load evidence in the JSON of `python -m benchmarks.ingest`: its paced run (a steady
    offered rate for a while) must sustain factor x expected_rate with every acknowledged sample
    stored once. ValueError says what the document lacks."""
    if not isinstance(document, dict) or document.get("benchmark") != "ingest":
        raise ValueError(
            'not the output of `python -m benchmarks.ingest` (no "benchmark": "ingest")'
        )
    paced = (document.get("fleetgate") or {}).get("paced")
    if not isinstance(paced, dict) or not isinstance(paced.get("samples_per_s"), int | float):
        raise ValueError(
            "it holds no paced fleetgate run (fleetgate.paced.samples_per_s); run "
            "the benchmark without --scale-out-only"
        )
    try:
        measured_at = datetime.strptime(str(document.get("date")), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"its date {document.get('date')!r} is not YYYY-MM-DD") from None
    rate = float(paced["samples_per_s"])
    stored_once = paced.get("every_acked_sample_stored_once") is True
    reached = rate / expected_rate
    detail = {
        "rate": round(rate),
        "offered_rate": paced.get("offered_per_s"),
        "expected_rate": expected_rate,
        "factor": round(reached, 3),
        "required_factor": factor,
        "stored_once": stored_once,
        "latency_ms": paced.get("latency_ms"),
        "date": document.get("date"),
        "machine": document.get("machine"),
        "vehicles": document.get("vehicles"),
    }
    passed = reached >= factor and stored_once
    if not passed:
        detail["reason"] = (
            f"{reached:.2f} x the expected rate, {factor:g} x needed"
            if reached < factor
            else "not every acknowledged sample was stored once"
        )
    return LoadEvidence(passed, measured_at, detail)
