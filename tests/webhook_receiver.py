"""A local webhook receiver for tests and benchmarks: a small HTTP/1.1 server on asyncio streams
(keep-alive, Content-Length bodies) that records what it is sent and answers as its `answer`
function says (a status, maybe after a delay; or an oversized body)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from outbound import verify


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict:
        return orjson.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    delay_s: float = 0.0
    body_bytes: int = 0  # an answer body of this size (an oversized receiver)


AnswerFn = Callable[[Received, int], Awaitable[Answer] | Answer]  # (request, nth attempt of id)


@dataclass
class WebhookReceiver:
    answer: AnswerFn | None = None
    received: list[Received] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)  # event id -> requests seen
    count: int = 0
    record: bool = True  # False: only count (a benchmark's receiver)

    async def start(self, host: str = "127.0.0.1") -> str:
        self._server = await asyncio.start_server(self._serve, host, 0, backlog=1024)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{host}:{port}/hooks"
        return self.url

    async def close(self) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                await self._answer(Received(headers, body, time.time()), writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, request: Received, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        event_id = int(request.headers.get("fleetgate-event-id", "0"))
        nth = self.attempts[event_id] = self.attempts.get(event_id, 0) + 1
        answer = Answer()
        if self.answer is not None:
            answer = self.answer(request, nth)
            if asyncio.iscoroutine(answer):
                answer = await answer
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if self.record and 200 <= answer.status < 300:
            self.received.append(request)  # what the sender was told is delivered
        writer.write(
            f"HTTP/1.1 {answer.status} X\r\nContent-Length: {answer.body_bytes}\r\n\r\n".encode()
        )
        left = answer.body_bytes
        chunk = b"x" * 65536
        while left > 0:
            writer.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)
            await writer.drain()
        await writer.drain()


def verifies(received: Received, secret: str, tolerance_s: int = 300) -> bool:
    """Whether a request's signature is the subscription's, the way docs/webhooks.md checks."""
    return verify(
        secret,
        received.headers.get("fleetgate-timestamp", ""),
        received.headers.get("fleetgate-signature", ""),
        received.body,
        now=received.at,
        tolerance_s=tolerance_s,
    )
