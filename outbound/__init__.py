"""Outbound events, sans IO: the catalogue of event types, the envelope, HMAC signatures, the
retry plan and the per-vehicle ordering of webhook deliveries (docs/webhooks.md). The delivery
worker (gateway/webhooks) and the API (api/routes/webhooks.py) are its shells."""

from outbound.catalogue import CATALOGUE, UnknownEventType, check_types, outbound_type
from outbound.envelope import render
from outbound.retry import Outcome, RetryPolicy, classify
from outbound.scheduler import Delivery, OutboundEvent, Scheduler, Settled
from outbound.signature import Signer, new_secret, sign, verify
from outbound.urls import InvalidWebhookUrl, is_gateway_itself

__all__ = [
    "CATALOGUE",
    "Delivery",
    "InvalidWebhookUrl",
    "OutboundEvent",
    "Outcome",
    "RetryPolicy",
    "Scheduler",
    "Settled",
    "Signer",
    "UnknownEventType",
    "check_types",
    "classify",
    "is_gateway_itself",
    "new_secret",
    "outbound_type",
    "render",
    "sign",
    "verify",
]
