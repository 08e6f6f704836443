"""The parallel run over HTTP (docs/migration.md): shadow batches started, listed and stopped as
`fleetgate migrate shadow` does, and a batch's observations by fleetgate beside the legacy
platform's, compared by the parity core, each metric green, yellow or red. GET only looks (a
reader's key may); POST /v1/migration/validations also records the result as "parallel_run"
evidence for the go-live gate, as `fleetgate migrate validate` does, and needs migration:write:
a read-only key must not be able to put evidence before the gate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem, invalid
from parity import (
    DEFAULT_THRESHOLDS,
    GO_LIVE_MIN_PERCENT,
    SampleError,
    start_shadow_batch,
    validate_shadow_batch,
)
from telemetry.store import ShadowBatch, ShadowBatches, ShadowConflict, UnknownShadowBatch

router = APIRouter(prefix="/v1/migration", tags=["migration"], responses=PROBLEM_RESPONSES)
BATCH_RULE = r"^[A-Za-z0-9_.:-]{1,64}$"


class MetricOut(BaseModel):
    model_config = {"extra": "allow"}

    value: float | None = Field(description="null: nothing to compare (yellow)")
    colour: str = Field(description="green | yellow | red")


class ValidationOut(BaseModel):
    batch: str
    overall: str = Field(description="the worst colour of the metrics")
    passed: bool = Field(description="every metric green")
    percent: float = Field(description="the batch's share of the fleet")
    below_minimum: bool = Field(description="percent below the go-live minimum")
    minimum_percent: float
    days: float = Field(description="from the batch's start to the newest compared sample")
    newest_sample: int | None = Field(description="ms since the epoch")
    notes: list[str] = Field(description="below the minimum, metrics with nothing to compare")
    metrics: dict[str, MetricOut] = Field(
        description="coverage, position, state, presence, latency, gaps, usage"
    )
    vehicles: list[dict[str, Any]] = Field(description="per vehicle: figures and colour")
    thresholds: dict[str, Any]
    evidence_id: int | None = Field(
        None, description="the go-live evidence this validation was recorded as (POST only)"
    )


_THRESHOLD_HELP = (
    "NAME=VALUE overrides of the thresholds (docs/migration.md), e.g. coverage.green=0.999; "
    "repeat for several"
)


@router.get(
    "/validation",
    response_model=ValidationOut,
    dependencies=[require("fleet:read")],
    summary="Compare a shadow batch's observations by fleetgate and the legacy platform "
    "(records nothing)",
)
async def validation(
    request: Request,
    batch: Annotated[str, Query(pattern=BATCH_RULE, description="the shadow batch")],
    threshold: Annotated[
        list[str] | None, Query(max_length=40, description=_THRESHOLD_HELP)
    ] = None,
) -> ValidationOut:
    overrides = {}
    for item in threshold or []:
        name, eq, value = item.partition("=")
        try:
            overrides[name.strip()] = float(value) if eq else float("nan")
        except ValueError:
            overrides[name.strip()] = float("nan")
    return await _validate(request, batch, overrides, ("query", "threshold"), record=False)


class ValidationRequest(BaseModel):
    batch: str = Field(pattern=BATCH_RULE, description="the shadow batch")
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        max_length=40,
        description='overrides by name (docs/migration.md), e.g. {"coverage.green": 0.999}',
    )


@router.post(
    "/validations",
    response_model=ValidationOut,
    status_code=201,
    dependencies=[require("migration:write")],
    summary="Validate a shadow batch and record the result as go-live evidence "
    "(as `fleetgate migrate validate`)",
)
async def record_validation(request: Request, body: ValidationRequest) -> ValidationOut:
    return await _validate(request, body.batch, body.thresholds, ("body", "thresholds"), True)


async def _validate(
    request: Request,
    batch: str,
    overrides: dict[str, float],
    overrides_at: tuple[str, ...],
    record: bool,
) -> ValidationOut:
    try:
        thresholds = DEFAULT_THRESHOLDS.with_overrides(overrides)
    except ValueError as exc:
        raise invalid("bad-threshold", str(exc), overrides_at) from None
    store = context(request).store
    try:
        b, report, evidence_id = await validate_shadow_batch(
            ShadowBatches(store), store if record else None, batch, thresholds, datetime.now(UTC)
        )
    except UnknownShadowBatch as exc:
        raise Problem(404, "unknown-shadow-batch", str(exc)) from None
    return ValidationOut(batch=b.name, evidence_id=evidence_id, **report.to_json())


class ShadowStart(BaseModel):
    batch: str = Field(pattern=BATCH_RULE, description="the batch's name")
    percent: float = Field(10.0, gt=0, le=100, description="share of the fleet, by vehicle type")
    days: float = Field(14.0, ge=0.01, le=366, description="how long the parallel run lasts")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="the same seed, the same sample")


class ShadowBatchOut(BaseModel):
    batch: str
    state: str = Field(description="running | stopped | ended")
    percent: float
    below_minimum: bool = Field(description="percent below the go-live minimum")
    days: float
    seed: int
    started_at: AwareDatetime
    ends_at: AwareDatetime
    stopped_at: AwareDatetime | None
    fleet_size: int = Field(description="vehicles registered when the sample was picked")
    by_type: dict[str, int] = Field(description="vehicle type -> vehicles picked")
    vehicles: list[int] = Field(description="the sampled vehicles' ids")


def _out(b: ShadowBatch, now: datetime) -> ShadowBatchOut:
    return ShadowBatchOut(
        batch=b.name,
        state="running" if b.running(now) else "stopped" if b.stopped_at else "ended",
        percent=b.percent,
        below_minimum=b.percent < GO_LIVE_MIN_PERCENT,
        days=b.days,
        seed=b.seed,
        started_at=b.started_at,
        ends_at=b.ends_at,
        stopped_at=b.stopped_at,
        fleet_size=b.fleet_size,
        by_type=b.by_type,
        vehicles=b.vehicles,
    )


@router.post(
    "/shadow-batches",
    response_model=ShadowBatchOut,
    status_code=201,
    summary="Start a shadow batch: a reproducible sample of the fleet, stratified by type",
    dependencies=[require("migration:write")],
)
async def start_batch(request: Request, body: ShadowStart) -> ShadowBatchOut:
    now = datetime.now(UTC)
    try:
        b = await start_shadow_batch(
            ShadowBatches(context(request).store),
            body.batch,
            percent=body.percent,
            days=body.days,
            seed=body.seed,
            now=now,
        )
    except ShadowConflict as exc:
        raise Problem(409, "shadow-batch-overlaps", str(exc)) from None
    except SampleError as exc:
        raise Problem(409, "no-sample", str(exc)) from None
    return _out(b, now)


@router.get(
    "/shadow-batches",
    response_model=list[ShadowBatchOut],
    summary="The shadow batches, newest first",
    dependencies=[require("fleet:read")],
)
async def list_batches(request: Request) -> list[ShadowBatchOut]:
    now = datetime.now(UTC)
    return [_out(b, now) for b in await ShadowBatches(context(request).store).all()]


@router.post(
    "/shadow-batches/{batch}/stop",
    response_model=ShadowBatchOut,
    summary="Stop a running shadow batch",
    dependencies=[require("migration:write")],
)
async def stop_batch(
    request: Request, batch: Annotated[str, Path(pattern=BATCH_RULE)]
) -> ShadowBatchOut:
    now = datetime.now(UTC)
    try:
        b = await ShadowBatches(context(request).store).stop(batch, now)
    except UnknownShadowBatch as exc:
        raise Problem(404, "unknown-shadow-batch", str(exc)) from None
    return _out(b, now)
