"""Liveness and readiness: the only routes that answer without an API key."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.context import context
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, summary="Ready to serve: broker subscribed, "
            "database writable", responses={503: {"model": Health}})
async def readyz(request: Request):
    ctx = context(request)
    names = list(ctx.readiness)
    results = await asyncio.gather(*(_check(ctx.readiness[n]) for n in names))
    checks = {n: (r or "ok") for n, r in zip(names, results)}
    ready = all(r is None for r in results)
    body = Health(status="ok" if ready else "unready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _check(check) -> str | None:
    try:
        return await asyncio.wait_for(check(), 3.0)
    except TimeoutError:
        return "no answer within 3 s"
    except Exception as exc:  # a failing check is a reason, not a crash
        return str(exc)[:200] or type(exc).__name__
