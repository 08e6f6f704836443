"""The go-live gate of a migration batch (docs/migration.md "The go-live gate"): every
criterion, met or with what is missing, as `fleetgate migrate gate --json` prints it. The roof
hands the evaluation over (ApiContext.migration_gate); the API does not import the migration
room."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem

router = APIRouter(
    tags=["migration"], responses=PROBLEM_RESPONSES, dependencies=[require("fleet:read")]
)


class CriterionOut(BaseModel):
    name: str = Field(
        description="parallel_run | signoff | rehearsal | rollback | failover_drill | load | "
        "processes_ready"
    )
    met: bool
    detail: str = Field(description="what was found, or what is missing (with its age)")
    evidence: int | None = Field(None, description="the evidence that counted or was looked at")


class GateOut(BaseModel):
    batch: str
    at: datetime
    passed: bool = Field(description="every criterion met: the batch may go live")
    criteria: list[CriterionOut]


@router.get(
    "/v1/migration/gate",
    response_model=GateOut,
    summary="The go-live gate of a migration batch: each criterion met, or what is missing",
)
async def migration_gate(
    request: Request,
    batch: Annotated[str, Query(min_length=1, max_length=200, description="the batch")],
) -> GateOut:
    ctx = context(request)
    if ctx.migration_gate is None:
        raise Problem(
            503, "gate-unavailable", "this API was started without the go-live gate's evaluation"
        )
    verdict = await ctx.migration_gate(ctx.store, batch)
    if verdict is None:
        raise Problem(
            404,
            "unknown-batch",
            f"unknown batch {batch!r}: no migration run or evidence of that name",
        )
    return GateOut.model_validate(verdict)
