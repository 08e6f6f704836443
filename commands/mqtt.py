"""The commands' own MQTT connection: publishes downlinks on {root}/{device_id}/cmd (QoS 1) and
receives {root}/+/cmd/result with manual acknowledgement, so a result is acked only after its
state change is committed. A persistent session keeps results that arrive while it is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from fleetgate.logs import fields
from fleetgate.mqtt import ConnectionLost, Message, MqttClient, MqttError

log = logging.getLogger("fleetgate.commands.mqtt")


class InboundResult(NamedTuple):
    device_id: str
    payload: bytes
    token: Any  # for acknowledge(): (connection generation, mid, qos)


def command_client_id(gateway_client_id: str) -> str:
    """The commands' client id next to the gateway's (ids are at most 64 characters here)."""
    return gateway_client_id[:60] + "-cmd"


class CommandLink:
    def __init__(self, *, host: str, port: int, client_id: str, topic_root: str = "fg/v1",
                 protocol: int = 5, keepalive_s: int = 30, session_expiry_s: int = 7 * 86400,
                 username: str | None = None, password: str | None = None,
                 on_results: Callable[[list[InboundResult]], None],
                 on_up: Callable[[], None] | None = None,
                 on_connected: Callable[[bool], None] | None = None) -> None:
        self._host, self._port = host, port
        self.client_id = client_id
        self._root = topic_root
        self._prefix = topic_root + "/"
        self._protocol = protocol
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._username, self._password = username, password
        self._on_results = on_results
        self._on_up = on_up
        self._on_connected = on_connected
        self._client: MqttClient | None = None
        self._generation = 0
        self.subscribed = asyncio.Event()

    def topic_cmd(self, device_id: str) -> str:
        return f"{self._root}/{device_id}/cmd"

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and subscribed until stop is set (then leave the connection open for
        disconnect(), so results being committed can still be acknowledged)."""
        backoff = 0.2
        while not stop.is_set():
            self._generation += 1
            generation = self._generation
            client = MqttClient(
                self._host, self._port, client_id=self.client_id, protocol=self._protocol,
                clean_start=False, session_expiry_s=self._session_expiry_s,
                keepalive_s=self._keepalive_s, username=self._username,
                password=self._password, manual_ack=True,
                on_messages=lambda msgs, g=generation: self._messages(msgs, g))
            try:
                session_present = await client.connect(timeout=10.0)
                self._client = client
                await client.subscribe([(f"{self._root}/+/cmd/result", 1)])
                self.subscribed.set()
                if self._on_connected is not None:
                    self._on_connected(True)
                log.info("commands_broker_subscribed", extra=fields(
                    broker=f"{self._host}:{self._port}", client_id=self.client_id,
                    session_present=session_present))
                if self._on_up is not None:
                    self._on_up()
                backoff = 0.2
                closed = asyncio.ensure_future(client.wait_closed())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not closed.done():
                    closed.cancel()
                    return
                stopping.cancel()
                closed.result()
            except (OSError, TimeoutError, ConnectionLost, MqttError) as exc:
                log.warning("commands_broker_connection_lost", extra=fields(
                    broker=f"{self._host}:{self._port}", error=repr(exc)[:300],
                    retry_in_s=backoff))
            client.abort()
            if self._client is client:
                self._client = None
            self.subscribed.clear()
            if self._on_connected is not None:
                self._on_connected(False)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def publish(self, device_id: str, payload: bytes) -> asyncio.Future | None:
        """Publish a downlink (QoS 1); the future resolves on the broker's PUBACK. None when
        not connected (the caller's retry logic covers it)."""
        client = self._client
        if client is None or not client.connected:
            return None
        try:
            return client.publish(self.topic_cmd(device_id), payload, qos=1,
                                  content_type="application/json")
        except ConnectionLost:
            return None

    def acknowledge(self, tokens: Iterable[Any]) -> None:
        """PUBACK committed results that arrived on the current connection (older ones come
        again on the next connection)."""
        client = self._client
        if client is None or not client.connected:
            return
        mids = [mid for gen, mid, qos in tokens if gen == self._generation and qos]
        if mids:
            client.ack(mids)

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        self.subscribed.clear()
        if client is not None and client.connected:
            await client.disconnect()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (a crash, for tests)."""
        client, self._client = self._client, None
        self.subscribed.clear()
        if client is not None:
            client.abort()

    def _messages(self, messages: list[Message], generation: int) -> None:
        prefix, plen = self._prefix, len(self._prefix)
        out = []
        for m in messages:
            device_id = ""
            if m.topic.startswith(prefix) and m.topic.endswith("/cmd/result"):
                device_id = m.topic[plen:-len("/cmd/result")]
                if "/" in device_id:
                    device_id = ""
            out.append(InboundResult(device_id, m.payload, (generation, m.mid, m.qos)))
        if out:
            self._on_results(out)
