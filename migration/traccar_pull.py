"""Pull a fleet live from a Traccar server's REST API into the same TraccarExport the folder
reader gives, so that `migrate analyse` and `migrate import` work on either unchanged.

The HTTP shell around `traccar_pager`: it logs in (an API token as `Authorization: Bearer`, or
user and password through `POST /api/session` and its session cookie), reads the devices,
geofences and groups, and pages every device's positions by time window, a few devices at a
time. Timeouts, dropped connections and 5xx answers are retried with backoff; a window the
server cannot answer in one piece is split. A refused login is a `TraccarAuthError`; anything
else that makes the server unreadable is a `TraccarPullError` naming the request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson

from migration.errors import UnreadableInput, json_error_offset
from migration.traccar_export import PositionChunk, TraccarExport
from migration.traccar_pager import (
    DAY_MS,
    DeviceHistoryPager,
    PagingLimits,
    PositionWindow,
    WindowTooLarge,
    traccar_time,
)

log = logging.getLogger(__name__)


class TraccarPullError(UnreadableInput):
    """The Traccar server could not be read: `file` names the server and request, `reason`
    says why (unreadable input to `fleetgate migrate`: exit 2)."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(where, reason)


class TraccarAuthError(TraccarPullError):
    """The Traccar server refused the credentials (401/403)."""


@dataclass(frozen=True)
class TraccarLogin:
    """How to log in: an API token (Traccar's user settings, or `POST /api/session/token`), or
    a user's email and password.

    Args:
        token: sent as `Authorization: Bearer <token>` with every request.
        user: the email (or login) for `POST /api/session`; needs password.
        password: the user's password.
    """

    token: str | None = None
    user: str | None = None
    password: str | None = None

    def problem(self) -> str | None:
        """Why these credentials cannot be used, or None."""
        if self.token and (self.user or self.password):
            return "give either --token or --user/--password, not both"
        if self.token:
            return None
        if self.user and self.password:
            return None
        if self.user or self.password:
            return "--user and --password go together"
        return "a live Traccar pull needs --token, or --user and --password"


