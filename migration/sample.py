"""The manual check of migrated records (sans-IO): which vehicles and zones a seeded sample takes,
the CSV a person fills in (`fleetgate migrate validation-sample`), and the reading of the filled
file (`fleetgate migrate signoff`).

The file: a header, then one `sample` row describing the sample (batch, seed, percent, counts, as
JSON in its `source` cell), then one row per thing to check — a vehicle's master data field, a
zone's name and geometry, a position as stored beside the export's — with a `check` cell the
person fills with `ok` or a comment. Every row carries a digest of its cells (but `check`), and
the sample row a digest of the whole sample: a row changed, added, dropped or moved, or a file
not written by validation-sample, is refused at sign-off. The digests show the file is the one
written, not who wrote it; the sign-off records who signed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

HEADER = ("kind", "key", "field", "source", "fleetgate", "difference", "digest", "check")
KINDS = ("vehicle", "zone", "position")
POSITIONS_PER_VEHICLE = 20
GO_LIVE_MIN_PERCENT = 10.0
MAX_REASONS = 50


def choose(keys: Sequence[str], percent: float, seed: int) -> list[str]:
    """At least `percent` % of keys (rounded up; at least one of a non-empty list), the same
    ones for the same keys, percent and seed; sorted."""
    ordered = sorted(set(keys))
    if not ordered:
        return []
    count = min(len(ordered), max(1, math.ceil(len(ordered) * percent / 100 - 1e-9)))
    return sorted(random.Random(seed).sample(ordered, count))


def spread(n: int, k: int = POSITIONS_PER_VEHICLE) -> list[int]:
    """k indices spread evenly over range(n), first and last included (all of them if n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@dataclass(frozen=True)
class Row:
    kind: str  # vehicle | zone | position
    key: str  # the vehicle_ref, zone id, or "vehicle_ref time"
    field: str
    source: str  # what the export says
    fleetgate: str  # what fleetgate stored
    difference: str = ""  # "" where they agree, else what differs

    def cells(self) -> list[str]:
        return [self.kind, self.key, self.field, self.source, self.fleetgate, self.difference]


@dataclass
class SampleMeta:
    batch: str
    seed: int
    percent: float  # as asked
    vehicles: tuple[int, int]  # (sampled, migrated)
    zones: tuple[int, int]
    positions: int
    rows: int
    created: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def covered_percent(self) -> float:
        """The share of the migrated records the sample covers: the lower of vehicles' and
        zones' (zones only where there are any)."""
        shares = [100.0 * s / n for s, n in (self.vehicles, self.zones) if n]
        return round(min(shares), 2) if shares else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "seed": self.seed,
            "percent": self.percent,
            "vehicles": list(self.vehicles),
            "zones": list(self.zones),
            "positions": self.positions,
            "rows": self.rows,
            "created": self.created,
            **self.extra,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SampleMeta:
        known = ("batch", "seed", "percent", "vehicles", "zones", "positions", "rows", "created")
        return cls(
            batch=str(doc["batch"]),
            seed=int(doc["seed"]),
            percent=float(doc["percent"]),
            vehicles=(int(doc["vehicles"][0]), int(doc["vehicles"][1])),
            zones=(int(doc["zones"][0]), int(doc["zones"][1])),
            positions=int(doc["positions"]),
            rows=int(doc["rows"]),
            created=str(doc["created"]),
            extra={k: v for k, v in doc.items() if k not in known},
        )


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()[:20]


def row_digest(meta_text: str, cells: Sequence[str]) -> str:
    return _digest(meta_text, *cells)


def sample_digest(meta_text: str, digests: Sequence[str]) -> str:
    return _digest("sample", meta_text, *digests)


def write_sample(meta: SampleMeta, rows: Sequence[Row]) -> str:
    """The CSV the person fills in."""
    meta.rows = len(rows)
    meta_text = orjson.dumps(meta.to_json(), option=orjson.OPT_SORT_KEYS).decode()
    digests = [row_digest(meta_text, r.cells()) for r in rows]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerow(
        [
            "sample",
            meta.batch,
            "the sample",
            meta_text,
            "",
            "",
            sample_digest(meta_text, digests),
            "",
        ]
    )
    for row, digest in zip(rows, digests):
        writer.writerow([*row.cells(), digest, ""])
    return out.getvalue()


@dataclass
class FilledSample:
    meta: SampleMeta
    rows: int
    ok: int
    comments: list[dict[str, str]]  # {"row", "kind", "key", "field", "comment"}


class SampleRefused(ValueError):
    """The filled file cannot be signed off; `reasons` lists why (per row where it is a row)."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _sample_row(rows: list[list[str]]) -> tuple[str, SampleMeta]:
    not_ours = "not a file written by `fleetgate migrate validation-sample`"
    if not rows or tuple(c.strip() for c in rows[0]) != HEADER:
        raise SampleRefused([f"{not_ours}: its header is not {','.join(HEADER)}"])
    if len(rows) < 2 or len(rows[1]) != len(HEADER) or rows[1][0] != "sample":
        raise SampleRefused([f"{not_ours}: its first row does not describe the sample"])
    try:
        return rows[1][3], SampleMeta.from_json(orjson.loads(rows[1][3]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        raise SampleRefused([f"{not_ours}: its sample row is not readable"]) from None


def read_filled(text: str) -> FilledSample:
    """The filled sample, or SampleRefused with every reason: not written by validation-sample,
    altered, or a row with neither `ok` nor a comment."""
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()  # a spreadsheet's trailing empty lines
    meta_text, meta = _sample_row(rows)
    reasons: list[str] = []
    digests: list[str] = []
    ok = 0
    comments: list[dict[str, str]] = []
    for number, cells in enumerate(rows[2:], start=3):  # line numbers as a spreadsheet shows
        if len(cells) != len(HEADER):
            reasons.append(f"line {number}: {len(cells)} cells, {len(HEADER)} expected")
            continue
        kind, key, fld, *_rest = cells
        what = f"line {number} ({kind} {key} {fld})"
        digest = cells[6]
        digests.append(digest)
        if kind not in KINDS or row_digest(meta_text, cells[:6]) != digest:
            reasons.append(f"{what}: altered since validation-sample wrote it")
            continue
        check = cells[7].strip()
        if not check:
            reasons.append(f"{what}: neither ok nor a comment in `check`")
        elif check.lower() == "ok":
            ok += 1
        else:
            comments.append(
                {"line": str(number), "kind": kind, "key": key, "field": fld, "comment": check}
            )
    if len(rows) - 2 != meta.rows:
        reasons.append(f"the sample had {meta.rows} rows to check, the file has {len(rows) - 2}")
    elif not reasons and sample_digest(meta_text, digests) != rows[1][6]:
        reasons.append("rows were added, dropped or moved since validation-sample wrote them")
    if reasons:
        raise SampleRefused(_capped(reasons))
    return FilledSample(meta, len(rows) - 2, ok, comments)


def _capped(reasons: list[str]) -> list[str]:
    if len(reasons) > MAX_REASONS:
        return [*reasons[:MAX_REASONS], f"and {len(reasons) - MAX_REASONS} more"]
    return reasons
