"""CoAP over UDP into the batch pipeline, for devices that wake, post and sleep (docs/coap.md).

`POST /fg/v1/{device_id}/telemetry|event|cmd/result?t={token}`. A request is checked at once
(token, content-format, size, payload) and refused with a code and a diagnostic payload, or
handed to the pipeline; its 2.04 is sent only after the batch holding it has committed, and
carries the device's next pending command, if any. While the database is away the answer is
5.03 with Max-Age, so the device sleeps and sends again. aiocoap's message layer answers
retransmissions of a confirmable request (same message id, same endpoint) with the first
response, without handing them to us again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiocoap
import aiocoap.resource
import cbor2
import orjson
from aiocoap.blockwise import Block1Spool, ContinueException, IncompleteException
from aiocoap.numbers.contentformat import ContentFormat
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from gateway.coap._auth import TokenVerifier
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Inbound, IngestPipeline
from telemetry import senml
from telemetry.decoder import (
    TimeLimits,
    decode_events,
    decode_telemetry,
    parse_payload,
    payload_encoding,
)
from telemetry.schema import MAX_PAYLOAD_BYTES, MAX_SAMPLES_PER_MESSAGE, Sample
from telemetry.store import StoreUnavailable
from telemetry.topics import COAP_UPLINKS, COMMAND_RESULT, EVENT, TELEMETRY, is_device_id

log = logging.getLogger(__name__)

# CoAP content-format -> the media type the decoder knows (None: sniffed from the first byte).
MEDIA_TYPES: dict[int, str] = {
    50: "application/json",
    60: "application/cbor",
    110: "application/senml+json",
    112: "application/senml+cbor",
}
_SENML = (110, 112)
_JSON, _CBOR = 50, 60
_MAX_RESULT_BYTES = 4096


class CommandMailbox(Protocol):
    """Pull delivery of remote commands (gateway.commands.CommandService implements it)."""

    async def take_pending_for(self, device_id: str) -> dict | None:
        """The next command to hand the device now, marked sent; None if none is due."""

    async def record_result(self, device_id: str, payload: bytes) -> Any:
        """Apply and persist a result the device posted."""


class CoapMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.responses = Counter(
            "fleetgate_coap_responses_total",
            "CoAP requests answered, by resource and code",
            ["resource", "code"],
            registry=registry,
        )
        self.response_seconds = Histogram(
            "fleetgate_coap_response_seconds",
            "From a CoAP request's arrival to its response (2.04: after the commit)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.commands_delivered = Counter(
            "fleetgate_coap_commands_delivered_total",
            "Commands handed to devices in the response to their uplink",
            registry=registry,
        )


class _Refusal(Exception):
    """A request answered with an error code at once (nothing submitted). `reason`: the
    rejection reason it is counted under, for an uplink refused for good (None: not counted,
    e.g. a 5.03 the device answers by sending again)."""

    def __init__(
        self,
        code: aiocoap.Code,
        diagnostic: str = "",
        max_age: int | None = None,
        size1: int | None = None,
        reason: str | None = None,
    ) -> None:
        self.code, self.diagnostic, self.max_age, self.size1 = code, diagnostic, max_age, size1
        self.reason = reason

    def response(self) -> aiocoap.Message:
        # A diagnostic payload is UTF-8 text without a Content-Format (RFC 7252, 5.5.2).
        msg = aiocoap.Message(code=self.code, payload=self.diagnostic.encode()[:512])
        if self.max_age is not None:
            msg.opt.max_age = self.max_age
        if self.size1 is not None:
            msg.opt.size1 = self.size1
        return msg


class CoapIngress:
    """The gateway's CoAP endpoint. `await start()`, acknowledge() is the pipeline's "coap"
    callback, pause() then (after the pipeline's last commit) `await stop()` on shutdown."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        verify: Callable[[str, str], Awaitable[bool]],
        *,
        metrics: GatewayMetrics,
        host: str = "::",
        port: int = 5683,
        path_root: str = "fg/v1",
        time_limits: TimeLimits = TimeLimits(),
        commands: CommandMailbox | None = None,
        response_timeout_s: float = 5.0,
        retry_after_s: int = 30,
        busy_retry_after_s: int = 5,
        token_cache_s: float = 30.0,
        receive_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._pipeline = pipeline
        self.verifier = TokenVerifier(verify, ttl_s=token_cache_s)
        self._metrics = metrics
        self._coap_metrics = CoapMetrics(metrics.registry)
        self.host, self.port = host, port
        self.path_root = tuple(path_root.split("/"))
        self._time_limits = time_limits
        self.commands = commands
        self._response_timeout_s = response_timeout_s
        self._retry_after_s = retry_after_s
        self._receive_buffer_bytes = receive_buffer_bytes
        self._busy_retry_after_s = busy_retry_after_s
        self._context: aiocoap.Context | None = None
        self._paused = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._pull_devices: set[str] = set()
        self._blocks = _BoundedBlock1Spool(MAX_PAYLOAD_BYTES)

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the UDP port (port 0: a free one, then in self.port) and serve."""
        if self.port == 0:
            self.port = _free_udp_port(self.host)
        # The resource is the whole site: aiocoap's Site copies every request (a deep copy of
        # its options) to strip the path, a third of the time an uplink costs.
        self._context = await aiocoap.Context.create_server_context(
            _DeviceResources(self),
            bind=(self.host, self.port),
            transports=["udp6"],
            loggername="fleetgate.coap.aiocoap",
        )
        rcvbuf = self._grow_receive_buffer()
        self._drop_undecodable_datagrams()
        log.info(
            "coap_listening",
            extra={
                "host": self.host,
                "port": self.port,
                "path": "/" + "/".join(self.path_root),
                "receive_buffer_bytes": rcvbuf,
            },
        )

    def _message_interface(self):
        # aiocoap exposes neither its socket nor its datagram handler; reach them where 0.4.x
        # keeps them (the UDP message interface is the socket's asyncio protocol).
        return self._context.request_interfaces[0].token_interface.message_interface

    def _grow_receive_buffer(self) -> int | None:
        """A larger socket receive buffer than the kernel's default (~200 kB, a few hundred
        datagrams): when many devices wake at once, the datagrams beyond it are dropped and
        each costs its device a retransmission 2 to 3 s later. Capped by net.core.rmem_max."""
        try:
            sock = self._message_interface().transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer_bytes)
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except (AttributeError, IndexError, OSError) as exc:
            log.warning("coap_receive_buffer_unchanged", extra={"error": str(exc)[:200]})
            return None

    def _drop_undecodable_datagrams(self) -> None:
        """aiocoap drops a datagram that is not CoAP, but lets some malformed ones raise out of
        its receive callback (0.4.17: a Uri-Query or Uri-Path that is not UTF-8 raises
        UnicodeDecodeError): asyncio then logs an error with a traceback for every such
        datagram. Found by benchmarks/fuzz.py. They are dropped here like any unparsable
        datagram, with one warning line; the device gets no answer, as for garbage."""
        try:
            iface = self._message_interface()
            receive = iface.datagram_msg_received
        except (AttributeError, IndexError) as exc:
            log.warning("coap_datagram_guard_missing", extra={"error": str(exc)[:200]})
            return

        def received(data: bytes, ancdata, flags: int, address) -> None:
            try:
                receive(data, ancdata, flags, address)
            except Exception as exc:  # the datagram's fault: aiocoap handles its own errors
                log.warning(
                    "coap_datagram_undecodable",
                    extra={
                        "peer": str(address[:2]),
                        "bytes": len(data),
                        "error": f"{type(exc).__name__}: {exc}"[:200],
                    },
                )

        iface.datagram_msg_received = received

    def pause(self) -> None:
        """Take no new uplinks (5.03 with Max-Age); requests already submitted are answered."""
        self._paused = True

    async def stop(self, timeout: float = 10.0) -> None:
        """Answer what is in flight (the pipeline has committed it by now), then close."""
        self._paused = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            log.warning("coap_stop_timeout", extra={"in_flight": self._in_flight})
        if self._context is not None:
            await self._context.shutdown()
            self._context = None

    # --- the pipeline's side ------------------------------------------------------------------

    def acknowledge(self, tokens: list[asyncio.Future]) -> None:
        """Called by the pipeline after the commit: the waiting requests may now answer 2.04."""
        for fut in tokens:
            if not fut.done():
                fut.set_result(None)

    def serves(self, device_id: str) -> bool:
        """Whether the device talks CoAP to this process (commands are pulled, not pushed)."""
        return device_id in self._pull_devices

    # --- one request --------------------------------------------------------------------------

    async def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        started = time.monotonic()
        self._in_flight += 1
        self._idle.clear()
        path = request.opt.uri_path
        root = len(self.path_root)
        if path[:root] == self.path_root:
            path = path[root:]  # (device_id, resource...)
        else:
            path = ()
        resource = "/".join(path[1:]) if len(path) > 1 else ""
        try:
            response = await self._handle(request, path)
            if request.opt.block1 is not None:
                response.opt.block1 = request.opt.block1  # the last block's, as RFC 7959 asks
        except _Refusal as refusal:
            response = refusal.response()
            self._count_refusal(request, path, refusal.reason)
        except ContinueException as more:
            response = more.to_message()  # 2.31: send the next block
        except IncompleteException:  # a block of a transfer whose start we do not have
            response = aiocoap.Message(code=aiocoap.REQUEST_ENTITY_INCOMPLETE)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        label = resource if resource in COAP_UPLINKS else "other"
        self._coap_metrics.responses.labels(label, str(response.code.dotted)).inc()
        self._coap_metrics.response_seconds.observe(time.monotonic() - started)
        return response

    def _count_refusal(
        self, request: aiocoap.Message, path: tuple[str, ...], reason: str | None
    ) -> None:
        """An uplink refused for good counts as MQTT's rejected messages do: one message and
        one sample received, one rejected. Only POSTs count (a GET is no uplink: scanners probe
        /.well-known/core), and no command result (not a sample)."""
        if reason is None or request.code != aiocoap.POST:
            return
        resource = "/".join(path[1:])
        if resource == COMMAND_RESULT:
            return
        self._metrics.count_refused(EVENT if resource == EVENT else TELEMETRY, "coap", reason)

    async def _handle(self, request: aiocoap.Message, path: tuple[str, ...]) -> aiocoap.Message:
        if request.code != aiocoap.POST:
            raise _Refusal(aiocoap.METHOD_NOT_ALLOWED)
        if len(path) < 2 or "/".join(path[1:]) not in COAP_UPLINKS:
            raise _Refusal(aiocoap.NOT_FOUND, reason="bad_topic")
        device_id, resource = path[0], "/".join(path[1:])
        if self._paused:
            raise _Refusal(
                aiocoap.SERVICE_UNAVAILABLE, "shutting_down", max_age=self._busy_retry_after_s
            )
        # Every block of a Block1 transfer carries the token: nothing is spooled for anyone
        # who cannot authenticate.
        await self._authenticate(device_id, _query(request, "t"))
        self._pull_devices.add(device_id)
        try:
            request = self._blocks.feed_and_take(request)  # 2.31 Continue until the last block
        except ValueError:  # aiocoap's spool: a gap or an overlap between blocks
            raise _Refusal(aiocoap.REQUEST_ENTITY_INCOMPLETE) from None
        payload = request.payload
        if resource == COMMAND_RESULT:
            await self._result(device_id, payload)
            return await self._changed(request, device_id)

        cf = request.opt.content_format
        cf = None if cf is None else int(cf)
        if cf is not None and (cf not in MEDIA_TYPES or (resource == EVENT and cf in _SENML)):
            raise _Refusal(
                aiocoap.UNSUPPORTED_CONTENT_FORMAT,
                f"unknown_encoding: content-format {cf} on /{resource}",
                reason="unknown_encoding",
            )
        media = MEDIA_TYPES.get(cf) if cf is not None else None
        kind = TELEMETRY if resource == TELEMETRY else EVENT
        received_ms = int(time.time() * 1000)
        self._check(kind, device_id, payload, media, received_ms)

        pipeline = self._pipeline
        if pipeline.db_down:
            # The pipeline is retrying a batch; that retry notices the database's return, so
            # nothing needs this request to probe for it. The device sleeps and sends again.
            raise _Refusal(
                aiocoap.SERVICE_UNAVAILABLE, "store_unavailable", max_age=self._retry_after_s
            )
        if pipeline.unacknowledged >= pipeline.limits.max_pending:
            raise _Refusal(aiocoap.SERVICE_UNAVAILABLE, "busy", max_age=self._busy_retry_after_s)
        committed = asyncio.get_running_loop().create_future()
        pipeline.submit(Inbound(kind, device_id, payload, received_ms, committed, media, "coap"))
        try:
            await asyncio.wait_for(asyncio.shield(committed), self._response_timeout_s)
        except TimeoutError:
            # Not committed yet (database slow or away): no 2.04. The message may still be
            # committed later; the device's retry is then a harmless duplicate.
            raise _Refusal(
                aiocoap.SERVICE_UNAVAILABLE, "store_unavailable", max_age=self._retry_after_s
            ) from None
        return await self._changed(request, device_id)

    async def _authenticate(self, device_id: str, token: str | None) -> None:
        # Unknown device, bad id, missing or wrong token: all the same 4.01, so that nobody can
        # learn which device ids exist.
        if not is_device_id(device_id):
            raise _Refusal(aiocoap.UNAUTHORIZED, reason="bad_topic")  # MQTT's name for it
        if not token:
            raise _Refusal(aiocoap.UNAUTHORIZED, reason="unauthorized")
        try:
            ok = await self.verifier.verify(device_id, token)
        except StoreUnavailable:
            raise _Refusal(
                aiocoap.SERVICE_UNAVAILABLE, "store_unavailable", max_age=self._retry_after_s
            ) from None
        if not ok:
            raise _Refusal(aiocoap.UNAUTHORIZED, reason="unauthorized")

    def _check(
        self, kind: str, device_id: str, payload: bytes, media: str | None, now_ms: int
    ) -> None:
        """Decode now what the pipeline will decode again: a message without one valid sample
        (event) is refused here with the reason, counted as the pipeline would count it."""
        if kind == "telemetry" and self._all_valid(payload, media, now_ms):
            return
        registry = {device_id: 0}
        if kind == "telemetry":
            result = decode_telemetry(
                [device_id],
                [payload],
                [now_ms],
                registry,
                now_ms=now_ms,
                limits=self._time_limits,
                content_types=[media],
                max_problems=1,
            )
            valid, rejected, problems = len(result.batch), result.rejected, result.problems
        else:
            events, rejected, problems = decode_events(
                [device_id],
                [payload],
                registry,
                now_ms=now_ms,
                limits=self._time_limits,
                content_types=[media],
                max_problems=1,
            )
            valid = len(events)
        if valid:
            return
        m = self._metrics
        m.messages_received.labels("coap", kind).inc()
        if kind == "telemetry":  # no valid sample: every one it carried is rejected
            m.samples_received.labels("coap").inc(sum(rejected.values()))
        m.count_rejected(kind, "coap", rejected)
        problem = problems[0] if problems else None
        diagnostic = f"{problem.reason}: {problem.detail}" if problem else "bad_structure"
        raise _Refusal(aiocoap.BAD_REQUEST, diagnostic)

    def _all_valid(self, payload: bytes, media: str | None, now_ms: int) -> bool:
        """The common case, cheaply: every sample passes the contract model (telemetry.schema,
        which agrees with the decoder) and the time limits. The columnar decoder costs a few
        hundred microseconds for one small message; it runs only when this says no, to find
        whether any sample is valid and why the others are not."""
        enc = payload_encoding(payload, media)
        if enc is None:
            return False
        try:
            value = parse_payload(payload, enc)
            if enc.startswith("senml"):
                value = senml.to_samples(value, now_ms)
        except Exception:  # any parse failure: the decoder names it
            return False
        items = [value] if type(value) is dict else value
        if type(items) is not list or not 0 < len(items) <= MAX_SAMPLES_PER_MESSAGE:
            return False
        lo = now_ms - self._time_limits.max_age_ms
        hi = now_ms + self._time_limits.max_future_ms
        try:
            return all(
                type(item) is dict and lo <= Sample.model_validate(item).t <= hi for item in items
            )
        except ValidationError:
            return False

    async def _result(self, device_id: str, payload: bytes) -> None:
        if self.commands is None:
            # The dispatcher runs in another process or is being taken over (its lease): the
            # device keeps the result and sends it again after Max-Age, as for any outage.
            raise _Refusal(
                aiocoap.SERVICE_UNAVAILABLE, "commands_unavailable", max_age=self._retry_after_s
            )
        from commands.model import DeviceResult  # the one parser of results

        if len(payload) > _MAX_RESULT_BYTES:
            raise _Refusal(
                aiocoap.REQUEST_ENTITY_TOO_LARGE, "payload_too_large", size1=_MAX_RESULT_BYTES
            )
        try:
            DeviceResult.parse(payload)
        except ValueError as exc:
            raise _Refusal(aiocoap.BAD_REQUEST, f"bad_structure: {str(exc)[:200]}") from None
        try:
            await self.commands.record_result(device_id, payload)
        except StoreUnavailable:
            raise _Refusal(
                aiocoap.SERVICE_UNAVAILABLE, "store_unavailable", max_age=self._retry_after_s
            ) from None

    async def _changed(self, request: aiocoap.Message, device_id: str) -> aiocoap.Message:
        """2.04, with the device's next command when one is due (handed over exactly here)."""
        command = None
        if self.commands is not None:
            try:
                command = await self.commands.take_pending_for(device_id)
            except Exception as exc:  # the uplink is committed: its 2.04 goes out regardless
                log.warning(
                    "coap_command_lookup_failed",
                    extra={"device_id": device_id, "error": str(exc)[:200]},
                )
        if command is None:
            return aiocoap.Message(code=aiocoap.CHANGED)
        cf = _downlink_format(request)
        payload = orjson.dumps(command) if cf == _JSON else cbor2.dumps(command)
        self._coap_metrics.commands_delivered.inc()
        log.info(
            "coap_command_delivered",
            extra={"device_id": device_id, "command_id": command.get("id")},
        )
        return aiocoap.Message(
            code=aiocoap.CHANGED, payload=payload, content_format=ContentFormat(cf)
        )


