"""Prometheus metrics of the gateway, created in a registry the caller chooses.

Tests and benchmarks run several gateways in one process, so nothing registers globally unless
asked. Label values are bounded: transports are mqtt and coap, reasons come from
telemetry.decoder.REASONS (and the CoAP ingress's few of its own), cores are geofence and battery.
docs/deployment.md lists them all with what to alert on.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        self.registry = registry
        self.messages_received = Counter(
            "fleetgate_messages_received_total",
            "MQTT/CoAP messages received, by transport and kind",
            ["transport", "kind"],
            registry=r,
        )
        # Telemetry only: received = stored + duplicate + rejected, per transport. A message
        # rejected whole counts as one sample received and one rejected.
        self.samples_received = Counter(
            "fleetgate_samples_received_total",
            "Samples decoded from device messages",
            ["transport"],
            registry=r,
        )
        # By transport: exact whenever a batch holds one transport or no duplicates; a mixed
        # batch with duplicates splits its counts in proportion (the totals stay exact).
        self.samples_stored = Counter(
            "fleetgate_samples_stored_total",
            "Samples newly stored in positions, by transport",
            ["transport"],
            registry=r,
        )
        self.samples_duplicate = Counter(
            "fleetgate_samples_duplicate_total",
            "Samples already stored (redelivered or re-uploaded), ignored, by transport",
            ["transport"],
            registry=r,
        )
        self.samples_rejected = Counter(
            "fleetgate_samples_rejected_total",
            "Telemetry samples or messages rejected, by reason and transport",
            ["reason", "transport"],
            registry=r,
        )
        self.device_events_rejected = Counter(
            "fleetgate_device_events_rejected_total",
            "Device events or event messages rejected, by reason and transport",
            ["reason", "transport"],
            registry=r,
        )
        self.status_rejected = Counter(
            "fleetgate_status_rejected_total",
            "Presence status messages rejected, by reason",
            ["reason", "transport"],
            registry=r,
        )
        self.samples_flagged = Counter(
            "fleetgate_samples_flagged_total",
            "Samples stored with a quality flag",
            ["flag"],
            registry=r,
        )
        self.events_stored = Counter(
            "fleetgate_device_events_stored_total", "Device events newly stored", registry=r
        )
        self.derived_events_stored = Counter(
            "fleetgate_derived_events_stored_total",
            "Events the cores derived (geofence, battery) newly stored, by source",
            ["source"],
            registry=r,
        )
        self.pipeline_errors = Counter(
            "fleetgate_pipeline_errors_total",
            "Faults of the gateway's own met while processing: a batch that raised (then committed "
            "in parts, the failing message quarantined), a commit listener or an acknowledgement "
            "that failed. Any is a bug to report; the data is safe.",
            ["where"],
            registry=r,
        )
        self.messages_acked = Counter(
            "fleetgate_messages_acked_total", "QoS 1 messages acknowledged after commit", registry=r
        )
        self.batch_messages = Histogram(
            "fleetgate_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000),
            registry=r,
        )
        self.batch_samples = Histogram(
            "fleetgate_batch_samples",
            "Samples per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "fleetgate_batch_commit_seconds",
            "Time to write and commit one batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sample_delay_seconds = Histogram(
            "fleetgate_sample_commit_delay_seconds",
            "Delay from a sample's receipt by the gateway to its commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pending_messages = Gauge(
            "fleetgate_pipeline_pending_messages",
            "Unacknowledged messages: received and not yet committed and acknowledged",
            registry=r,
        )
        self.queued_messages = Gauge(
            "fleetgate_pipeline_queued_messages",
            "Messages waiting for the next batch (queue depth; pending minus the batch being "
            "written)",
            registry=r,
        )
        self.reading_paused = Gauge(
            "fleetgate_pipeline_reading_paused",
            "1 while the gateway applies backpressure",
            registry=r,
        )
        self.db_up = Gauge(
            "fleetgate_database_up", "1 when the last database write succeeded", registry=r
        )
        self.db_errors = Counter(
            "fleetgate_database_errors_total",
            "Failed database operations, by kind",
            ["kind"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "fleetgate_broker_connected", "1 while subscribed to the broker", registry=r
        )
        self.presence_changes = Counter(
            "fleetgate_presence_changes_total",
            "Presence changes applied, by new state and cause",
            ["state", "cause"],
            registry=r,
        )
        self.core_seconds = Histogram(
            "fleetgate_core_seconds",
            "Time a core (geofence, battery) spends on one batch",
            ["core"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.devices_online = Gauge(
            "fleetgate_devices_online",
            "Vehicles online (vehicle_state.online: status message, or telemetry within the "
            "presence timeout), fleet-wide",
            registry=r,
        )
        self.devices_known = Gauge(
            "fleetgate_devices_known",
            "Vehicles with a stored state (that ever sent anything)",
            registry=r,
        )
        self.devices_registered = Gauge(
            "fleetgate_devices_registered", "Devices in the registry", registry=r
        )
        self.handover_check_seconds = Histogram(
            "fleetgate_handover_check_seconds",
            "Per batch: time to check whether another gateway process advanced a vehicle of the "
            "batch, and to take over those it did",
            buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.handover_vehicles = Counter(
            "fleetgate_handover_vehicles_total",
            "Vehicles whose core state was taken over from the database because another gateway "
            "process had stored newer samples of them",
            registry=r,
        )
        self.commands_dispatcher_active = Gauge(
            "fleetgate_commands_dispatcher_active",
            "1 while this process runs the command dispatcher (at most one process does)",
            registry=r,
        )
        self.timescaledb_jobs_failing = Gauge(
            "fleetgate_timescaledb_jobs_failing",
            "TimescaleDB background jobs whose last run failed (compression, retention, "
            "continuous aggregate refresh)",
            registry=r,
        )
        for transport in ("mqtt", "coap"):  # exported at 0 before the first sample
            for counter in (self.samples_received, self.samples_stored, self.samples_duplicate):
                counter.labels(transport)
        for source in ("geofence", "battery"):
            self.derived_events_stored.labels(source)
        self.build = Info("fleetgate_build", "The running fleetgate", registry=r)
        self.build.info({"version": _version()})
        self.db_up.set(1)

    def count_rejected(self, kind: str, transport: str, reasons: Mapping[str, int]) -> None:
        """Rejections of one message kind (telemetry, event, status), each in its own counter."""
        counter = {
            "telemetry": self.samples_rejected,
            "event": self.device_events_rejected,
            "status": self.status_rejected,
        }[kind]
        for reason, count in reasons.items():
            counter.labels(reason, transport).inc(count)

    def count_refused(self, kind: str, transport: str, reason: str) -> None:
        """A message rejected whole outside the batch's decoding (the CoAP ingress's early
        answers, a quarantined message), counted as the decoder's whole-message rejections are."""
        self.messages_received.labels(transport, kind).inc()
        if kind == "telemetry":
            self.samples_received.labels(transport).inc()
        self.count_rejected(kind, transport, {reason: 1})

    def count_events_stored(self, by_source: Mapping[str, int]) -> None:
        """Newly stored events: the devices' own, and what the cores derived, apart."""
        for source, count in by_source.items():
            if source == "device":
                self.events_stored.inc(count)
            else:
                self.derived_events_stored.labels(source).inc(count)


def _version() -> str:
    try:
        return version("fleetgate")
    except PackageNotFoundError:  # a source checkout without an install
        return "unknown"
