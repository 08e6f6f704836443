"""Input the database cannot hold is refused once, before any route runs, with a 422 problem:
U+0000 (NUL) in the path, the query or a JSON body (PostgreSQL text and jsonb refuse it), and
JSON bodies that are not strict RFC 8259 JSON with values that fit (NaN and Infinity, numbers
beyond a double or integers beyond 64 bits, lone UTF-16 surrogates, invalid UTF-8).

Without this every route would have to know it: a NUL reached psycopg as a DataError (a 500).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from email.message import Message
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from api.problems import problem_response

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_INT64 = range(-(2**63), 2**63)


class _Refused(ValueError):
    """A value no route can accept; loc says where (as in FastAPI's validation errors)."""

    def __init__(self, loc: list, msg: str) -> None:
        super().__init__(msg)
        self.loc, self.msg = loc, msg


class RefuseUnstorableInput:
    """ASGI middleware: the checks in the module docstring, then the app unchanged (the body it
    read is handed on as it came)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            _check_target(scope)
            if scope["method"] in _BODY_METHODS and _json_content(scope):
                body, receive = await _read_body(receive)
                if body:
                    _check_json(body)
        except _Refused as refused:
            where = ".".join(str(p) for p in refused.loc)
            response = problem_response(
                Request(scope),
                422,
                f"{where}: {refused.msg}",
                slug="invalid-request",
                errors=[{"loc": refused.loc, "msg": refused.msg, "type": "unstorable_input"}],
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


_NUL = "contains U+0000 (NUL), which no text field accepts"


def _check_target(scope: Scope) -> None:
    if "\x00" in scope["path"]:
        raise _Refused(["path"], _NUL)
    query: bytes = scope.get("query_string", b"")
    # "%00" in the raw query is exactly a NUL once decoded: a '%' cannot be part of an escape.
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                raise _Refused(["query", name], _NUL)


def _json_content(scope: Scope) -> bool:
    """Whether FastAPI would read the body as JSON: no content type, or application/(*+)json."""
    for key, value in scope["headers"]:
        if key == b"content-type":
            message = Message()
            message["content-type"] = value.decode("latin-1")
            subtype = message.get_content_subtype()
            return message.get_content_maintype() == "application" and (
                subtype == "json" or subtype.endswith("+json")
            )
    return True


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a receive() that hands it on (then whatever comes next)."""
    chunks: list[bytes] = []
    first: list[AsgiMessage] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: let the app see it
            first.append(message)
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    first.insert(0, {"type": "http.request", "body": body, "more_body": False})

    async def replay() -> AsgiMessage:
        return first.pop(0) if first else await receive()

    return body, replay


def _check_json(body: bytes) -> None:
    """Refuse what FastAPI's lenient json.loads would let through to the routes."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Refused(["body"], f"is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except _Refused:
        raise
    except RecursionError:
        raise _Refused(["body"], "is nested too deeply") from None
    except ValueError:
        return  # not JSON at all: FastAPI's own validation error says where
    for loc, s in _strings(doc, ["body"]):
        if "\x00" in s:
            raise _Refused(loc, _NUL)
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refused(
                loc, "contains a lone UTF-16 surrogate (\\ud800-\\udfff escape without its pair)"
            ) from None


def _int(digits: str) -> int:
    value = int(digits)
    if value not in _INT64:
        raise _Refused(["body"], f"the integer {digits[:40]} is beyond 64 bits")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(["body"], f"the number {text[:40]} is beyond a double's range")
    return value


def _constant(name: str) -> float:
    raise _Refused(["body"], f"{name} is not a JSON value (RFC 8259)")


def _strings(doc, loc: list) -> Iterator[tuple[list, str]]:
    """Every string of a JSON document, keys included, with where it is (iteratively: a
    document as deep as json.loads allows must not exhaust the stack here)."""
    todo = [(loc, doc)]
    while todo:
        loc, value = todo.pop()
        if isinstance(value, str):
            yield loc, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield [*loc, key], key
                todo.append(([*loc, key], item))
        elif isinstance(value, list):
            todo.extend(([*loc, i], item) for i, item in enumerate(value))
