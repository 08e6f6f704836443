"""The commands' own MQTT connection: publishes downlinks on {root}/{device_id}/cmd (QoS 1) and
receives {root}/+/cmd/result with manual acknowledgement, so a result is acked only after its
state change is committed. A persistent session keeps results that arrive while it is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from gateway.mqtt import ConnectionLost, ConnectOptions, Message, MqttClient, PersistentSession
from telemetry.topics import COMMAND, COMMAND_RESULT, device_topic, every_device, parse_device_topic

log = logging.getLogger(__name__)


class InboundResult(NamedTuple):
    device_id: str
    payload: bytes
    token: Any  # for acknowledge(): (connection generation, mid, qos)


def command_client_id(gateway_client_id: str) -> str:
    """The commands' client id next to the gateway's (ids are at most 64 characters here)."""
    return gateway_client_id[:60] + "-cmd"


class CommandLink:
    def __init__(
        self,
        options: ConnectOptions,
        *,
        topic_root: str = "fg/v1",
        on_results: Callable[[list[InboundResult]], None],
        on_up: Callable[[], None] | None = None,
        on_connected: Callable[[bool], None] | None = None,
    ) -> None:
        self.client_id = options.client_id
        self._root = topic_root
        self._on_results = on_results
        self._on_up = on_up
        self._on_connected = on_connected
        self._session = PersistentSession(
            options,
            subscriptions=lambda: [(every_device(self._root, COMMAND_RESULT), 1)],
            on_messages=self._messages,
            on_up=self._connection_up,
            on_down=self._connection_gone,
            log=log,
            event_prefix="commands_",
        )
        self.subscribed = self._session.subscribed

    def topic_cmd(self, device_id: str) -> str:
        return device_topic(self._root, device_id, COMMAND)

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and subscribed until stop is set (then leave the connection open for
        disconnect(), so results being committed can still be acknowledged)."""
        await self._session.run(stop)

    def _connection_up(self, client: MqttClient) -> None:
        if self._on_connected is not None:
            self._on_connected(True)
        if self._on_up is not None:
            self._on_up()

    def _connection_gone(self, generation: int) -> None:
        if self._on_connected is not None:
            self._on_connected(False)

    @property
    def connected(self) -> bool:
        return self._session.connected

    def publish(self, device_id: str, payload: bytes) -> asyncio.Future | None:
        """Publish a downlink (QoS 1); the future resolves on the broker's PUBACK. None when
        not connected (the caller's retry logic covers it)."""
        client = self._session.client
        if client is None:
            return None
        try:
            return client.publish(
                self.topic_cmd(device_id), payload, qos=1, content_type="application/json"
            )
        except ConnectionLost:
            return None

    def acknowledge(self, tokens: Iterable[Any]) -> None:
        """PUBACK committed results that arrived on the current connection (older ones come
        again on the next connection)."""
        self._session.acknowledge(tokens)

    async def disconnect(self) -> None:
        await self._session.disconnect()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (a crash, for tests)."""
        self._session.abort()

    def _messages(self, messages: list[Message], generation: int) -> None:
        out = []
        for m in messages:
            parsed = parse_device_topic(self._root, m.topic)
            device_id = parsed[0] if parsed is not None and parsed[1] == COMMAND_RESULT else ""
            out.append(InboundResult(device_id, m.payload, (generation, m.mid, m.qos)))
        if out:
            self._on_results(out)
