"""What the gateway should count for the fuzz campaign's messages: its own decoder, run here on
each message before it is sent (the decoder judges every message on its own, docs/protocol.md),
and the CoAP ingress's rules for what it refuses before the pipeline sees a message.

A message the decoder raises on is a finding: the gateway quarantines it as processing_failed.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable

from benchmarks._fuzz_coap import POST, URI_PATH, CoapRequest
from telemetry.decoder import TimeLimits, decode_events, decode_status, decode_telemetry
from telemetry.schema import DEVICE_ID_PATTERN

PROCESSING_FAILED = "processing_failed"
SLOW_DECODE_S = 0.05  # a message whose decoding takes longer is listed
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
# CoAP codes the ingress counts a POST under, as MQTT counts a rejected message (4.01 has two).
_REFUSAL_REASONS = {"4.04": "bad_topic", "4.15": "unknown_encoding", "4.13": "payload_too_large"}


class Oracle:
    """The gateway's counters as its decoder predicts them, per transport and message kind."""

    def __init__(self, registry: dict[str, int], limits: TimeLimits = TimeLimits()) -> None:
        self.registry = registry
        self.limits = limits
        self.messages: Counter = Counter()  # (transport, kind)
        self.rejected: Counter = Counter()  # (transport, kind, reason)
        self.samples_received: Counter = Counter()  # transport -> samples decoded or rejected
        self.accepted: Counter = Counter()  # transport -> telemetry samples that pass
        self.events_accepted: Counter = Counter()  # transport
        self.by_family: dict[str, Counter] = defaultdict(Counter)
        self.crashes: list[dict] = []
        self.crash_count: Counter = Counter()
        self.slow: list[dict] = []
        self.slow_count: Counter = Counter()
        self.slowest_ms = 0.0
        self.seconds = 0.0

    def judge(self, transport: str, messages: Iterable) -> None:
        """Count messages (anything with family, kind, device_id, payload, content_type,
        protocol) as the gateway will, family by family."""
        started = time.perf_counter()
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for m in messages:
            groups[(m.family, m.kind)].append(m)
        for (family, kind), group in groups.items():
            self.messages[(transport, kind)] += len(group)
            if kind == "status":
                self._statuses(transport, family, group)
            else:
                self._judge(transport, family, kind, group)
        self.seconds += time.perf_counter() - started

    def refused(self, transport: str, family: str, kind: str, reason: str) -> None:
        """A message rejected whole before the pipeline (gateway.metrics: count_refused)."""
        self.messages[(transport, kind)] += 1
        self._reject(transport, family, kind, reason, 1)

    def coap_refusal(self, req: CoapRequest, code: str, root: str) -> None:
        """Count a CoAP request the ingress refused for good before reading its payload, as it
        does (gateway/coap: _count_refusal): only POSTs, no command results."""
        if req.code != POST or not (code == "4.01" or code in _REFUSAL_REASONS):
            return
        path = tuple(v.decode() for n, v in req.options if n == URI_PATH)
        prefix = tuple(root.split("/"))
        rest = path[len(prefix) :] if path[: len(prefix)] == prefix else ()
        resource = "/".join(rest[1:])
        if resource == "cmd/result":
            return
        reason = _REFUSAL_REASONS.get(code)
        if code == "4.01":
            reason = "unauthorized" if _DEVICE_ID.match(rest[0]) else "bad_topic"
        self.refused("coap", req.family, "event" if resource == "event" else "telemetry", reason)

    # --- the decoder's judgement ----------------------------------------------------------------

    def _statuses(self, transport: str, family: str, group: list) -> None:
        now = int(time.time() * 1000)
        for m in group:
            reason = None
            status = decode_status(m.payload, _content_type(m))
            if m.device_id not in self.registry:
                reason = "unknown_device"
            elif status is None:
                reason = "bad_structure"
            elif status.t is not None and status.t > now + self.limits.max_future_ms:
                reason = "time_in_future"
            elif status.t is not None and status.t < now - self.limits.max_age_ms:
                reason = "time_too_old"
            if reason is not None:
                self._reject(transport, family, "status", reason, 1)

    def _judge(self, transport: str, family: str, kind: str, group: list) -> None:
        now = int(time.time() * 1000)
        started = time.perf_counter()
        try:
            accepted, rejected = self._decode(kind, group, now)
        except Exception as exc:  # whatever the gateway's decoder would raise: a finding
            if len(group) == 1:
                self._crash(transport, family, kind, group[0], exc)
                return
            half = len(group) // 2
            self._judge(transport, family, kind, group[:half])
            self._judge(transport, family, kind, group[half:])
            return
        if time.perf_counter() - started > SLOW_DECODE_S * max(1, len(group) / 50):
            self._find_slow(family, kind, group, now)
        for reason, count in rejected.items():
            self._reject(transport, family, kind, reason, count)
        if kind == "telemetry":
            self.accepted[transport] += accepted
            self.samples_received[transport] += accepted
            self.by_family[family]["accepted_samples"] += accepted
        else:
            self.events_accepted[transport] += accepted
            self.by_family[family]["accepted_events"] += accepted

    def _decode(self, kind: str, group: list, now: int) -> tuple[int, dict[str, int]]:
        ids = [m.device_id for m in group]
        payloads = [m.payload for m in group]
        types = [_content_type(m) for m in group]
        if kind == "telemetry":
            r = decode_telemetry(
                ids,
                payloads,
                [now] * len(group),
                self.registry,
                now_ms=now,
                limits=self.limits,
                content_types=types,
            )
            return len(r.batch), r.rejected
        events, rejected, _ = decode_events(
            ids, payloads, self.registry, now_ms=now, limits=self.limits, content_types=types
        )
        return len(events), rejected

    def _reject(self, transport: str, family: str, kind: str, reason: str, count: int) -> None:
        self.rejected[(transport, kind, reason)] += count
        self.by_family[family][reason] += count
        if kind == "telemetry":
            self.samples_received[transport] += count

    def _crash(self, transport: str, family: str, kind: str, m, exc: Exception) -> None:
        """The gateway quarantines it and counts it as processing_failed."""
        self._reject(transport, family, kind, PROCESSING_FAILED, 1)
        key = (family, kind, type(exc).__name__, str(exc)[:60])
        self.crash_count[key] += 1
        if self.crash_count[key] <= 2:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.crashes.append(finding(transport, family, kind, m, error))

    def _find_slow(self, family: str, kind: str, group: list, now: int) -> None:
        for m in group:
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                self._decode(kind, [m], now)
            elapsed = time.perf_counter() - started
            self.slowest_ms = max(self.slowest_ms, elapsed * 1000)
            if elapsed > SLOW_DECODE_S:
                self.slow_count[(family, kind)] += 1
                if self.slow_count[(family, kind)] <= 3:
                    slow = finding("", family, kind, m, "")
                    self.slow.append({**slow, "decode_ms": round(elapsed * 1000, 1)})


class Decodable:
    """A CoAP request the pipeline got, in the shape the oracle judges."""

    __slots__ = ("content_type", "device_id", "family", "kind", "payload", "protocol")

    def __init__(
        self, family: str, kind: str, device_id: str, payload: bytes, content_type: str | None
    ) -> None:
        self.family, self.kind, self.device_id = family, kind, device_id
        self.payload, self.content_type, self.protocol = payload, content_type, 5


def _content_type(m) -> str | None:
    return m.content_type if m.protocol == 5 else None  # MQTT 3.1.1 has no content type


def finding(transport: str, family: str, kind: str, m, error: str) -> dict:
    return {
        "transport": transport,
        "family": family,
        "kind": kind,
        "device_id": m.device_id,
        "content_type": _content_type(m),
        "payload_bytes": len(m.payload),
        "payload_head_hex": m.payload[:96].hex(),
        "error": error,
    }
