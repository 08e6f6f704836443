"""One validation of a shadow batch, as `fleetgate migrate validate` and `GET
/v1/migration/validation` both run it: read both sides (through the ports given, the store's
ShadowBatches in production), compare, record the result as "parallel_run" evidence. The IO is
the ports'; this module only sequences them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import numpy as np

from parity.compare import ParityReport, compare, evidence_detail
from parity.observations import Observations, Rides
from parity.thresholds import Thresholds


class ShadowBatch(Protocol):
    name: str
    percent: float
    started_at: datetime
    vehicles: list[int]

    def until(self, now: datetime) -> datetime: ...


class ShadowReader(Protocol):
    async def get(self, name: str) -> ShadowBatch: ...

    async def observations(
        self, batch: Any, until: datetime
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]: ...


class EvidenceRecorder(Protocol):
    async def record_migration_evidence(
        self, kind: str, *, batch: str | None, passed: bool, detail: dict, recorded_at: Any
    ) -> int: ...


async def validate_shadow_batch(
    batches: ShadowReader,
    evidence: EvidenceRecorder,
    name: str,
    thresholds: Thresholds,
    now: datetime,
) -> tuple[Any, ParityReport]:
    """(the batch, its report); the batch's absence is the reader's error (unknown batch)."""
    b = await batches.get(name)
    fleet, legacy, rides = await batches.observations(b, b.until(now))
    report = compare(
        np.asarray(b.vehicles, np.int64),
        Observations(**fleet),
        Observations(**legacy),
        Rides(**rides),
        percent=b.percent,
        started_ms=int(b.started_at.timestamp() * 1000),
        thresholds=thresholds,
    )
    await evidence.record_migration_evidence(
        "parallel_run",
        batch=b.name,
        passed=report.passed,
        detail=evidence_detail(report, len(b.vehicles)),
        recorded_at=now,
    )
    return b, report
