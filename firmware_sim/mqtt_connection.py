"""One simulated TCU's MQTT connection, on paho-mqtt (the Eclipse client many TCU userlands run)
driven by the asyncio event loop: connect with a persistent session and a will, subscribe to
the command topic, publish QoS 1 with a future per message, drop the connection like a modem
losing its network, or leave cleanly.

paho rather than aiomqtt (which wraps it): aiomqtt 2.5 reports a PUBACK that refuses the message
(reason code >= 0x80, e.g. "not authorized") as a success, offers no way to drop a connection
without DISCONNECT, and makes every QoS 1 publish a coroutine to await. paho's own callbacks and
its external-loop hooks (on_socket_open, on_socket_register_write, ...) give all of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

# QoS 1 messages a device has on the wire unacknowledged; paho queues the rest in order. Small,
# like a TCU's, and within any broker's Receive Maximum (paho does not read the broker's).
IN_FLIGHT = 20


class MqttError(Exception):
    """The broker refused something (CONNECT, SUBSCRIBE, a PUBLISH), or the connection failed."""


class ConnectionLost(MqttError):
    """The connection ended before the broker answered; what was in flight may or may not have
    reached it."""


class MqttConnection:
    """One connection of one device (a new object for every connection).

    on_message(topic, payload) is called for every message the broker delivers; paho sends the
    PUBACK of a QoS 1 message once it returns.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        protocol: int = 5,
        session_expiry_s: int = 0,
        keepalive_s: int = 30,
        receive_maximum: int = 64,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
    ) -> None:
        if protocol not in (4, 5):
            raise ValueError("protocol must be 4 (MQTT 3.1.1) or 5")
        self.host, self.port = host, port
        self.protocol = protocol
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.receive_maximum = receive_maximum
        self.on_message = on_message
        v5 = protocol == 5
        client = self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            # A persistent session, so commands wait in the broker while the device is away.
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.max_inflight_messages_set(IN_FLIGHT)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            topic, payload = will
            client.will_set(topic, payload, qos=1, retain=True)
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._written
        client.on_connect = self._connack
        client.on_disconnect = self._closed_by
        client.on_publish = self._puback
        client.on_subscribe = self._suback
        client.on_message = self._message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._connack: asyncio.Future | None = None
        self._closed: asyncio.Future | None = None
        self._published: dict[int, asyncio.Future] = {}
        self._subscribed: dict[int, asyncio.Future] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self._leaving = False  # DISCONNECT sent or dropped on purpose
        self._write_scheduled = False
        self.connected = False

    # --- connection ------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> bool:
        """Open the connection; returns whether the broker resumed the device's session. Raises
        MqttError when the broker refuses, OSError or TimeoutError when it cannot be reached."""
        if self._loop is not None:
            raise MqttError("a connection object serves one connection; create a new one")
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        client = self._client
        client.connect_timeout = timeout
        try:
            async with asyncio.timeout(timeout):
                # paho opens the socket blocking (a DNS lookup, a TCP handshake): in a thread, so
                # that a slow broker does not stall every other device.
                await loop.run_in_executor(None, self._open)
                session_present = await self._connack
        except BaseException:
            self.abort()
            raise
        self.connected = True
        self._keepalive = loop.call_later(1.0, self._tick)
        return session_present

    def _open(self) -> None:
        session = {}  # MQTT 3.1.1: clean session 0, set on the client
        if self.protocol == 5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            props.ReceiveMaximum = self.receive_maximum
            session = {"clean_start": False, "properties": props}
        self._client.connect(self.host, self.port, keepalive=self.keepalive_s, **session)

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT, as when the modem loses its network: the
        broker publishes the will."""
        self._leaving = True
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # paho reads the end and closes its side

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Leave cleanly with DISCONNECT: the broker keeps the session and drops the will."""
        if not self.connected:
            return
        self._leaving = True
        self._client.disconnect()
        with contextlib.suppress(TimeoutError, MqttError):
            await asyncio.wait_for(self.wait_closed(), timeout)
        self.abort()

    async def wait_closed(self) -> None:
        """Return when the connection ended on purpose (disconnect, abort); raise
        ConnectionLost when it ended otherwise."""
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # --- messages --------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> asyncio.Future:
        """Send a QoS 1 message. The future resolves on its PUBACK, fails with MqttError when
        the broker refuses it and with ConnectionLost when the connection ends first."""
        if not self.connected:
            raise ConnectionLost(f"not connected to {self.host}:{self.port}")
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"publish not sent: {paho.error_string(info.rc)}")
        fut = self._loop.create_future()
        self._published[info.mid] = fut
        return fut

    async def subscribe(self, topic: str) -> None:
        """Subscribe with QoS 1; MqttError if the broker refuses."""
        rc, mid = self._client.subscribe(topic, qos=1)
        if rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"subscribe not sent: {paho.error_string(rc)}")
        fut = self._subscribed[mid] = self._loop.create_future()
        codes = await fut
        refused = [str(c) for c in codes if c.is_failure]
        if refused:
            raise MqttError(f"subscription to {topic} refused: {', '.join(refused)}")

    # --- paho's callbacks ------------------------------------------------------------------

    def _connack(self, client, userdata, flags, reason_code, properties) -> None:
        fut = self._connack
        if fut is None or fut.done():
            return
        if reason_code.is_failure:
            fut.set_exception(
                MqttError(f"connection refused by {self.host}:{self.port}: {reason_code}")
            )
        else:
            fut.set_result(bool(flags.session_present))

    def _puback(self, client, userdata, mid, reason_code, properties) -> None:
        fut = self._published.pop(mid, None)
        if fut is None or fut.done():
            return
        if reason_code.is_failure:
            fut.set_exception(MqttError(f"publish refused: {reason_code}"))
        else:
            fut.set_result(None)

    def _suback(self, client, userdata, mid, reason_codes, properties) -> None:
        fut = self._subscribed.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(reason_codes)

    def _message(self, client, userdata, message) -> None:
        if self.on_message is not None:
            self.on_message(message.topic, message.payload)

    def _closed_by(self, client, userdata, flags, reason_code, properties) -> None:
        """The connection ended: everything unanswered fails; wait_closed() learns how."""
        self.connected = False
        if self._keepalive is not None:
            self._keepalive.cancel()
        how = "" if reason_code is None or not reason_code.is_failure else f": {reason_code}"
        lost = ConnectionLost(f"connection to {self.host}:{self.port} lost{how}")
        for fut in [*self._published.values(), *self._subscribed.values(), self._connack]:
            if fut is not None and not fut.done():
                fut.set_exception(lost)
                fut.exception()  # reported once, through wait_closed(); don't log each
        self._published.clear()
        self._subscribed.clear()
        if self._closed is not None and not self._closed.done():
            if self._leaving:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(lost)
                self._closed.exception()

    def _tick(self) -> None:
        """paho's keepalive (PINGREQ, and giving up on a broker that stopped answering)."""
        if self._client.loop_misc() == paho.MQTT_ERR_SUCCESS and self.connected:
            self._keepalive = self._loop.call_later(1.0, self._tick)

    # paho opens the socket in the executor's thread: what it asks of the loop from there goes
    # through call_soon_threadsafe. Sockets are registered by descriptor, which stays valid for
    # the loop after paho has closed the socket object.

    def _in_loop(self, fn: Callable, *args) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _socket_open(self, client, userdata, sock) -> None:
        # Small messages that wait for an answer (a command result): no Nagle delay, as the
        # gateway's own asyncio connections have none either.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in_loop(self._opened, sock, sock.fileno())

    def _opened(self, sock, fd: int) -> None:
        self._loop.add_reader(fd, self._readable)
        if self._leaving:  # given up on while paho was still connecting: close it at once
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _socket_close(self, client, userdata, sock) -> None:
        self._in_loop(self._loop.remove_reader, sock.fileno())

    def _want_write(self, client, userdata, sock) -> None:
        self._in_loop(self._write_soon)

    def _write_soon(self) -> None:
        """Send what paho queued at the end of this turn of the loop, with whatever else is
        published in it: registering the socket for writing for each message cost two
        epoll_ctl calls and a turn of the loop per message (a tenth of the simulator's CPU)."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self._loop.call_soon(self._write_now)

    def _write_now(self) -> None:
        self._write_scheduled = False
        self._writable()
        sock = self._client.socket()
        if sock is not None and self._client.want_write():  # the socket's buffer is full
            self._loop.add_writer(sock.fileno(), self._writable)

    def _written(self, client, userdata, sock) -> None:
        self._in_loop(self._loop.remove_writer, sock.fileno())

    def _readable(self) -> None:
        try:
            self._client.loop_read()
        except Exception as exc:  # paho maps socket errors itself; anything else ends it too
            self._broken(exc)

    def _writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception as exc:
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        log.debug(
            "sim_mqtt_failed", extra={"broker": f"{self.host}:{self.port}", "error": repr(exc)}
        )
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the next read ends the connection
