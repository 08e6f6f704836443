"""The commands' own MQTT connection: publishes downlinks on {root}/{device_id}/cmd (QoS 1) and
receives {root}/+/cmd/result with manual acknowledgement, so a result is acked only after its
state change is committed. A persistent session keeps results that arrive while it is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from gateway.mqtt import ConnectionLost, Message, MqttClient, PersistentSession

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
        *,
        host: str,
        port: int,
        client_id: str,
        topic_root: str = "fg/v1",
        protocol: int = 5,
        keepalive_s: int = 30,
        session_expiry_s: int = 7 * 86400,
        username: str | None = None,
        password: str | None = None,
        on_results: Callable[[list[InboundResult]], None],
        on_up: Callable[[], None] | None = None,
        on_connected: Callable[[bool], None] | None = None,
    ) -> None:
        self.client_id = client_id
        self._root = topic_root
        self._prefix = topic_root + "/"
        self._on_results = on_results
        self._on_up = on_up
        self._on_connected = on_connected
        self._session = PersistentSession(
            host=host,
            port=port,
            client_id=client_id,
            subscriptions=lambda: [(f"{self._root}/+/cmd/result", 1)],
            on_messages=self._messages,
            protocol=protocol,
            keepalive_s=keepalive_s,
            session_expiry_s=session_expiry_s,
            username=username,
            password=password,
            on_up=self._connection_up,
            on_down=self._connection_gone,
            log=log,
            event_prefix="commands_",
        )
        self.subscribed = self._session.subscribed

    def topic_cmd(self, device_id: str) -> str:
        return f"{self._root}/{device_id}/cmd"

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
        prefix, plen = self._prefix, len(self._prefix)
        out = []
        for m in messages:
            device_id = ""
            if m.topic.startswith(prefix) and m.topic.endswith("/cmd/result"):
                device_id = m.topic[plen : -len("/cmd/result")]
                if "/" in device_id:
                    device_id = ""
            out.append(InboundResult(device_id, m.payload, (generation, m.mid, m.qos)))
        if out:
            self._on_results(out)
