"""What a simulated fleet sent and what the broker acknowledged, so a test can assert exactly
which rows must have landed, none twice, and which rejections the gateway must have counted.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from firmware_sim.payloads import MALFORMED_KINDS


@dataclass
class FleetStats:
    """Counters of a fleet run. "Valid" samples are the ones the gateway must store; every
    malformed message is counted apart, by kind, and never as a sample.

    A valid sample stays with its device until a PUBACK covers it, so at the end of a flushed
    run samples_acked == samples_generated and acked_keys() is exactly what must be stored.
    """

    vehicles: int = 0
    steps: int = 0
    samples_generated: int = 0  # valid samples produced (one per vehicle per step, plus locates)
    samples_published: int = 0  # valid samples put on the wire, counting re-sends
    samples_acked: int = 0  # valid samples covered by a PUBACK (each counted once)
    samples_resent: int = 0  # uploaded again because the first message's PUBACK never came
    samples_buffered: int = 0  # produced while offline (went through the offline buffer)
    samples_dropped: int = 0  # pushed out of a full offline buffer: lost for good
    messages_published: int = 0
    messages_acked: int = 0
    batches_published: int = 0
    batches_out_of_order: int = 0  # buffered uploads sent reversed or shuffled
    duplicates_sent: int = 0  # messages sent a second time on purpose
    duplicates_acked: int = 0
    malformed_sent: Counter = field(default_factory=Counter)  # by kind (MALFORMED_KINDS)
    malformed_acked: Counter = field(default_factory=Counter)
    connects: int = 0
    disconnects: int = 0  # connections dropped on purpose, without DISCONNECT (will fires)
    connection_losses: int = 0  # connections that ended otherwise (broker gone, network)
    commands_received: int = 0  # command messages, retries included
    commands_dropped: int = 0  # ignored on purpose (Misbehaviour / CommandBehaviour)
    command_results_sent: int = 0
    command_acks_sent: int = 0  # "received" acknowledgements (CommandBehaviour.acknowledge)
    command_executions: Counter = field(default_factory=Counter)  # (device_id, command id) -> n
    started_monotonic: float = field(default_factory=time.monotonic)
    finished_monotonic: float | None = None
    track_keys: bool = True
    _acked: dict[str, set[int]] = field(default_factory=dict, repr=False)
    _acked_on: dict[str, set[tuple[str, int]]] = field(default_factory=dict, repr=False)

    def record_acked(self, device_id: str, ts, broker: str = "") -> None:
        if self.track_keys:
            keys = self._acked.get(device_id)
            if keys is None:
                keys = self._acked[device_id] = set()
            ts = (ts,) if isinstance(ts, int) else ts
            keys.update(ts)
            if broker:
                self._acked_on.setdefault(broker, set()).update((device_id, t) for t in ts)

    def acked_keys_by_broker(self) -> dict[str, set[tuple[str, int]]]:
        """(device_id, t) of every valid sample by the broker that acknowledged it (a device
        moved by set_config's mqtt_url has samples on both)."""
        return {b: set(keys) for b, keys in self._acked_on.items()}

    def acked_keys(self) -> set[tuple[str, int]]:
        """(device_id, t) of every valid sample the broker acknowledged."""
        return {(d, t) for d, ts in self._acked.items() for t in ts}

    def acked_times(self, device_id: str) -> set[int]:
        return set(self._acked.get(device_id, ()))

    def expected_rejections(self) -> Counter:
        """Rejections by the gateway's reason that the acknowledged malformed messages cause."""
        out: Counter = Counter()
        for kind, n in self.malformed_acked.items():
            out[MALFORMED_KINDS[kind]] += n
        return out

    @property
    def outstanding(self) -> int:
        """Valid samples not yet acknowledged (buffered or in flight)."""
        return self.samples_generated - self.samples_acked - self.samples_dropped

    @property
    def elapsed_s(self) -> float:
        end = self.finished_monotonic if self.finished_monotonic is not None else time.monotonic()
        return max(end - self.started_monotonic, 1e-9)

    def summary(self) -> dict:
        """The counters as plain values (for logs and the CLI)."""
        return {
            "vehicles": self.vehicles,
            "steps": self.steps,
            "samples_generated": self.samples_generated,
            "samples_acked": self.samples_acked,
            "samples_resent": self.samples_resent,
            "samples_buffered": self.samples_buffered,
            "samples_dropped": self.samples_dropped,
            "messages_published": self.messages_published,
            "messages_acked": self.messages_acked,
            "batches_published": self.batches_published,
            "batches_out_of_order": self.batches_out_of_order,
            "duplicates_sent": self.duplicates_sent,
            "malformed_sent": dict(self.malformed_sent),
            "connects": self.connects,
            "disconnects": self.disconnects,
            "connection_losses": self.connection_losses,
            "commands_received": self.commands_received,
            "command_results_sent": self.command_results_sent,
            "elapsed_s": round(self.elapsed_s, 3),
            "acked_messages_per_s": round(self.messages_acked / self.elapsed_s, 1),
        }
