"""A lean asyncio MQTT client: one object per connection, manual acknowledgement, coalesced writes.

The gateway needs what common clients do not give it: PUBACK only after the database commit, and
tens of thousands of messages a second without a Python object per message per layer. Devices of
the simulator use the same client, so both ends of the tests speak the same, tested code. A broker
that breaks the protocol is left at once, with the reason, rather than half understood.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from collections.abc import Callable, Iterable

from gateway.mqtt._options import ConnectOptions
from gateway.mqtt._packets import (
    CONNACK,
    CONNACK_V3_REASONS,
    DEFAULT_MAX_PACKET_SIZE,
    DISCONNECT,
    MAX_PACKET_SIZE_LIMIT,
    PINGREQ_PACKET,
    PROP_MAXIMUM_PACKET_SIZE,
    PROP_RECEIVE_MAXIMUM,
    PROP_SERVER_KEEP_ALIVE,
    PUBACK,
    SUBACK,
    UNSUBACK,
    MalformedPacket,
    Message,
    PacketStream,
    ProtocolViolation,
    Will,
    decode_connack,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_pubacks,
    encode_publish,
    encode_subscribe,
    encode_unsubscribe,
    read_properties,
    reason_name,
)

log = logging.getLogger(__name__)

# What a paused client reads and holds back at most before it stops reading the socket.
DEFAULT_MAX_HELD_BYTES = 8 * 1024 * 1024
# How long a DISCONNECT after a protocol violation may take to go out before the socket is cut.
_VIOLATION_CLOSE_S = 1.0
# A read smaller than this found the socket nearly empty: with read_gather_s the client then waits
# before it reads again. asyncio reads at most 256 KiB at a time; a read near that found a backlog.
_GATHER_BELOW_BYTES = 64 * 1024


class MqttError(Exception):
    """A protocol failure, or the broker refusing a connection, subscription or publish."""

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class ConnectionLost(MqttError):
    """The connection ended, not by our own disconnect() or abort()."""


class _Wire(asyncio.Protocol):
    """asyncio's view of the socket; everything is forwarded to the client."""

    __slots__ = ("client",)

    def __init__(self, client: MqttClient) -> None:
        self.client = client

    def connection_made(self, transport) -> None:
        self.client._transport = transport

    def data_received(self, data: bytes) -> None:
        self.client._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._on_lost(exc)

    def pause_writing(self) -> None:
        self.client._writable.clear()

    def resume_writing(self) -> None:
        self.client._writable.set()


