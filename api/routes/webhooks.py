"""Webhook subscriptions: create (the secret is shown once), list, change, delete, their
deliveries, replay from an event id and re-drive of dead letters (docs/webhooks.md). The delivery
worker in the gateway picks changes up within its poll interval."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from api.auth import require
from api.context import context
from api.problems import PROBLEM_RESPONSES, Problem, invalid
from api.schemas import (
    RedriveIn,
    ReplayIn,
    Webhook,
    WebhookActionResult,
    WebhookCreated,
    WebhookDelivery,
    WebhookDeliveryPage,
    WebhookIn,
    WebhookList,
    WebhookPatch,
)
from api.webhook_urls import check_url
from outbound import CATALOGUE, InvalidWebhookUrl, UnknownEventType, check_types, new_secret
from telemetry.store import Subscription, UnknownOutboxEvent, UnknownSubscription, Webhooks

router = APIRouter(tags=["webhooks"], responses=PROBLEM_RESPONSES)
SCOPE = "webhooks:write"


def _webhooks(request: Request) -> Webhooks:
    return Webhooks(context(request).store)


def _public(sub: Subscription) -> Webhook:
    return Webhook(
        id=sub.id,
        url=sub.url,
        event_types=sub.event_types,
        description=sub.description,
        enabled=sub.enabled,
        disabled_reason=sub.disabled_reason,
        created_at=sub.created_at,
        updated_at=sub.updated_at,
    )


def _types(types: list[str] | None) -> list[str] | None:
    if types is None:
        return None
    try:
        return check_types(types)
    except UnknownEventType as exc:
        raise Problem(
            422,
            "unknown-event-type",
            str(exc),
            errors=[{"loc": ["body", "event_types"], "msg": str(exc), "type": "unknown"}],
            catalogue=list(CATALOGUE),
        ) from None


async def _check_url(request: Request, url: str) -> None:
    """422 unless http(s), resolving, and not this gateway's own API or operator's port."""
    server = request.scope.get("server") or ("", 0)
    try:
        await check_url(url, {*context(request).own_ports, server[1]}, {server[0] or ""})
    except InvalidWebhookUrl as exc:
        raise invalid("bad-webhook-url", str(exc), ("body", "url")) from None


def _unknown(sub_id: str) -> Problem:
    return Problem(404, "unknown-webhook", f"no webhook subscription {sub_id!r}")


@router.post(
    "/v1/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Subscribe a URL to outbound events (the secret is shown once)",
    dependencies=[require(SCOPE)],
)
async def create_webhook(request: Request, body: WebhookIn) -> WebhookCreated:
    types = _types(body.event_types)
    await _check_url(request, body.url)
    secret = new_secret()
    sub = await _webhooks(request).create(body.url, types, body.description, secret)
    return WebhookCreated(**_public(sub).model_dump(), secret=secret)


@router.get(
    "/v1/webhooks",
    response_model=WebhookList,
    summary="List webhook subscriptions",
    dependencies=[require(SCOPE)],
)
async def list_webhooks(request: Request) -> WebhookList:
    return WebhookList(items=[_public(s) for s in await _webhooks(request).list()])


@router.get(
    "/v1/webhooks/{sub_id}",
    response_model=Webhook,
    summary="One webhook subscription",
    dependencies=[require(SCOPE)],
)
async def get_webhook(request: Request, sub_id: str) -> Webhook:
    try:
        return _public(await _webhooks(request).get(sub_id))
    except UnknownSubscription:
        raise _unknown(sub_id) from None


@router.patch(
    "/v1/webhooks/{sub_id}",
    response_model=Webhook,
    summary="Change a subscription's URL, types or description, or enable it again",
    dependencies=[require(SCOPE)],
)
async def patch_webhook(request: Request, sub_id: str, body: WebhookPatch) -> Webhook:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("url") is None:
        changes.pop("url", None)
    else:
        await _check_url(request, changes["url"])
    if "event_types" in changes:
        changes["event_types"] = _types(changes["event_types"])
    if changes.get("description") is None:
        changes.pop("description", None)
    if changes.get("enabled") is None:
        changes.pop("enabled", None)
    try:
        return _public(await _webhooks(request).update(sub_id, changes))
    except UnknownSubscription:
        raise _unknown(sub_id) from None


@router.delete(
    "/v1/webhooks/{sub_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a subscription and its delivery records",
    dependencies=[require(SCOPE)],
)
async def delete_webhook(request: Request, sub_id: str) -> Response:
    try:
        await _webhooks(request).delete(sub_id)
    except UnknownSubscription:
        raise _unknown(sub_id) from None
    return Response(status_code=204)


@router.get(
    "/v1/webhooks/{sub_id}/deliveries",
    response_model=WebhookDeliveryPage,
    summary="A subscription's deliveries, newest first (delivered, retrying, dead)",
    dependencies=[require(SCOPE)],
)
async def list_deliveries(
    request: Request,
    sub_id: str,
    state: Literal["delivered", "retrying", "dead"] | None = None,
    before: Annotated[int | None, Query(ge=0, description="cursor from `next`")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> WebhookDeliveryPage:
    try:
        rows = await _webhooks(request).deliveries(
            sub_id, state=state, before=before, limit=limit + 1
        )
    except UnknownSubscription:
        raise _unknown(sub_id) from None
    next_url = None
    if len(rows) > limit:
        next_url = str(request.url.include_query_params(before=rows[limit - 1]["position"]))
    return WebhookDeliveryPage(
        items=[WebhookDelivery.model_validate(r) for r in rows[:limit]], next=next_url
    )


@router.post(
    "/v1/webhooks/{sub_id}/replay",
    response_model=WebhookActionResult,
    summary="Deliver again every event from an event id on",
    dependencies=[require(SCOPE)],
)
async def replay(request: Request, sub_id: str, body: ReplayIn) -> WebhookActionResult:
    try:
        count = await _webhooks(request).replay(sub_id, body.from_event_id)
    except UnknownSubscription:
        raise _unknown(sub_id) from None
    except UnknownOutboxEvent:
        raise Problem(
            404,
            "unknown-event",
            f"no outbound event with id {body.from_event_id} or later in the outbox",
        ) from None
    return WebhookActionResult(events=count)


@router.post(
    "/v1/webhooks/{sub_id}/redrive",
    response_model=WebhookActionResult,
    summary="Put dead letters back to delivery",
    dependencies=[require(SCOPE)],
)
async def redrive(request: Request, sub_id: str, body: RedriveIn) -> WebhookActionResult:
    try:
        return WebhookActionResult(events=await _webhooks(request).redrive(sub_id, body.event_ids))
    except UnknownSubscription:
        raise _unknown(sub_id) from None
