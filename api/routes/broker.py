"""EMQX's HTTP authentication and authorization hooks: the same decisions as the Mosquitto
password file, ACL and subscription plugin generated from the registry, for devices and for the
gateway's own account (FLEETGATE_MQTT_USERNAME / _PASSWORD; docs/device-identity.md). EMQX reads
a 4xx or 5xx as "ignore", so refusals are 200 with result "deny"."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES

router = APIRouter(
    prefix="/broker",
    tags=["devices"],
    responses=PROBLEM_RESPONSES,
    dependencies=[require("broker:auth")],
)


class AuthnRequest(BaseModel):
    username: str | None = None
    password: str | None = None
    clientid: str | None = None


class AuthzRequest(BaseModel):
    username: str | None = None
    action: Literal["publish", "subscribe"]
    topic: str


class Decision(BaseModel):
    result: Literal["allow", "deny"]
    is_superuser: bool | None = None


@router.post(
    "/authenticate",
    response_model=Decision,
    response_model_exclude_none=True,
    summary="EMQX HTTP authenticator: may this client connect?",
)
async def authenticate(request: Request, body: AuthnRequest) -> Decision:
    ok = await context(request).broker_access.authenticate(
        body.username, body.password, body.clientid
    )
    return Decision(result="allow" if ok else "deny", is_superuser=False)


@router.post(
    "/authorize",
    response_model=Decision,
    response_model_exclude_none=True,
    summary="EMQX HTTP authorizer: may this client publish / subscribe to this topic?",
)
async def authorize(request: Request, body: AuthzRequest) -> Decision:
    ok = context(request).broker_access.authorize(body.username, body.action, body.topic)
    return Decision(result="allow" if ok else "deny")
