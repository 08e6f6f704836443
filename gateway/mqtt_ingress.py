"""MQTT ingress: a persistent QoS 1 session on the broker feeding the batch pipeline.

It reconnects forever with the same client id and clean_start off, so that whatever the broker
delivered but the gateway had not acknowledged (committed) comes again after any failure.

Each process keeps a retained presence message at `<root>/$gateway/<client id>/presence`:
"online" while connected, "offline" when it leaves or (its last will) vanishes. It tells operators
which client ids are in use, and `fleetgate drain` refuses an id that is online.

Drain mode empties the session of a gateway process retired for good and then ends it. Mosquitto
keeps a persistent session in a shared subscription's round-robin while its process is away, so
the retired client id keeps collecting telemetry that no one reads until the session expires and
the broker discards it. Draining resumes that session, leaves the shared subscription (nothing new
is routed to it), and publishes a marker to a topic only this session subscribes to: the broker
queues the marker behind everything it holds for the session, so once the marker has arrived and
everything before it is committed and acknowledged, the session is empty and is ended.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import orjson

from gateway.metrics import GatewayMetrics
from gateway.mqtt import ConnectOptions, Message, MqttClient, MqttError, PersistentSession, Will
from gateway.pipeline import Inbound, IngestPipeline
from telemetry.dialect import Dialect
from telemetry.topics import (
    EVENT,
    STATUS,
    TELEMETRY,
    drain_marker_topic,
    every_device,
    gateway_presence_topic,
    parse_device_topic,
)

log = logging.getLogger(__name__)

_KINDS = frozenset((TELEMETRY, EVENT, STATUS))
_BAD_TOPIC = ("", TELEMETRY)  # rejected as bad_topic, still acknowledged
_MARKER = object()  # the route of drain mode's marker topic
# Topics whose route (kind, device id, dialect) the ingress remembers: a topic per device and
# kind, so a fleet of 50,000 devices' telemetry and status fits.
_ROUTES_CACHED = 100_000
SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code


class DrainError(RuntimeError):
    """A session cannot be drained (its client id is in use)."""


def _presence(state: str, client_id: str) -> bytes:
    return orjson.dumps(
        {
            "state": state,
            "client_id": client_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "t": int(time.time() * 1000),
        }
    )


async def read_presence(
    options: ConnectOptions, topic_root: str, *, wait_s: float = 1.0
) -> dict | None:
    """The retained presence of the gateway process that connects with these options (its
    client id), None if there is none."""
    topic = gateway_presence_topic(topic_root, options.client_id)
    payload = await _read_retained(options, topic, wait_s=wait_s)
    try:
        return orjson.loads(payload) if payload else None
    except orjson.JSONDecodeError:
        return {"state": "unknown", "payload": payload[:200].decode("utf-8", "replace")}


async def read_broker_version(options: ConnectOptions, *, wait_s: float = 1.0) -> str | None:
    """What the broker says it is ($SYS/broker/version, e.g. "mosquitto version 2.0.11"), None
    where it publishes no such topic or the account may not read it."""
    try:
        payload = await asyncio.wait_for(
            _read_retained(options, "$SYS/broker/version", wait_s=wait_s), wait_s + 2.0
        )
    except (OSError, TimeoutError, MqttError):
        return None
    return payload.decode("utf-8", "replace").strip() if payload else None


async def _read_retained(options: ConnectOptions, topic: str, *, wait_s: float) -> bytes | None:
    """A topic's retained message, on a throw-away connection of its own (a client id of its
    own, clean, no session left behind); None if none arrives within wait_s."""
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    def on_messages(messages: list[Message]) -> None:
        for m in messages:
            if not got.done():
                got.set_result(m.payload)

    probe_id = f"fleetgate-probe-{secrets.token_hex(6)}"
    probe = MqttClient(
        replace(options, client_id=probe_id, session_expiry_s=0), on_messages=on_messages
    )
    await probe.connect()
    try:
        await probe.subscribe([(topic, 1)])
        return await asyncio.wait_for(got, wait_s)  # retained: sent right after the SUBACK
    except TimeoutError:
        return None
    finally:
        await probe.disconnect()


class MqttIngress:
    def __init__(
        self,
        pipeline: IngestPipeline,
        options: ConnectOptions,
        *,
        topic_root: str = "fg/v1",
        shared_group: str = "",
        metrics: GatewayMetrics,
        drain: bool = False,
        dialects: tuple[Dialect, ...] = (),
        read_gather_s: float = 0.0,
    ) -> None:
        """read_gather_s: the session's client's (MqttClient), GatewayConfig.mqtt_read_gather_s."""
        client_id = options.client_id
        # A dialect on the native telemetry topics is read natively (the same samples).
        native = every_device(topic_root, TELEMETRY)
        self._dialects = tuple(d for d in dialects if d.topic_filter != native)
        self._pipeline = pipeline
        self._root = topic_root
        self._shared_group = shared_group
        self._metrics = metrics
        self._paused = False
        self.draining = drain
        # Drain mode: the marker's topic and this run's payload prefix; the marker seen on the
        # current connection, as its acknowledgement token.
        self._marker_topic = drain_marker_topic(topic_root, client_id)
        self._marker_nonce = secrets.token_hex(8)
        self._marker: tuple[int, int, int] | None = None
        self.marker_arrived = asyncio.Event()
        self.drained = False
        self.drain_error: str | None = None
        self.session_present: bool | None = None
        self._client_id = client_id
        self._routes: dict[str, tuple[str, str, Dialect | None]] = {}
        self._presence_topic = gateway_presence_topic(topic_root, client_id)
        self._session = PersistentSession(
            options,
            subscriptions=(lambda: [(self._marker_topic, 1)]) if drain else self.subscriptions,
            unsubscribe=(lambda: [f for f, _ in self.subscriptions()]) if drain else None,
            on_messages=self._on_messages,
            on_up=self._connection_up,
            on_down=self._connection_gone,
            log=log,
            read_gather_s=read_gather_s,
            will=None
            if drain
            else Will(self._presence_topic, _presence("offline", client_id), qos=1, retain=True),
        )
        self.subscribed = self._session.subscribed

    def subscriptions(self) -> list[tuple[str, int]]:
        shared = f"$share/{self._shared_group}/" if self._shared_group else ""
        return [
            (shared + every_device(self._root, TELEMETRY), 1),
            (shared + every_device(self._root, EVENT), 1),
            # Retained presence is not delivered on shared subscriptions (MQTT 5, 4.8.2).
            (every_device(self._root, STATUS), 1),
            *((shared + d.topic_filter, 1) for d in self._dialects),
        ]

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
        if not self.draining:
            self._publish_quietly(
                client, self._presence_topic, _presence("online", self._client_id), retain=True
            )
        else:
            if self.session_present is None:  # what the first connection found
                self.session_present = client.session_present
            self._marker = None
            self.marker_arrived.clear()
            self._publish_quietly(client, self._marker_topic, self._marker_payload())

    @staticmethod
    def _publish_quietly(
        client: MqttClient, topic: str, payload: bytes, retain: bool = False
    ) -> asyncio.Future:
        """Publish QoS 1; a connection lost first publishes it again on the next one."""
        sent = client.publish(topic, payload, qos=1, retain=retain)
        sent.add_done_callback(lambda f: f.cancelled() or f.exception())
        return sent

    def _marker_payload(self) -> bytes:
        return f"{self._marker_nonce}:{self._session.generation}".encode()

    @property
    def last_error(self) -> Exception | None:
        return self._session.last_error

    async def finish_drain(self) -> bool:
        """Drain mode: once the marker has arrived, wait until everything before it is committed
        and acknowledged. Returns True when the session is empty (end it with disconnect()),
        False when the connection was lost meanwhile (wait for the next marker)."""
        await self.marker_arrived.wait()
        if self.drain_error is not None:
            raise DrainError(self.drain_error)
        await self._pipeline.flush()
        marker = self._marker
        if marker is None or marker[0] != self._session.generation:
            return False
        self._session.acknowledge([marker])
        self.drained = True
        return True

    def _connection_gone(self, generation: int) -> None:
        self._metrics.broker_connected.set(0)
        if self.draining and getattr(self.last_error, "reason_code", None) == SESSION_TAKEN_OVER:
            self.drain_error = (
                f"another connection took client id {self._session.client_id} "
                "over: a gateway process still runs with it; stop that process "
                "first (its session keeps what it has not acknowledged)"
            )
            self.marker_arrived.set()  # wakes finish_drain
        # What this connection delivered and is not committed yet stays in the pipeline and is
        # committed (its acknowledgements are skipped: packet ids mean nothing on the next
        # connection). A broker that kept it delivers it again, stored as a duplicate; a broker
        # that lost it (killed before it saved its state) no longer has it, so dropping it here
        # would lose it.

    async def disconnect(self) -> None:
        """Leave the broker cleanly (the session stays, so nothing unacknowledged is lost); a
        drained session is ended."""
        self._metrics.broker_connected.set(0)
        client = self._session.client
        if client is not None:  # offline now (a drained id: retired, its presence cleared)
            # Not awaited: reading may be paused (graceful stop), and the broker handles it before
            # it answers the PINGREQ that disconnect sends first.
            self._publish_quietly(
                client,
                self._presence_topic,
                b"" if self.drained else _presence("offline", self._client_id),
                retain=True,
            )
        if self.drained:
            await self._session.end()
        else:
            await self._session.disconnect()

    @property
    def held_back(self) -> int:
        """Messages received while reading is paused, not yet handed to the pipeline."""
        return self._session.held

    def abort(self) -> None:
        """Drop the connection without DISCONNECT and without acknowledging anything more (the
        process is failing): the broker keeps the session and what it was not acknowledged."""
        self._metrics.broker_connected.set(0)
        self._session.abort()

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
        """One read's messages, handed to the pipeline in one call. Per message only what
        differs is done: a topic seen before is looked up, not parsed, and the Inbound is built
        as the tuple it is (NamedTuple's own constructor is a Python call per message)."""
        received_ms = int(time.time() * 1000)
        routes, route_of = self._routes, self._route
        inbound = []
        add = inbound.append
        new = tuple.__new__
        for m in messages:
            route = routes.get(m.topic) or route_of(m.topic)
            if route is _MARKER:  # drain mode's marker: stored nowhere
                if self.draining and m.payload == self._marker_payload():
                    self._marker = (generation, m.mid, m.qos)
                    self.marker_arrived.set()
                continue
            kind, device_id, dialect = route
            add(
                new(
                    Inbound,
                    (
                        kind,
                        device_id,
                        m.payload,
                        received_ms,
                        (generation, m.mid, m.qos),
                        m.content_type,
                        "mqtt",
                        m.retain,
                        dialect,
                    ),
                )
            )
        if inbound:
            self._pipeline.submit_many(inbound)

    def _route(self, topic: str) -> tuple[str, str, Dialect | None] | object:
        """(kind, device id, dialect) of a topic, or _MARKER; remembered for the next message
        on it (up to _ROUTES_CACHED topics: then the memory starts afresh)."""
        if topic == self._marker_topic:
            return _MARKER
        parsed = parse_device_topic(self._root, topic)
        if parsed is not None and parsed[1] in _KINDS:
            route = (parsed[1], parsed[0], None)
        else:
            device_id, kind, dialect = self._dialect_topic(topic)
            route = (kind, device_id, dialect)
        if len(self._routes) >= _ROUTES_CACHED:
            self._routes.clear()
        self._routes[topic] = route
        return route

    def _dialect_topic(self, topic: str) -> tuple[str, str, Dialect | None]:
        """(device id, kind, dialect) of a topic of the configured dialects; a topic of none of
        them is refused as bad_topic (and acknowledged)."""
        for dialect in self._dialects:
            device_id = dialect.device_of(topic)
            if device_id is not None:
                return device_id, TELEMETRY, dialect
        return (*_BAD_TOPIC, None)