class MqttClient:
    """One MQTT connection.

    on_messages(list[Message]) is called synchronously with every PUBLISH parsed from one read of
    the socket. Without manual_ack the client acknowledges QoS 1 messages once the callback
    returns; with it, the owner calls ack(mids) when it is done with them (for the gateway: after
    the commit), in the order they arrived.

    options: the broker and the CONNECT parameters (ConnectOptions).
    clean_start: start a new session (True) or resume the client id's one.
    will: the message the broker publishes when the connection ends without DISCONNECT.
    max_packet_size: the largest packet (fixed header included) taken from the broker; MQTT 5
        announces it in CONNECT (the broker then drops bigger messages for this client), and a
        bigger packet ends the connection as soon as its length header arrives.
    max_held_bytes: while reading is paused (pause_reading) the client still reads, so that
        keepalive, acknowledgements and a broker going away keep working, and holds the messages
        back; after this many bytes it stops reading the socket itself (see pause_reading).
    read_gather_s: after a read that found the socket nearly empty, leave it unread this long,
        so that the kernel gathers what arrives meanwhile into one read. Every read is a pass of
        the event loop (a select, a recv, the callbacks) however few messages it brings: under a
        steady stream a client that reads as soon as anything arrives reads a few messages at a
        time. The price is this much more latency. 0 (the default): read at once.
    """

    def __init__(
        self,
        options: ConnectOptions,
        *,
        clean_start: bool = True,
        will: Will | None = None,
        on_messages: Callable[[list[Message]], None] | None = None,
        manual_ack: bool = False,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        read_gather_s: float = 0.0,
    ) -> None:
        if not 0 < max_packet_size <= MAX_PACKET_SIZE_LIMIT:
            raise ValueError(f"max_packet_size must be 1..{MAX_PACKET_SIZE_LIMIT}")
        self.options = options
        self.host, self.port = options.host, options.port
        self.client_id = options.client_id
        self.protocol = options.protocol
        self.keepalive_s = options.keepalive_s  # an MQTT 5 broker may set another in CONNACK
        self.clean_start = clean_start
        self.will = will
        self.on_messages = on_messages
        self.manual_ack = manual_ack
        self.max_packet_size = max_packet_size
        self.max_held_bytes = max_held_bytes
        self.read_gather_s = read_gather_s

        self._transport: asyncio.Transport | None = None
        self._stream = PacketStream(self.protocol, max_packet_size)
        self._connected = False
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future | None = None
        self._closed: asyncio.Future | None = None
        self._done: asyncio.Future | None = None  # shared result of every QoS 0 publish
        self._writable = asyncio.Event()
        self._writable.set()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._last_send = 0.0
        self._ping_sent: float | None = None
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._reading_paused = False  # by the owner: messages are held back
        self._socket_paused = False  # the transport too: nothing is read
        self._held: list[Message] = []
        self._held_bytes = 0  # read while paused since the held messages were last handed over
        self._lost_reason: ConnectionLost | None = None
        self._input_ended = False  # failed or broken: what the broker still sends is ignored
        self._cut_timer: asyncio.TimerHandle | None = None
        self._gather_timer: asyncio.TimerHandle | None = None  # read_gather_s: reading resumes
        self._pong_waiters: list[asyncio.Future] = []
        self._leaving = False

        self._next_mid = 1
        self._inflight: dict[int, asyncio.Future] = {}
        self._waiting: collections.deque = collections.deque()  # QoS 1 beyond the send quota
        self._subacks: dict[int, asyncio.Future] = {}
        self._send_quota = 65535  # the server's Receive Maximum
        self._server_max_packet = MAX_PACKET_SIZE_LIMIT
        self._topics: dict[str, bytes] = {}
        self.session_present = False

    # --- connection -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes sent or queued and not yet acknowledged by the broker."""
        return len(self._inflight) + len(self._waiting)

    async def connect(self, timeout: float = 10.0) -> bool:
        """Open the connection; returns whether the broker resumed an existing session."""
        if self._transport is not None:
            raise MqttError("a client object serves one connection; create a new one")
        loop = self._loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self._closed = loop.create_future()
        self._done = loop.create_future()
        self._done.set_result(None)
        try:
            async with asyncio.timeout(timeout):
                o = self.options
                await loop.create_connection(lambda: _Wire(self), o.host, o.port, ssl=o.ssl)
                self._write_now(
                    encode_connect(
                        client_id=o.client_id,
                        protocol=o.protocol,
                        clean_start=self.clean_start,
                        keepalive_s=o.keepalive_s,
                        session_expiry_s=o.session_expiry_s,
                        receive_maximum=o.receive_maximum,
                        maximum_packet_size=self.max_packet_size,
                        username=o.username,
                        password=o.password,
                        will=self.will,
                    )
                )
                connack = await self._connack
        except BaseException:
            self.abort()
            raise
        if connack.reason_code != 0:
            self.abort()
            reason = (
                reason_name(connack.reason_code)
                if self.protocol == 5
                else CONNACK_V3_REASONS.get(connack.reason_code, str(connack.reason_code))
            )
            raise MqttError(
                f"connection refused by {self.host}:{self.port}: {reason}", connack.reason_code
            )
        if self._transport.is_closing():  # what came with the CONNACK broke the protocol
            self.abort()
            raise self._lost_reason or ConnectionLost(
                f"connection to {self.host}:{self.port} closed right after CONNACK"
            )
        props = connack.properties
        self._send_quota = int(props.get(PROP_RECEIVE_MAXIMUM, 65535))
        self._server_max_packet = int(props.get(PROP_MAXIMUM_PACKET_SIZE, self._server_max_packet))
        self.keepalive_s = int(props.get(PROP_SERVER_KEEP_ALIVE, self.keepalive_s))
        self.session_present = connack.session_present
        self._connected = True
        if self.keepalive_s:
            self._limit_unacknowledged_sends()
            self._keepalive_timer = loop.call_later(self.keepalive_s / 2, self._keepalive)
        return connack.session_present

    def _limit_unacknowledged_sends(self) -> None:
        """Let the kernel drop the connection when what we send stays unacknowledged (by TCP)
        for as long as the broker would wait for us: with reading paused, a write is the only way
        to learn that a broker is gone, and without an answer TCP would retry for many minutes."""
        sock = self._transport.get_extra_info("socket")
        option = getattr(socket, "TCP_USER_TIMEOUT", None)
        if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(self.keepalive_s * 1500))
        except OSError:
            pass

    async def disconnect(
        self, timeout: float = 10.0, *, session_expiry_s: int | None = None
    ) -> None:
        """Leave cleanly with DISCONNECT: the broker keeps the session but drops the will.
        With session_expiry_s (MQTT 5 only) the session's expiry changes as it leaves; 0 ends
        the session, and whatever the broker still held for it, at once.

        First a PINGREQ/PINGRESP round trip, with incoming messages no longer delivered: a broker
        handles one connection's packets in order, so the answer proves it has processed every
        acknowledgement sent before. Closing right after a burst of PUBACKs can otherwise lose
        the ones the broker had not read yet (Mosquitto drops a connection's unread input when it
        sees the socket reset), and their messages come again.
        """
        if self._transport is None or self._closing:
            return
        if self._connected:
            self._leaving = True  # what arrives now is neither delivered nor acked: it comes again
            self.resume_reading()
            pong = self._loop.create_future()
            self._pong_waiters.append(pong)
            self._write_now(PINGREQ_PACKET)
            try:
                await asyncio.wait_for(asyncio.shield(pong), timeout)
            except (TimeoutError, ConnectionLost):
                pass  # leave anyway; unprocessed acks only cause redeliveries
            if self._connected:
                self._write_now(encode_disconnect(self.protocol, session_expiry_s))
        self._closing = True
        self._transport.close()
        await self.wait_closed()

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT; the broker publishes the will."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Return when the connection is closed by us; raise ConnectionLost otherwise."""
        if self._closed is None:
            return
        await asyncio.shield(self._closed)

    @property
    def held(self) -> int:
        """Messages read while paused and not handed over yet."""
        return len(self._held)

    def pause_reading(self) -> None:
        """Deliver no more messages until resume_reading() (backpressure, a graceful stop).

        The socket is still read: PINGRESP, PUBACK, SUBACK and DISCONNECT take effect at once,
        so the broker does not drop us for keepalive and a broker gone away is noticed (the
        connection ends with ConnectionLost). Messages are held back, in order, up to
        max_held_bytes read; beyond that the socket is not read either, and a PINGREQ goes out
        at every keepalive tick instead: the broker keeps the connection, and a broker gone
        away fails the next write (a silent one within TCP_USER_TIMEOUT, where the system has
        it: 1.5 keepalive intervals)."""
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            if not self._held:
                self._held_bytes = 0

    def resume_reading(self) -> None:
        """Deliver again, the held messages first (soon, from the event loop, not from here)."""
        if self._transport is None or not self._reading_paused:
            return
        self._reading_paused = False
        if self._socket_paused:
            self._socket_paused = False
            self._transport.resume_reading()
            if self._ping_sent is not None:  # its PINGRESP waits behind what was not read
                self._ping_sent = time.monotonic()
        if self._held:
            self._loop.call_soon(self._release_held)

    async def drain(self) -> None:
        """Wait until the socket takes writes again (after a burst of publishes)."""
        await self._writable.wait()

    # --- publish / subscribe ----------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        content_type: str | None = None,
    ) -> asyncio.Future:
        """Send a message. The future resolves when the broker acknowledges it (QoS 1) or at once
        (QoS 0); it fails with ConnectionLost if the connection ends first."""
        if not self._connected:
            raise ConnectionLost(f"not connected to {self.host}:{self.port}")
        if qos not in (0, 1):
            raise ValueError("this client publishes with QoS 0 or 1")
        t = self._topics.get(topic)
        if t is None:
            t = self._topics[topic] = topic.encode()
            if len(self._topics) > 10_000:
                self._topics.clear()
        if qos == 0:
            self._send(
                encode_publish(
                    t,
                    payload,
                    qos=0,
                    mid=0,
                    retain=retain,
                    dup=False,
                    protocol=self.protocol,
                    content_type=content_type,
                )
            )
            return self._done
        fut = self._loop.create_future()
        if len(self._inflight) >= self._send_quota:
            self._waiting.append((t, payload, retain, content_type, fut))
        else:
            self._send_qos1(t, payload, retain, content_type, fut)
        return fut

    def _send_qos1(
        self,
        topic: bytes,
        payload: bytes,
        retain: bool,
        content_type: str | None,
        fut: asyncio.Future,
    ) -> None:
        mid = self._take_mid()
        packet = encode_publish(
            topic,
            payload,
            qos=1,
            mid=mid,
            retain=retain,
            dup=False,
            protocol=self.protocol,
            content_type=content_type,
        )
        if len(packet) > self._server_max_packet:
            fut.set_exception(
                MqttError(
                    f"message of {len(packet)} bytes exceeds the broker's "
                    f"maximum packet size {self._server_max_packet}",
                    0x95,
                )
            )
            return
        self._inflight[mid] = fut
        self._send(packet)

    def _take_mid(self) -> int:
        if len(self._inflight) + len(self._subacks) >= 65535:
            raise MqttError("all 65535 packet identifiers are in use")
        mid = self._next_mid
        while mid in self._inflight or mid in self._subacks:
            mid = mid % 65535 + 1
        self._next_mid = mid % 65535 + 1
        return mid

    async def subscribe(self, topics: list[tuple[str, int]]) -> list[int]:
        """Subscribe; returns the granted QoS per topic, raises MqttError if any is refused."""
        if any(qos not in (0, 1) for _, qos in topics):
            raise ValueError("this client subscribes with QoS 0 or 1")
        return await self._request(
            lambda mid: encode_subscribe(mid, topics, self.protocol),
            [t for t, _ in topics],
            "subscription",
        )

    async def unsubscribe(self, filters: list[str]) -> list[int]:
        """Unsubscribe; returns the broker's reason code per filter (MQTT 5: 0x11 when there was
        no such subscription; MQTT 3.1.1 gives none: an empty list). Refusals raise MqttError."""
        return await self._request(
            lambda mid: encode_unsubscribe(mid, filters, self.protocol), filters, "unsubscribe"
        )

    async def _request(
        self, encode: Callable[[int], bytes], names: list[str], what: str
    ) -> list[int]:
        """Send a (UN)SUBSCRIBE built by encode(packet id) and await its reason codes."""
        if not self._connected:
            raise ConnectionLost(f"not connected to {self.host}:{self.port}")
        mid = self._take_mid()
        fut = self._subacks[mid] = self._loop.create_future()
        self._send(encode(mid))
        codes = await fut
        refused = [(n, c) for n, c in zip(names, codes) if c >= 0x80]
        if refused:
            raise MqttError(
                f"{what} refused: " + ", ".join(f"{n} ({reason_name(c)})" for n, c in refused),
                refused[0][1],
            )
        return codes

    def ack(self, mids: Iterable[int]) -> None:
        """PUBACK received QoS 1 messages (manual_ack), in the order they arrived."""
        if self._connected:
            data = encode_pubacks(list(mids))
            if data:
                self._send(data)

    # --- IO internals -----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
            self._last_send = time.monotonic()
        self._out.clear()

    def _write_now(self, data: bytes) -> None:
        self._out.append(data)
        self._flush()

    def _on_data(self, data: bytes) -> None:
        if self._input_ended:
            return
        if self._reading_paused:
            self._count_held_back(len(data))
        try:
            messages, acked, others, pongs = self._stream.feed(data)
            if pongs:
                self._on_pongs()
            for packet in others:
                self._on_packet(packet)
                if self._input_ended:  # a DISCONNECT
                    return
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        except IndexError as exc:  # a field of a control packet overruns it
            self._violation(MalformedPacket(f"a field overruns its packet ({exc})"))
            return
        if acked:
            self._on_acked(acked)
        if messages:
            self._on_messages_read(messages)
        self._gather(len(data))

    def _gather(self, size: int) -> None:
        """read_gather_s: after a read that found the socket nearly empty, read nothing for a
        while (a read near asyncio's 256 KiB found a backlog: read on)."""
        if self.read_gather_s and size < _GATHER_BELOW_BYTES and self._gather_timer is None:
            self._transport.pause_reading()
            self._gather_timer = self._loop.call_later(self.read_gather_s, self._end_gather)

    def _end_gather(self) -> None:
        """read_gather_s is over: read again, unless the socket is paused for another reason."""
        self._gather_timer = None
        if not self._socket_paused:
            self._transport.resume_reading()

    def _count_held_back(self, size: int) -> None:
        """Paused: past max_held_bytes read, stop reading the socket itself."""
        self._held_bytes += size
        if self._held_bytes >= self.max_held_bytes and not self._socket_paused:
            self._socket_paused = True
            self._transport.pause_reading()

    def _on_pongs(self) -> None:
        self._ping_sent = None
        waiters, self._pong_waiters = self._pong_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _on_acked(self, mids: list[int]) -> None:
        """Our QoS 1 publishes the broker acknowledged: resolve them, send what waited."""
        inflight = self._inflight
        for mid in mids:
            fut = inflight.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        self._release_waiting()

    def _on_messages_read(self, messages: list[Message]) -> None:
        if self._leaving:
            return  # neither delivered nor acknowledged: the broker sends them again
        if self._reading_paused or self._held:
            self._held += messages
        else:
            self._deliver(messages)

    def _deliver(self, messages: list[Message]) -> None:
        if self.on_messages is not None:
            self.on_messages(messages)
        if not self.manual_ack:
            mids = [m.mid for m in messages if m.qos]
            if mids:
                self._send(encode_pubacks(mids))

    def _release_held(self) -> None:
        if self._reading_paused or not self._held:
            return  # paused again meanwhile, or already handed over
        messages, self._held, self._held_bytes = self._held, [], 0
        if not self._leaving and self._connected:
            self._deliver(messages)

    def _release_waiting(self) -> None:
        waiting = self._waiting
        while waiting and len(self._inflight) < self._send_quota:
            topic, payload, retain, content_type, fut = waiting.popleft()
            if not fut.done():
                self._send_qos1(topic, payload, retain, content_type, fut)

    def _on_packet(self, packet) -> None:
        """A control packet; raises ProtocolViolation (or IndexError) for a broken one."""
        kind = packet.type
        if kind == CONNACK:  # the stream lets only the first one through
            self._on_connack(packet.body)
        elif kind == PUBACK:  # an MQTT 5 PUBACK with a reason code
            self._on_puback_with_reason(packet.body)
        elif kind == SUBACK or kind == UNSUBACK:
            self._on_suback(packet.body)
        elif kind == DISCONNECT:
            self._on_disconnect(packet.body)

    def _on_connack(self, body: bytes) -> None:
        connack = decode_connack(body, self.protocol)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(connack)

    def _on_puback_with_reason(self, body: bytes) -> None:
        mid, code = (body[0] << 8) | body[1], body[2]
        fut = self._inflight.pop(mid, None)
        if fut is not None and not fut.done():
            if code >= 0x80:
                fut.set_exception(MqttError(f"publish refused: {reason_name(code)}", code))
            else:
                fut.set_result(None)
        self._release_waiting()

    def _on_suback(self, body: bytes) -> None:
        mid, codes = decode_suback(body, self.protocol)
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _on_disconnect(self, body: bytes) -> None:
        code = body[0] if body else 0
        detail = reason_name(code)
        if len(body) > 1:
            props, _ = read_properties(body, 1)
            if 0x1F in props:  # reason string
                detail += f": {props[0x1F]}"
        self._fail(ConnectionLost(f"broker disconnected: {detail}", code))

    def _fail(self, exc: ConnectionLost) -> None:
        self._lost_reason = exc
        self._input_ended = True
        if self._transport is not None:
            self._transport.abort()

    def _violation(self, exc: ProtocolViolation) -> None:
        """The broker broke the protocol: say so (MQTT 5: DISCONNECT with the reason code), close,
        and end with ConnectionLost naming the violation."""
        if self._input_ended:
            return
        code, broker = exc.reason_code, f"{self.host}:{self.port}"
        log.warning(
            "mqtt_protocol_violation",
            extra={
                "broker": broker,
                "client_id": self.client_id,
                "violation": str(exc)[:300],
                "reason_code": f"0x{code:02x}",
            },
        )
        how = (
            f"disconnected with reason 0x{code:02x} ({reason_name(code)})"
            if self.protocol == 5
            else "connection closed"
        )
        self._lost_reason = ConnectionLost(
            f"protocol violation by the broker {broker}: {exc}; {how}", code
        )
        self._input_ended = True
        self._held.clear()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.protocol == 5:
            self._write_now(encode_disconnect(5, reason_code=code))
        transport.close()
        # A broker that does not read cannot hold the close open (it waits for the write).
        self._cut_timer = self._loop.call_later(_VIOLATION_CLOSE_S, transport.abort)

    def _keepalive(self) -> None:
        if not self._connected:
            return
        now = time.monotonic()
        if self._socket_paused:
            # No PINGRESP can be read now. A ping every tick keeps the broker's keepalive happy,
            # and a broker gone away makes the next one fail: the connection then ends.
            if self._ping_sent is None:
                self._ping_sent = now
            self._write_now(PINGREQ_PACKET)
        elif self._ping_sent is not None and now - self._ping_sent > self.keepalive_s:
            self._fail(ConnectionLost(f"no PINGRESP within {self.keepalive_s} s"))
            return
        elif self._ping_sent is None and now - self._last_send >= self.keepalive_s / 2:
            self._ping_sent = now
            self._write_now(PINGREQ_PACKET)
        self._keepalive_timer = self._loop.call_later(self.keepalive_s / 4, self._keepalive)

    def _on_lost(self, exc: Exception | None) -> None:
        self._connected = False
        held, self._held = self._held, []
        for timer in (self._keepalive_timer, self._cut_timer, self._gather_timer):
            if timer is not None:
                timer.cancel()
        lost = self._lost_reason or ConnectionLost(
            f"connection to {self.host}:{self.port} lost" + (f": {exc}" if exc else "")
        )
        for fut in [
            *self._inflight.values(),
            *(w[-1] for w in self._waiting),
            *self._subacks.values(),
            *self._pong_waiters,
        ]:
            if not fut.done():
                fut.set_exception(lost)
                fut.exception()  # reported once, through wait_closed(); don't log each
        self._inflight.clear()
        self._waiting.clear()
        self._subacks.clear()
        self._pong_waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(lost)
        if self._closed is not None and not self._closed.done():
            if self._closing:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(lost)
                self._closed.exception()
        self._writable.set()
        if held and self.manual_ack and not self._leaving and self.on_messages is not None:
            # Held back while paused and never acknowledged. A broker that kept them sends them
            # again; one that crashed before it saved them no longer has them. Hand them over:
            # the owner can store them (a repeat is a harmless duplicate), not acknowledge them.
            self.on_messages(held)
