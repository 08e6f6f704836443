"""The operator's spreadsheet of vehicles and devices as CSV (sans-IO: the text in):
`vehicle_ref,device_id,vehicle_type[,...]` with a header line; other columns are ignored, the
column names and the type values can be mapped (mapping file: [csv.columns],
[vehicle_types.csv])."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from migration.errors import UnreadableInput
from migration.mapping import Mapping
from migration.records import (
    DEVICE_ID_INVALID,
    DUPLICATE_DEVICE,
    DUPLICATE_VEHICLE,
    UNKNOWN_VEHICLE_TYPE,
    MappedRegistry,
    Problem,
    VehicleRecord,
)
from migration.sources import MappedSource
from telemetry.topics import is_device_id

SOURCE = "csv"
FIELDS = ("vehicle_ref", "device_id", "vehicle_type")


@dataclass(frozen=True)
class CsvExport:
    text: str
    origin: str  # the file


def map_csv(export: CsvExport, mapping: Mapping) -> MappedSource:
    """Vehicles from the CSV's lines; a line's record id is `line N` (the header is line 1).
    Raises UnreadableInput when the header lacks one of the columns."""
    reader = csv.DictReader(io.StringIO(export.text))
    columns = {f: mapping.csv_columns.get(f, f) for f in FIELDS}
    header = reader.fieldnames or []
    missing = [c for c in columns.values() if c not in header]
    if missing:
        raise UnreadableInput(
            export.origin,
            f"the header line lacks {', '.join(missing)} (it has {', '.join(header) or 'nothing'})",
        )
    registry = MappedRegistry()
    types = {k.lower(): v for k, v in mapping.csv_types.items()}
    seen_device: dict[str, str] = {}
    seen_ref: dict[str, str] = {}
    lines = 0
    for line_no, row in enumerate(reader, start=2):
        lines += 1
        record = f"line {line_no}"
        ref = (row.get(columns["vehicle_ref"]) or "").strip()
        device_id = (row.get(columns["device_id"]) or "").strip()
        raw_type = (row.get(columns["vehicle_type"]) or "").strip()
        vehicle_type = types.get(raw_type.lower())
        problem = None
        if not ref:
            problem = ("vehicle_ref", "missing_field", "")
        elif not is_device_id(device_id):
            problem = ("device_id", DEVICE_ID_INVALID, device_id)
        elif vehicle_type is None:
            problem = ("vehicle_type", UNKNOWN_VEHICLE_TYPE, raw_type)
        elif device_id in seen_device:
            problem = ("device_id", DUPLICATE_DEVICE, f"as {seen_device[device_id]}")
        elif ref in seen_ref:
            problem = ("vehicle_ref", DUPLICATE_VEHICLE, f"as {seen_ref[ref]}")
        if problem is not None:
            field, reason, detail = problem
            registry.rejected_devices[record] = reason
            registry.problems.append(Problem(export.origin, record, field, reason, detail))
            continue
        seen_device[device_id] = seen_ref[ref] = record
        registry.vehicles.append(VehicleRecord(ref, device_id, vehicle_type, record))
    registry.counts = {"vehicles": lines}
    return MappedSource(
        source=SOURCE,
        origin=export.origin,
        registry=registry,
        vehicle_of_source_id={r.source_id: r for r in registry.vehicles},
    )