class _DeviceResources(aiocoap.resource.Resource):
    """Every path of the endpoint; the ingress reads it."""

    def __init__(self, ingress: CoapIngress) -> None:
        super().__init__()
        self._ingress = ingress

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        # The ingress reassembles Block1 transfers itself, after authentication and with a size
        # limit (aiocoap's own spool has neither).
        return False

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._ingress.handle(request)


class _BoundedBlock1Spool(Block1Spool):
    """aiocoap's Block1 reassembly, refusing a transfer that announces (Size1) or reaches more
    than the protocol allows with 4.13 and the limit in Size1."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__()
        self.max_bytes = max_bytes

    def feed_and_take(self, request: aiocoap.Message) -> aiocoap.Message:
        block1 = request.opt.block1
        if block1 is not None and (
            (request.opt.size1 or 0) > self.max_bytes
            or block1.start + len(request.payload) > self.max_bytes
        ):
            raise _Refusal(
                aiocoap.REQUEST_ENTITY_TOO_LARGE,
                f"payload_too_large: more than {self.max_bytes} bytes",
                size1=self.max_bytes,
                reason="payload_too_large",
            )
        return super().feed_and_take(request)


def _query(request: aiocoap.Message, name: str) -> str | None:
    prefix = name + "="
    for item in request.opt.uri_query:
        if item.startswith(prefix):
            return item[len(prefix) :]
    return None


def _downlink_format(request: aiocoap.Message) -> int:
    """JSON or CBOR for a command: what the device accepts, else its uplink's family."""
    accept = request.opt.accept
    if accept is not None and int(accept) in (_JSON, _CBOR):
        return int(accept)
    cf = request.opt.content_format
    if cf is not None and int(cf) in (_CBOR, 112):
        return _CBOR
    if cf is None and request.payload[:1] not in (b"{", b"[", b" ", b""):
        return _CBOR
    return _JSON


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
