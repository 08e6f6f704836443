"""The parallel run's validation over HTTP (docs/migration.md): a shadow batch's observations by
fleetgate beside the legacy platform's, compared by the parity core, each metric green, yellow or
red; every answer is recorded as "parallel_run" evidence for the go-live gate, as `fleetgate
migrate validate` records it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem, invalid
from parity import DEFAULT_THRESHOLDS, validate_shadow_batch
from telemetry.store import ShadowBatches, UnknownShadowBatch

router = APIRouter(
    prefix="/v1/migration",
    tags=["migration"],
    responses=PROBLEM_RESPONSES,
    dependencies=[require("fleet:read")],
)
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


@router.get(
    "/validation",
    response_model=ValidationOut,
    summary="Compare a shadow batch's observations by fleetgate and the legacy platform",
)
async def validation(
    request: Request,
    batch: Annotated[str, Query(pattern=BATCH_RULE, description="the shadow batch")],
    threshold: Annotated[
        list[str] | None,
        Query(
            max_length=40,
            description="NAME=VALUE overrides of the thresholds (docs/migration.md), e.g. "
            "coverage.green=0.999; repeat for several",
        ),
    ] = None,
) -> ValidationOut:
    overrides = {}
    for item in threshold or []:
        name, eq, value = item.partition("=")
        try:
            overrides[name.strip()] = float(value) if eq else float("nan")
        except ValueError:
            overrides[name.strip()] = float("nan")
    try:
        thresholds = DEFAULT_THRESHOLDS.with_overrides(overrides)
    except ValueError as exc:
        raise invalid("bad-threshold", str(exc), ("query", "threshold")) from None
    store = context(request).store
    try:
        b, report = await validate_shadow_batch(
            ShadowBatches(store), store, batch, thresholds, datetime.now(UTC)
        )
    except UnknownShadowBatch as exc:
        raise Problem(404, "unknown-shadow-batch", str(exc)) from None
    return ValidationOut(batch=b.name, **report.to_json())
