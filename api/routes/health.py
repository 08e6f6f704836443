"""Liveness and readiness: the only routes that answer without an API key (the metrics port
answers the same two, api/ops_http.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.context import context
from api.ops_http import readiness
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Ready to serve: broker subscribed, database writable",
    responses={503: {"model": Health}},
)
async def readyz(request: Request):
    ready, checks = await readiness(context(request).readiness)
    body = Health(status="ok" if ready else "unready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
