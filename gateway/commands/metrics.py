"""Prometheus metrics of remote commands, created in a registry the caller chooses (as
gateway.metrics). Labels are bounded: command types, states, a fixed set of reasons and kinds.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from commands.model import Command, CommandState, HistoryEntry

_ROUND_TRIP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class CommandMetrics:
    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        r = registry
        self.registry = registry
        self.submitted = Counter(
            "fleetgate_commands_submitted_total",
            "Commands accepted (a repeated idempotency key is not counted)",
            ["type"],
            registry=r,
        )
        self.finished = Counter(
            "fleetgate_commands_finished_total",
            "Commands that reached a final state",
            ["type", "state"],
            registry=r,
        )
        self.round_trip = Histogram(
            "fleetgate_command_round_trip_seconds",
            "From submission to the device's answer (commands the device answered)",
            ["type"],
            buckets=_ROUND_TRIP_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "fleetgate_command_deliveries_total",
            "Command messages published, by first delivery or retry",
            ["kind"],
            registry=r,
        )
        self.interlock_waits = Counter(
            "fleetgate_command_interlock_waits_total",
            "Commands held back by an interlock, by reason",
            ["type", "reason"],
            registry=r,
        )
        self.results = Counter(
            "fleetgate_command_results_total",
            "Device result messages by what they did: applied, ack, duplicate, late, unknown, "
            "foreign (from another device), invalid",
            ["kind"],
            registry=r,
        )
        self.open = Gauge(
            "fleetgate_commands_open",
            "Commands not in a final state, by state",
            ["state"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "fleetgate_commands_broker_connected",
            "1 while the commands' MQTT connection is up",
            registry=r,
        )
        self.db_errors = Counter(
            "fleetgate_commands_database_errors_total",
            "Failed database operations of the commands, by kind",
            ["kind"],
            registry=r,
        )

    def account(self, cmd: Command, entry: HistoryEntry) -> None:
        """Count a committed state change (cmd as it is after entry)."""
        t = cmd.type.value
        if entry.from_state is not None and entry.from_state.terminal:
            return  # a note on a finished command (late answer)
        if (
            entry.to_state is CommandState.WAITING_FOR_SAFE_STATE
            and entry.from_state is not CommandState.WAITING_FOR_SAFE_STATE
        ):
            self.interlock_waits.labels(t, entry.reason or "").inc()
        if entry.to_state is CommandState.SENT or entry.reason == "retry":
            self.deliveries.labels("first" if cmd.attempts == 1 else "retry").inc()
        if cmd.state.terminal:
            self.finished.labels(t, cmd.state.value).inc()
            if (
                entry.from_state is not None
                and entry.from_state.in_flight
                and cmd.device_status is not None
            ):
                self.round_trip.labels(t).observe(
                    max((cmd.finished_at - cmd.created_at).total_seconds(), 0.0)
                )

    def set_open(self, counts: Mapping[CommandState, int]) -> None:
        for state, n in counts.items():
            self.open.labels(state.value).set(n)