@dataclass(frozen=True)
class PullOptions:
    """What to pull and how patiently.

    Args:
        since_ms: the oldest fixTime to pull (inclusive).
        until_ms: the newest fixTime to pull (exclusive).
        limits: how the pager slices each device's history.
        timeout_s: per request (connect, and between bytes of the answer).
        attempts: tries per request before giving up (timeouts, dropped connections, 5xx).
        backoff_s: the wait after the first failed try; it doubles, up to max_backoff_s.
        max_backoff_s: the longest wait between tries.
        max_body_bytes: an answer larger than this is abandoned and its window split.
        concurrency: devices paged at the same time.
    """

    since_ms: int
    until_ms: int
    limits: PagingLimits = field(default_factory=PagingLimits)
    timeout_s: float = 60.0
    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_body_bytes: int = 64 * 1024 * 1024
    concurrency: int = 4

    @classmethod
    def last_days(cls, days: int, now_ms: int | None = None, **options: object) -> PullOptions:
        """The history of the last `days` days and a day ahead: fixes a device stamped ahead
        of the server's clock come along, so that analyse reports them (time_in_future)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return cls(since_ms=now - days * DAY_MS, until_ms=now + DAY_MS, **options)


@dataclass
class TraccarPull:
    """What a pull brought: the export (positions in one chunk per answered window, named by
    its request, by device in the devices' order and then by fixTime) and how it went."""

    export: TraccarExport
    requests: int
    windows_split: int


class AnswerTooLarge(TraccarPullError):
    """An answer larger than max_body_bytes: the pull splits its window (a list that is not
    paged, such as the devices, cannot be split: the pull stops)."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(where, why)
        self.why = why


class _TooLarge(Exception):
    """The body passed max_body_bytes while it was read."""


class TraccarClient:
    """One logged-in connection to a Traccar server's API (`async with`)."""

    def __init__(self, url: str, login: TraccarLogin, options: PullOptions) -> None:
        problem = login.problem()
        if problem:
            raise TraccarPullError(url, problem)
        self.url = url.rstrip("/")
        self.login = login
        self.options = options
        self.requests = 0
        headers = {"Accept": "application/json"}
        if login.token:
            headers["Authorization"] = f"Bearer {login.token}"
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(options.timeout_s),
            follow_redirects=False,
        )
        self._login_lock = asyncio.Lock()

    async def __aenter__(self) -> TraccarClient:
        try:
            if self.login.user:
                await self._log_in()
        except BaseException:
            await self._http.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _log_in(self) -> None:
        form = {"email": self.login.user, "password": self.login.password}
        response = await self._send("POST", "/api/session", data=form)
        if response.status_code in (401, 403):
            raise TraccarAuthError(
                self.url,
                f"Traccar refused the login of {self.login.user!r} ({response.status_code}): "
                "check --user and --password",
            )
        if response.status_code >= 400:
            raise TraccarPullError(
                f"{self.url} POST /api/session", f"{response.status_code} {response.text[:200]}"
            )

    async def get_list(self, path: str, params: dict[str, str] | None = None) -> list[dict]:
        """GET an array (devices, geofences, groups, positions)."""
        what = f"GET {path}" + (f"?{httpx.QueryParams(params)}" if params else "")
        body = await self._get_body(path, params, what)
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            offset = json_error_offset(body, exc.pos)
            raise TraccarPullError(
                f"{self.url} {what}", f"the answer is not JSON ({exc.msg} at byte {offset})"
            ) from None
        if not isinstance(value, list):
            raise TraccarPullError(
                f"{self.url} {what}", f"expected a JSON array, got {value!r:.80}"
            )
        return value

    async def _get_body(self, path: str, params: dict[str, str] | None, what: str) -> bytes:
        relogged = False
        while True:
            try:
                status, body = await self._retrying(lambda: self._read(path, params), what)
            except _TooLarge as exc:
                raise AnswerTooLarge(f"{self.url} {what}", str(exc)) from None
            if status in (401, 403) and self.login.user and not relogged:
                relogged = True  # the session may have expired during a long pull
                async with self._login_lock:
                    await self._log_in()
                continue
            if status in (401, 403):
                how = "the token" if self.login.token else f"user {self.login.user!r}"
                raise TraccarAuthError(
                    self.url,
                    f"Traccar refused {what} with {status}: {how} is not accepted (wrong, "
                    "expired, or without access to this data)",
                )
            if status >= 400:
                raise TraccarPullError(
                    f"{self.url} {what}", f"{status} {body[:200].decode(errors='replace')}"
                )
            return body

    async def _read(self, path: str, params: dict[str, str] | None) -> tuple[int, bytes]:
        """One GET: (status, body); the body is abandoned beyond max_body_bytes."""
        self.requests += 1
        async with self._http.stream("GET", path, params=params) as response:
            if response.status_code >= 500:
                raise _ServerError(response.status_code)
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.options.max_body_bytes:
                    raise _TooLarge(f"more than {self.options.max_body_bytes} bytes")
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    async def _send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        async def once() -> httpx.Response:
            self.requests += 1
            response = await self._http.request(method, path, **kwargs)
            if response.status_code >= 500:
                raise _ServerError(response.status_code)
            return response

        return await self._retrying(once, f"{method} {path}")

    async def _retrying(self, attempt, what: str):
        """attempt() until it succeeds; timeouts, broken connections and 5xx are tried again
        up to options.attempts times, with doubling waits."""
        o = self.options
        wait = o.backoff_s
        for number in range(1, o.attempts + 1):
            try:
                return await attempt()
            except (httpx.TransportError, _ServerError) as exc:
                reason = _reason(exc)
                if number == o.attempts:
                    raise TraccarPullError(
                        f"{self.url} {what}", f"{reason}, {o.attempts} times; giving up"
                    ) from None
                log.warning(
                    "traccar_request_retried",
                    extra={"request": what, "error": reason, "attempt": number, "wait_s": wait},
                )
                await asyncio.sleep(wait)
                wait = min(wait * 2, o.max_backoff_s)
        raise AssertionError("unreachable")  # pragma: no cover


