"""The analysis of a mapped export (sans-IO): counts per entity, the mapping applied, one row
per problem. It reads every chunk of positions once and changes nothing anywhere."""

from __future__ import annotations

from migration.columns import TimeWindow
from migration.mapping import Mapping
from migration.records import INVALID_ZONE
from migration.report import RunReport
from migration.sources import MappedSource


def analyse(
    source: MappedSource,
    mapping: Mapping,
    window: TimeWindow,
    fitted: dict[str, str] | None = None,
) -> RunReport:
    """The report of what an import would take and refuse. `fitted`: the registry's device id
    -> vehicle_ref (None: no database to compare with; device_already_fitted is not checked)."""
    if fitted is not None:
        source.reject_fitted_elsewhere(fitted, source.origin)
    report = start_report(source, mapping)
    positions = 0
    for _file, mapped in source.chunks(window):
        positions += len(mapped.rows) + sum(mapped.skipped.values())
        report.count_skipped(mapped.skipped)
        report.add_problems(mapped.problems)
    if source.map_chunk is not None:
        report.counts["positions"] = positions
    return report


def start_report(source: MappedSource, mapping: Mapping) -> RunReport:
    """A report with the registry's counts and problems (the positions' come chunk by chunk)."""
    registry = source.registry
    report = RunReport(source.source, source.origin, mapping=mapping.described(source.source))
    report.counts = dict(registry.counts)
    report.add_problems(registry.problems)
    for problem in registry.problems:
        key = INVALID_ZONE if problem.reason == INVALID_ZONE else problem.reason
        report.skipped[key] = report.skipped.get(key, 0) + 1
    return report
