"""MQTT ingress: a persistent QoS 1 session on the broker feeding the batch pipeline.

It reconnects forever with the same client id and clean_start off, so that whatever the broker
delivered but the gateway had not acknowledged (committed) comes again after any failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from fleetgate.logs import fields
from fleetgate.mqtt import Message, MqttClient, PersistentSession
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Inbound, IngestPipeline

log = logging.getLogger("fleetgate.mqtt_ingress")

_KINDS = frozenset(("telemetry", "event", "status"))


class MqttIngress:
    def __init__(
        self,
        pipeline: IngestPipeline,
        *,
        host: str,
        port: int,
        client_id: str,
        topic_root: str = "fg/v1",
        shared_group: str = "fleetgate",
        protocol: int = 5,
        keepalive_s: int = 30,
        session_expiry_s: int = 7 * 86400,
        receive_maximum: int = 65535,
        username: str | None = None,
        password: str | None = None,
        metrics: GatewayMetrics,
    ) -> None:
        self._pipeline = pipeline
        self._root = topic_root
        self._prefix = topic_root + "/"
        self._shared_group = shared_group
        self._metrics = metrics
        self._paused = False
        self._session = PersistentSession(
            host=host, port=port, client_id=client_id, subscriptions=self.subscriptions,
            on_messages=self._on_messages, protocol=protocol, keepalive_s=keepalive_s,
            session_expiry_s=session_expiry_s, receive_maximum=receive_maximum,
            username=username, password=password, on_up=self._connection_up,
            on_down=self._connection_gone, log=log)
        self.subscribed = self._session.subscribed

    def subscriptions(self) -> list[tuple[str, int]]:
        shared = f"$share/{self._shared_group}/" if self._shared_group else ""
        return [(f"{shared}{self._root}/+/telemetry", 1),
                (f"{shared}{self._root}/+/event", 1),
                # Retained presence is not delivered on shared subscriptions (MQTT 5, 4.8.2).
                (f"{self._root}/+/status", 1)]

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and subscribed until stop is set.

        On stop the connection is left open: the gateway commits and acknowledges what it holds
        and then calls disconnect(). Only a lost connection drops what it delivered.
        """
        await self._session.run(stop)

    def _connection_up(self, client: MqttClient) -> None:
        if self._paused:
            client.pause_reading()
        self._metrics.broker_connected.set(1)

    def _connection_gone(self, generation: int) -> None:
        self._metrics.broker_connected.set(0)
        # What this connection delivered and nobody committed yet comes again on the next one:
        # drop it rather than write it twice.
        dropped = self._pipeline.discard_pending("mqtt", lambda tok, g=generation: tok[0] != g)
        if dropped:
            log.info("pending_dropped_for_redelivery", extra=fields(messages=dropped))

    async def disconnect(self) -> None:
        """Leave the broker cleanly (the session stays, so nothing unacknowledged is lost)."""
        self._metrics.broker_connected.set(0)
        await self._session.disconnect()

    def pause(self) -> None:
        """Stop reading from the broker (graceful shutdown, backpressure)."""
        self.set_backpressure(True)

    def set_backpressure(self, paused: bool) -> None:
        self._paused = paused
        client = self._session.client
        if client is not None:
            client.pause_reading() if paused else client.resume_reading()

    def acknowledge(self, tokens: Iterable[Any]) -> None:
        """PUBACK the committed messages that arrived on the current connection (the others are
        redelivered on the next connection; the store ignores duplicates)."""
        self._session.acknowledge(tokens)

    def _on_messages(self, messages: list[Message], generation: int) -> None:
        received_ms = int(time.time() * 1000)
        prefix, plen, submit = self._prefix, len(self._prefix), self._pipeline.submit
        for m in messages:
            topic = m.topic
            if topic.startswith(prefix):
                device_id, _, kind = topic[plen:].partition("/")
            else:
                device_id, kind = "", "telemetry"  # rejected as bad_topic, still acknowledged
            if kind not in _KINDS:
                device_id, kind = "", "telemetry"
            submit(Inbound(kind, device_id, m.payload, received_ms, (generation, m.mid, m.qos),
                           m.content_type))
