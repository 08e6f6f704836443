"""Fleet migrations (`fleetgate migrate import`, docs/migration.md): what each run imported,
skipped and why. Read through the store; the API does not import the migration room."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES
from api.schemas import Page

PROBLEMS_SHOWN = 100  # per run: a page of runs stays small

router = APIRouter(
    tags=["migration"], responses=PROBLEM_RESPONSES, dependencies=[require("fleet:read")]
)


class MigrationRunOut(BaseModel):
    id: int
    batch: str
    source: str = Field(description="traccar | gbfs | csv")
    origin: str = Field(description="the export's folder, file or URL")
    delta: bool = Field(description="imported with --since-last-run")
    outcome: str = Field(description="imported | already_imported | refused")
    started_at: datetime
    finished_at: datetime
    imported: dict[str, int] = Field(description="vehicles, devices, zones, positions")
    skipped: dict[str, int] = Field(description="reason -> records skipped for it")
    problems: list[dict[str, Any]] = Field(
        description=f"the first {PROBLEMS_SHOWN} problems: file, record, field, reason (and "
        "detail); `fleetgate migrate status --json` or the run's --report file has them all"
    )


class MigrationRunPage(Page):
    items: list[MigrationRunOut]


@router.get(
    "/v1/migration/runs",
    response_model=MigrationRunPage,
    summary="Migration runs, newest first: what each imported, skipped and why",
)
async def list_runs(
    request: Request,
    batch: Annotated[str | None, Query(max_length=200, description="one batch's runs")] = None,
    before: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="cursor: the last run id seen")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> MigrationRunPage:
    runs = await context(request).store.migration_runs(batch, limit, before)
    items = [
        MigrationRunOut(
            id=r.id,
            batch=r.batch,
            source=r.source,
            origin=r.origin,
            delta=r.delta,
            outcome=r.outcome,
            started_at=r.started_at,
            finished_at=r.finished_at,
            imported=r.imported,
            skipped=r.skipped,
            problems=r.report.get("problems", [])[:PROBLEMS_SHOWN],
        )
        for r in runs
    ]
    next_url = None
    if len(items) == limit:
        next_url = str(request.url.include_query_params(before=items[-1].id))
    return MigrationRunPage(items=items, next=next_url)
