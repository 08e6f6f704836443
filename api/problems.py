"""Errors as RFC 9457 problem details (application/problem+json), for every route.

Domain failures raise Problem with a stable `type` (a relative URI under /problems/); FastAPI's
validation errors and plain HTTP errors are turned into the same shape, with the reason. Every 422
lists its reasons in `errors`: [{"loc": [...], "msg": ..., "type": ...}] (docs/api.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from telemetry.store import StoreUnavailable

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


class FieldError(BaseModel):
    """One reason a request is invalid: where (`loc`, e.g. ["body", "params", "kph"]) and why."""

    loc: list[str | int]
    msg: str
    type: str | None = None


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; extension members may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None  # every 422 has it


class Problem(Exception):
    """A request that cannot be served, with its reason. `slug` names the problem type."""

    def __init__(
        self, status: int, slug: str, detail: str, *, headers: dict | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.extra = status, slug, detail, extra
        self.headers = headers


def field_errors(
    errors: Iterable[Mapping[str, Any]], loc: Sequence[str | int] = ()
) -> list[dict[str, Any]]:
    """pydantic's errors as a 422's `errors` list; `loc` is put before each error's location
    (e.g. ("body",) for a model validated from the request body)."""
    return [
        {"loc": [*loc, *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in errors
    ]


def invalid(slug: str, detail: str, loc: Sequence[str | int] = ("body",)) -> Problem:
    """A 422 for input the models let through but the domain refuses, with its one error."""
    return Problem(422, slug, detail, errors=[{"loc": list(loc), "msg": detail, "type": slug}])


def problem_response(
    request: Request,
    status: int,
    detail: str | None,
    *,
    slug: str | None = None,
    headers: dict | None = None,
    **extra,
) -> JSONResponse:
    body = {
        "type": f"/problems/{slug}" if slug else "about:blank",
        "title": HTTPStatus(status).phrase if not slug else slug.replace("-", " ").capitalize(),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


# Shared response documentation, so the OpenAPI spec says what errors look like.
PROBLEM_RESPONSES: dict[int | str, dict] = {
    code: {"model": ProblemDetails, "content": {MEDIA_TYPE: {}}, "description": text}
    for code, text in (
        (400, "Bad request"),
        (401, "No valid API key"),
        (403, "The key lacks the scope"),
        (404, "Not found"),
        (409, "Conflict"),
        (422, "Invalid input"),
        (503, "Database unavailable"),
    )
}


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        extra = exc.extra
        if exc.status == 422 and "errors" not in extra:  # the promise holds for every 422
            extra = {**extra, "errors": [{"loc": [], "msg": exc.detail, "type": exc.slug}]}
        return problem_response(
            request, exc.status, exc.detail, slug=exc.slug, headers=exc.headers, **extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return problem_response(
            request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = field_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return problem_response(
            request,
            422,
            f"{where}: {first['msg']}" if where else first["msg"],
            slug="invalid-request",
            errors=errors,
        )

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable):
        return problem_response(
            request, 503, str(exc), slug="database-unavailable", headers={"Retry-After": "5"}
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("api_error", extra={"path": request.url.path})
        return problem_response(request, 500, "internal error; the server log has the details")
