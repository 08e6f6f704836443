"""A shadow batch started, and one validation of it, as the `fleetgate migrate` commands and the
HTTP API both run them: the sample picked from the registered fleet and stored; both sides read
(through the ports given, the store's ShadowBatches in production), compared, the result recorded
as "parallel_run" evidence. The IO is the ports'; this module only sequences them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np

from parity.compare import ParityReport, compare, evidence_detail
from parity.observations import Observations, Rides
from parity.sample import pick_sample
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
    evidence: EvidenceRecorder | None,
    name: str,
    thresholds: Thresholds,
    now: datetime,
) -> tuple[Any, ParityReport, int | None]:
    """(the batch, its report, the evidence id); the batch's absence is the reader's error
    (unknown batch). With no recorder (a read-only look) nothing is recorded and the id is None."""
    b = await batches.get(name)
    until = b.until(now)
    fleet, legacy, rides = await batches.observations(b, until)
    report = compare(
        np.asarray(b.vehicles, np.int64),
        Observations(**fleet),
        Observations(**legacy),
        Rides(**rides),
        percent=b.percent,
        started_ms=int(b.started_at.timestamp() * 1000),
        until_ms=int(until.timestamp() * 1000),
        thresholds=thresholds,
    )
    if evidence is None:
        return b, report, None
    evidence_id = await evidence.record_migration_evidence(
        "parallel_run",
        batch=b.name,
        passed=report.passed,
        detail=evidence_detail(report, len(b.vehicles)),
        recorded_at=now,
    )
    return b, report, evidence_id


class ShadowStarter(Protocol):
    async def fleet(self) -> tuple[list[int], list[str]]: ...

    async def start(self, name: str, **batch: Any) -> Any: ...


async def start_shadow_batch(
    batches: ShadowStarter, name: str, *, percent: float, days: float, seed: int, now: datetime
) -> Any:
    """Pick the batch's sample from the registered fleet (pick_sample) and start it at now for
    days; SampleError (bad share, no vehicles) or the starter's conflict when it overlaps."""
    ids, types = await batches.fleet()
    picked = pick_sample(ids, types, percent, seed)
    kind = dict(zip(ids, types, strict=True))
    return await batches.start(
        name,
        percent=percent,
        days=days,
        seed=seed,
        vehicles=picked,
        by_type=dict(sorted(Counter(kind[v] for v in picked).items())),
        fleet_size=len(ids),
        started_at=now,
        ends_at=now + timedelta(days=days),
    )
