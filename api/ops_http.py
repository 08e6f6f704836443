"""The operator's port (FLEETGATE_METRICS_PORT): /metrics for Prometheus, /healthz and /readyz for
the supervisor and the load balancer, without API keys, in the gateway's own event loop; and the
readiness check runner behind both /readyz (here and on the API's health routes).

The HTTP API answers /healthz and /readyz too; this port has them also where a process runs no API
(FLEETGATE_API_PORT=0). Serving them in the event loop is deliberate: a loop that is stuck answers
nothing, and a liveness probe should see that. The checks are plain coroutine functions (the
gateway's `Gateway.readiness`); the roof hands them over, so the API imports nothing of the gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import orjson
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Check = Callable[[], Awaitable[str | None]]


async def readiness(
    checks: Mapping[str, Check], timeout_s: float = 3.0
) -> tuple[bool, dict[str, str]]:
    """Run the checks at once; (all passed, name -> "ok" or the reason)."""
    names = list(checks)
    results = await asyncio.gather(*(_check(checks[n], timeout_s) for n in names))
    return all(r is None for r in results), {n: r or "ok" for n, r in zip(names, results)}


# Checks past their deadline, left to end by themselves (see _check).
_abandoned: set[asyncio.Task] = set()


async def _check(check: Check, timeout_s: float) -> str | None:
    task = asyncio.ensure_future(check())
    # Not wait_for: it waits for the cancelled check to finish, and a check stuck on a database
    # that hangs finishes only when psycopg's cancel request, itself stuck, gives up (30 s):
    # /readyz would hang instead of saying why it is not ready.
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return f"no answer within {timeout_s:g} s"
    try:
        return task.result()
    except Exception as exc:  # a failing check is a reason, not a crash
        return str(exc)[:200] or type(exc).__name__


def _forget(task: asyncio.Task) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: its reason was reported as the timeout already


def ops_app(
    checks: Mapping[str, Check], registry: CollectorRegistry | None = REGISTRY
) -> Starlette:
    """/metrics, /healthz (the process and its event loop are alive), /readyz (every check
    passes: 200, else 503 with the reasons). Bodies are those of the API's health routes."""

    registry = registry or REGISTRY

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    async def healthz(request: Request) -> Response:
        return _json({"status": "ok", "checks": {}}, 200)

    async def readyz(request: Request) -> Response:
        ready, results = await readiness(checks)
        return _json(
            {"status": "ok" if ready else "unready", "checks": results}, 200 if ready else 503
        )

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/readyz", readyz)]
    )


def _json(body: dict, status: int) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
