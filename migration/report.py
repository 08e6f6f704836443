"""What a migration run found and did, as the `--report` JSON (docs/migration.md, "Report"):
{"source", "counts", "imported": {"vehicles", "devices", "zones", "positions"},
 "skipped": {reason: n}, "problems": [{"file", "record", "field", "reason"}]} and a few keys
more (origin, batch, outcome, mapping, duplicates, run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from migration.records import Problem

IMPORTED_KEYS = ("vehicles", "devices", "zones", "positions")
# How many problem rows a report lists in all; every problem is counted in `skipped`.
MAX_PROBLEMS = 1000


@dataclass
class RunReport:
    source: str
    origin: str
    batch: str | None = None
    outcome: str = "analysed"  # analysed | imported | already_imported | refused
    counts: dict[str, int] = field(default_factory=dict)
    imported: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IMPORTED_KEYS, 0))
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    problems_not_listed: int = 0
    mapping: dict[str, Any] = field(default_factory=dict)
    duplicates: int = 0  # positions already stored (same vehicle and time)
    implausible: int = 0  # positions kept but flagged as implausible jumps (as the gateway does)
    run: int | None = None
    secrets: list[Any] = field(default_factory=list)  # IssuedSecret; never in the JSON

    def add_problems(self, problems: list[Problem]) -> None:
        room = MAX_PROBLEMS - len(self.problems)
        self.problems.extend(problems[: max(room, 0)])
        self.problems_not_listed += max(len(problems) - max(room, 0), 0)

    def count_skipped(self, skipped: dict[str, int]) -> None:
        for reason, n in skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n

    @property
    def has_problems(self) -> bool:
        return bool(self.problems) or bool(self.skipped)

    @property
    def exit_code(self) -> int:
        """0: everything importable (or imported); 1: problems (2 is for unreadable input)."""
        return 1 if self.has_problems else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "origin": self.origin,
            "batch": self.batch,
            "outcome": self.outcome,
            "run": self.run,
            "counts": self.counts,
            "imported": self.imported,
            "skipped": dict(sorted(self.skipped.items())),
            "duplicates": self.duplicates,
            "implausible": self.implausible,
            "problems": [p.to_json() for p in self.problems],
            "problems_not_listed": self.problems_not_listed,
            "mapping": self.mapping,
        }

    def summary(self) -> list[str]:
        """The lines the CLI prints."""
        lines = [
            f"{self.source} export {self.origin}: "
            + ", ".join(f"{n} {entity}" for entity, n in self.counts.items())
        ]
        if self.outcome == "analysed" and self.mapping.get("fields"):
            lines.append("mapping:")
            lines += [
                f"  {source} -> {target}" for source, target in self.mapping["fields"].items()
            ]
        if self.outcome != "analysed":
            lines.append(
                f"{self.outcome.replace('_', ' ')}: "
                + ", ".join(f"{n} {k}" for k, n in self.imported.items())
                + (f" ({self.duplicates} positions already stored)" if self.duplicates else "")
            )
        if self.skipped:
            lines.append(
                "skipped: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
            )
        for p in self.problems:
            detail = f" ({p.detail})" if p.detail else ""
            lines.append(f"  {p.file}\t{p.record}\t{p.field}\t{p.reason}{detail}")
        if self.problems_not_listed:
            lines.append(f"  ... and {self.problems_not_listed} more problems (see skipped)")
        return lines
