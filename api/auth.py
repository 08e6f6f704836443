"""API keys with scopes: `Authorization: Bearer fgk_…` (or `X-API-Key`) on every route but health.

A verified key is cached for a short while (api.key_cache, api_key_cache_s), so a revoked key
stops working within that time; `admin` includes every other scope.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.context import ApiContext, context
from api.problems import Problem
from telemetry.store import ApiKey, InvalidApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key: fgk_<id>_<secret>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    header: Annotated[str | None, Depends(_header)],
) -> ApiKey:
    key = bearer.credentials if bearer is not None else header
    if not key:
        raise Problem(
            401,
            "missing-api-key",
            "send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    ctx: ApiContext = context(request)
    record = ctx.key_cache.get(key)
    if record is None:
        try:
            record = await ctx.store.verify_api_key(key)
        except InvalidApiKey as exc:
            raise Problem(
                401, "invalid-api-key", str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None
        ctx.key_cache.put(key, record)
    request.state.api_key = record
    return record


def require(scope: str):
    """A dependency that admits keys with `scope` (or admin) and returns the key's record."""

    async def check(key: Annotated[ApiKey, Depends(api_key)]) -> ApiKey:
        if scope not in key.scopes and "admin" not in key.scopes:
            raise Problem(
                403,
                "missing-scope",
                f"this key ({key.name}) lacks the scope {scope!r}",
                scope=scope,
            )
        return key

    return Depends(check)
