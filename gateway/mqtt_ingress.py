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
from fleetgate.mqtt import ConnectionLost, Message, MqttClient, MqttError
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
        self._host, self._port = host, port
        self._client_id = client_id
        self._root = topic_root
        self._prefix = topic_root + "/"
        self._shared_group = shared_group
        self._protocol = protocol
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._username, self._password = username, password
        self._metrics = metrics
        self._client: MqttClient | None = None
        self._generation = 0
        self._paused = False
        self.subscribed = asyncio.Event()

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
        backoff = 0.2
        while not stop.is_set():
            self._generation += 1
            generation = self._generation
            client = MqttClient(
                self._host, self._port, client_id=self._client_id, protocol=self._protocol,
                clean_start=False, session_expiry_s=self._session_expiry_s,
                keepalive_s=self._keepalive_s, receive_maximum=self._receive_maximum,
                username=self._username, password=self._password, manual_ack=True,
                on_messages=lambda msgs, g=generation: self._on_messages(msgs, g))
            try:
                session_present = await client.connect(timeout=10.0)
                self._client = client
                await client.subscribe(self.subscriptions())
                if self._paused:
                    client.pause_reading()
                self._metrics.broker_connected.set(1)
                self.subscribed.set()
                log.info("broker_subscribed", extra=fields(
                    broker=f"{self._host}:{self._port}", client_id=self._client_id,
                    session_present=session_present))
                backoff = 0.2
                closed = asyncio.ensure_future(client.wait_closed())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not closed.done():
                    closed.cancel()
                    return  # stopping, still connected: see the docstring
                stopping.cancel()
                closed.result()  # raises ConnectionLost unless we closed it ourselves
            except (OSError, TimeoutError, ConnectionLost, MqttError) as exc:
                log.warning("broker_connection_lost", extra=fields(
                    broker=f"{self._host}:{self._port}", error=repr(exc)[:300], retry_in_s=backoff))
            self._connection_gone(client, generation)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)

    def _connection_gone(self, client: MqttClient, generation: int) -> None:
        client.abort()
        if self._client is client:
            self._client = None
        self._metrics.broker_connected.set(0)
        self.subscribed.clear()
        # What this connection delivered and nobody committed yet comes again on the next one:
        # drop it rather than write it twice.
        dropped = self._pipeline.discard_pending("mqtt", lambda tok, g=generation: tok[0] != g)
        if dropped:
            log.info("pending_dropped_for_redelivery", extra=fields(messages=dropped))

    async def disconnect(self) -> None:
        """Leave the broker cleanly (the session stays, so nothing unacknowledged is lost)."""
        client, self._client = self._client, None
        self.subscribed.clear()
        self._metrics.broker_connected.set(0)
        if client is not None and client.connected:
            await client.disconnect()

    def pause(self) -> None:
        """Stop reading from the broker (graceful shutdown, backpressure)."""
        self.set_backpressure(True)

    def set_backpressure(self, paused: bool) -> None:
        self._paused = paused
        client = self._client
        if client is not None and client.connected:
            client.pause_reading() if paused else client.resume_reading()

    def acknowledge(self, tokens: Iterable[Any]) -> None:
        """PUBACK the committed messages that arrived on the current connection."""
        client = self._client
        if client is None or not client.connected:
            return  # they will be redelivered on the next connection; the store ignores dupes
        generation = self._generation
        mids = [mid for gen, mid, qos in tokens if gen == generation and qos]
        if mids:
            client.ack(mids)

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