class _ServerError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"server error {status}")
        self.status = status


def _reason(exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, _ServerError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def pull_traccar(
    url: str,
    login: TraccarLogin,
    options: PullOptions,
    *,
    progress: Callable[[int, int, int], None] | None = None,
) -> TraccarPull:
    """Everything an export folder holds, from the server at url: devices, geofences, groups
    and every device's positions with since_ms <= fixTime < until_ms. progress(devices done,
    devices, positions so far) is called after each device."""
    async with TraccarClient(url, login, options) as client:
        devices = await client.get_list("/api/devices")
        geofences = await client.get_list("/api/geofences")
        groups = await _optional_list(client, "/api/groups")
        histories = await _pull_positions(client, devices, options, progress)
        export = TraccarExport(
            devices=devices,
            geofences=geofences,
            groups=groups,
            positions=[chunk for history in histories for chunk in history.chunks],
            origin=client.url,
        )
        return TraccarPull(
            export=export,
            requests=client.requests,
            windows_split=sum(h.pager.windows_split for h in histories),
        )


async def _optional_list(client: TraccarClient, path: str) -> list[dict]:
    """Groups are optional in an export; a user without access to them gets 403/404 there."""
    try:
        return await client.get_list(path)
    except TraccarAuthError:
        raise
    except TraccarPullError as exc:
        if exc.reason.startswith("404 "):
            return []
        raise


@dataclass
class _History:
    pager: DeviceHistoryPager
    chunks: list[PositionChunk] = field(default_factory=list)
    positions: int = 0


async def _pull_positions(
    client: TraccarClient,
    devices: list[dict],
    options: PullOptions,
    progress: Callable[[int, int, int], None] | None,
) -> list[_History]:
    histories = [
        _History(
            DeviceHistoryPager(int(d["id"]), options.since_ms, options.until_ms, options.limits)
        )
        for d in devices
        if isinstance(d, dict) and isinstance(d.get("id"), int)
    ]
    queue: asyncio.Queue[_History] = asyncio.Queue()
    for history in histories:
        queue.put_nowait(history)
    done = [0, 0]  # devices, positions

    async def worker() -> None:
        while not queue.empty():
            history = queue.get_nowait()
            await _page_device(client, history)
            done[0] += 1
            done[1] += history.positions
            if progress is not None:
                progress(done[0], len(histories), done[1])

    workers = [asyncio.create_task(worker()) for _ in range(max(1, options.concurrency))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return histories


async def _page_device(client: TraccarClient, history: _History) -> None:
    pager = history.pager
    try:
        while (window := pager.next_window()) is not None:
            try:
                positions = await client.get_list("/api/positions", window.query())
            except AnswerTooLarge as exc:
                pager.too_large(window, exc.why)
                log.info("traccar_window_split", extra=_window_fields(window, exc.why))
                continue
            if pager.received(window, len(positions)):
                if positions:
                    source = f"{client.url}/api/positions?{httpx.QueryParams(window.query())}"
                    history.chunks.append(PositionChunk(positions, source))
                    history.positions += len(positions)
            else:
                why = f"{len(positions)} positions"
                log.info("traccar_window_split", extra=_window_fields(window, why))
    except WindowTooLarge as exc:
        raise TraccarPullError(client.url, str(exc)) from None


def _window_fields(window: PositionWindow, why: str) -> dict[str, object]:
    return {
        "device": window.device_id,
        "from": traccar_time(window.start_ms),
        "to": traccar_time(window.end_ms - 1),
        "why": why,
    }
