"""A persistent MQTT session kept alive: one client id, clean_start off, manual acknowledgement,
reconnected forever with backoff until stopped.

Both consumers of the broker (the gateway's ingress and the command dispatcher's link) need the
same thing from it: whatever the broker delivered and they had not acknowledged comes again on the
next connection, so a message is acknowledged only after what it caused is committed. Each
connection has a generation; a message's token carries it, and only tokens of the current
connection are acknowledged (a packet id of an older connection means nothing on this one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from gateway.mqtt._client import ConnectionLost, MqttClient, MqttError
from gateway.mqtt._options import ConnectOptions
from gateway.mqtt._packets import Message, Will

_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0


class PersistentSession:
    def __init__(
        self,
        options: ConnectOptions,
        *,
        subscriptions: Callable[[], list[tuple[str, int]]],
        on_messages: Callable[[list[Message], int], None],
        will: Will | None = None,
        unsubscribe: Callable[[], list[str]] | None = None,
        on_up: Callable[[MqttClient], None] | None = None,
        on_down: Callable[[int], None] | None = None,
        log: logging.Logger,
        event_prefix: str = "",
        read_gather_s: float = 0.0,
    ) -> None:
        """on_messages(messages, generation) runs in the event loop for every read; unsubscribe()
        names filters the session leaves right after subscribing; on_up(client) once subscribed,
        before `subscribed` is set; on_down(generation) when a connection is
        gone, after the client was dropped. Log events are `{event_prefix}broker_subscribed` and
        `{event_prefix}broker_connection_lost`. read_gather_s: the clients' (MqttClient)."""
        self._options = options
        self.client_id = options.client_id
        self._subscriptions = subscriptions
        self._on_messages = on_messages
        self._will = will
        self._unsubscribe = unsubscribe
        self._on_up = on_up
        self._on_down = on_down
        self._log = log
        self._read_gather_s = read_gather_s
        self._events = (f"{event_prefix}broker_subscribed", f"{event_prefix}broker_connection_lost")
        self._client: MqttClient | None = None
        self.generation = 0
        self.subscribed = asyncio.Event()
        self.last_error: Exception | None = None  # why the latest connection ended or failed

    @property
    def client(self) -> MqttClient | None:
        """The connected client, or None between connections."""
        client = self._client
        return client if client is not None and client.connected else None

    @property
    def held(self) -> int:
        """Messages the current client read while paused and has not handed over yet."""
        client = self._client
        return client.held if client is not None else 0

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected and subscribed until stop is set. On stop the connection is left open:
        the owner commits and acknowledges what it holds, then calls disconnect(). Only a lost
        connection drops what it delivered."""
        backoff = _BACKOFF_FIRST_S
        subscribed_event, lost_event = self._events
        broker = self._options.broker
        while not stop.is_set():
            self.generation += 1
            client = MqttClient(
                self._options,
                clean_start=False,
                will=self._will,
                manual_ack=True,
                on_messages=lambda msgs, g=self.generation: self._on_messages(msgs, g),
                read_gather_s=self._read_gather_s,
            )
            try:
                session_present = await client.connect(timeout=10.0)
                self._client = client
                await client.subscribe(self._subscriptions())
                if self._unsubscribe is not None:
                    await client.unsubscribe(self._unsubscribe())
                if self._on_up is not None:
                    self._on_up(client)
                self.subscribed.set()
                self._log.info(
                    subscribed_event,
                    extra={
                        "broker": broker,
                        "client_id": self.client_id,
                        "session_present": session_present,
                    },
                )
                backoff = _BACKOFF_FIRST_S
                closed = asyncio.ensure_future(client.wait_closed())
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not closed.done():
                    closed.cancel()
                    return  # stopping, still connected: see the docstring
                stopping.cancel()
                closed.result()  # raises ConnectionLost unless we closed it ourselves
            except (OSError, TimeoutError, ConnectionLost, MqttError) as exc:
                self.last_error = exc
                self._log.warning(
                    lost_event,
                    extra={"broker": broker, "error": repr(exc)[:300], "retry_in_s": backoff},
                )
            client.abort()
            if self._client is client:
                self._client = None
            self.subscribed.clear()
            if self._on_down is not None:
                self._on_down(self.generation)
            try:
                await asyncio.wait_for(stop.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def acknowledge(self, tokens: Iterable[Any]) -> None:
        """PUBACK the messages of these (generation, mid, qos) tokens that arrived on the current
        connection; the others come again on the next one (their receivers ignore duplicates)."""
        client = self.client
        if client is None:
            return
        generation = self.generation
        tokens = tokens if isinstance(tokens, list) else list(tokens)
        if not tokens:
            return
        generations, mids, qos = zip(*tokens)  # columns, in C
        if generations.count(generation) != len(tokens) or 0 in qos:
            mids = [mid for gen, mid, qos in tokens if gen == generation and qos]
        if mids:
            client.ack(mids)

    async def disconnect(self) -> None:
        """Leave the broker cleanly (the session stays, so nothing unacknowledged is lost)."""
        client, self._client = self._client, None
        self.subscribed.clear()
        if client is not None and client.connected:
            await client.disconnect()

    async def end(self) -> None:
        """Leave and end the session on the broker: what it still holds for this client id is
        discarded, and a shared subscription no longer counts it as a member. Only for a session
        that holds nothing unacknowledged any more (see gateway drain)."""
        client, self._client = self._client, None
        self.subscribed.clear()
        if client is None or not client.connected:
            raise ConnectionLost(f"not connected to {self._options.broker}")
        if client.protocol == 5:
            await client.disconnect(session_expiry_s=0)
            return
        # MQTT 3.1.1 cannot shorten a session as it leaves; a clean session replaces it.
        await client.disconnect()
        clean = MqttClient(replace(self._options, session_expiry_s=0), clean_start=True)
        await clean.connect(timeout=10.0)
        await clean.disconnect()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (what a crash does; for tests)."""
        client, self._client = self._client, None
        self.subscribed.clear()
        if client is not None:
            client.abort()
