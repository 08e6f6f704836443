"""The delivery worker's metrics (docs/webhooks.md, "Metrics")."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.deliveries = Counter(
            "fleetgate_webhook_deliveries_total",
            "Webhook delivery attempts by outcome: delivered, failed (to be retried), "
            "dead_lettered (gave up after the retry window), gone (410: subscription disabled)",
            ["outcome"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "fleetgate_webhook_lag_seconds",
            "Age of the oldest event not yet delivered to a subscription (since it entered "
            "the outbox); 0 when nothing waits",
            registry=registry,
        )
        self.dead_letters = Gauge(
            "fleetgate_webhook_dead_letters",
            "Deliveries dead-lettered and not re-driven, all subscriptions",
            registry=registry,
        )
        self.worker_active = Gauge(
            "fleetgate_webhook_worker_active",
            "1 in the process that holds the webhook worker's lease and runs it",
            registry=registry,
        )
