"""Webhook delivery: the worker (IO shell of the outbound core) and its queries."""

from gateway.webhooks.metrics import WebhookMetrics
from gateway.webhooks.worker import WebhookConfig, WebhookWorker

__all__ = ["WebhookConfig", "WebhookMetrics", "WebhookWorker"]
