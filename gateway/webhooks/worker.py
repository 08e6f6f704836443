"""The webhook delivery worker: one per deployment (under a lease, gateway/service.py), in the
gateway process, apart from ingestion: a slow or failing receiver holds back deliveries, never a
commit.

Each turn it numbers newly committed events into the outbox, loads what each enabled
subscription still has to receive, and records the answers with how far each subscription is
settled. Posting is done by `concurrency` lanes, long-lived tasks that each post one delivery at
a time over one pooled HTTP client (aiohttp, keep-alive per receiver), settle its answer and take
the next one the scheduler (outbound.Scheduler: ordered per vehicle per subscription, retries
with backoff) says is due; a lane with nothing due waits until the worker hands it one. A process
killed between a delivery and its record delivers it again after the restart: at least once,
with the same event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field

import aiohttp

from gateway.webhooks.metrics import WebhookMetrics
from gateway.webhooks.store import Attempt, OutboxStore, SubscriptionRow, outbound_event
from outbound import Delivery, OutboundEvent, RetryPolicy, Scheduler, Settled, Signer
from telemetry.store import StoreUnavailable, TelemetryStore

log = logging.getLogger(__name__)

USER_AGENT = "fleetgate-webhooks/1"
_RESPONSE_READ_LIMIT = 64 * 1024  # an answer's body beyond this is not read (the connection goes)


@dataclass(frozen=True)
class WebhookConfig:
    concurrency: int = 64  # requests in flight, all receivers together
    per_subscription: int = 32  # of which one subscription may hold at most this many
    timeout_s: float = 10.0  # a whole attempt: connect, send, answer
    poll_s: float = 0.2  # how often new commits are looked for
    # Settled attempts are recorded at most this often (one statement for all of them): fewer,
    # larger writes, and the settled points (a look at every queue) worked out less often.
    flush_s: float = 0.05
    backlog: int = 20_000  # deliveries held in memory per subscription (the rest wait in the db)
    sequence_batch: int = 5_000
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letters_s: float = 10.0  # how often the dead letters are counted
    retention_s: float = 7 * 86400.0  # delivered records and settled outbox rows kept (0: all)
    prune_every_s: float = 60.0


@dataclass
class _Sub:
    row: SubscriptionRow
    loaded_through: int  # outbox positions up to here are queued or settled
    signer: Signer = field(init=False)

    def __post_init__(self) -> None:
        self.signer = Signer(self.row.secret)  # a row's secret stays with its revision


@dataclass(eq=False)
class _Lane:
    """One of the worker's `concurrency` posting tasks, and the attempt it has in flight."""

    task: asyncio.Task | None = None
    started_at: float | None = None  # of the attempt in flight
    expired: bool = False  # that attempt was cancelled for taking longer than timeout_s
    handed: asyncio.Future | None = None  # while idle: resolved with the next work


class WebhookWorker:
    def __init__(
        self, store: TelemetryStore, config: WebhookConfig, metrics: WebhookMetrics
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._outbox = OutboxStore(store)
        self._scheduler = Scheduler(
            config.retry, random.Random(), per_subscription=config.per_subscription
        )
        self._subs: dict[str, _Sub] = {}
        self._top = 0  # the outbox's highest position
        self._wake = asyncio.Event()
        self._lanes: list[_Lane] = []
        self._idle: list[_Lane] = []  # lanes waiting for work, each on its `handed` future
        # The database work (a poll, or a flush of what was settled) runs beside the deliveries,
        # one piece at a time, so that posting never waits for a round trip to the database.
        self._database: asyncio.Task | None = None
        self._unrecorded: list[Attempt] = []
        self._disabled: dict[str, tuple[int, str]] = {}  # 410s not recorded yet
        self._next_poll = 0.0
        self._next_flush = 0.0
        self._next_dead_count = 0.0
        self._next_prune = 0.0
        self._database_back_at = 0.0  # after an outage: when to try again
        self._polled_last = False
        self._loaded_more = False  # a poll moved some loaded_through: the settled point may move
        self.turns = 0  # database turns done (readiness: the worker makes progress)
        # The counter's children, looked up once rather than for every delivery.
        self._counted = {
            outcome: metrics.deliveries.labels(outcome=outcome)
            for outcome in ("delivered", "failed", "dead_lettered", "gone")
        }

    async def run(self) -> None:
        """Deliver until cancelled. Database outages are waited out; anything else raises."""
        cfg = self.config
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.concurrency, ttl_dns_cache=60),
            # One timer per attempt (asyncio.timeout in _post) rather than two: aiohttp's own
            # total timeout cost ~15 us of CPU per request here.
            # No per-request timer at all: the worker's watchdog (_expire_overdue) cancels an
            # attempt past timeout_s; asyncio.timeout around each request cost ~20 us of CPU.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.timeout_s),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            auto_decompress=False,
            # A receiver's cookies are never sent back: no jar to fill and look up per request.
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as client:
            self._client = client
            for n in range(cfg.concurrency):
                lane = _Lane()
                lane.task = asyncio.create_task(self._run_lane(lane), name=f"webhook-lane-{n}")
                lane.task.add_done_callback(lambda _: self._wake.set())  # a lane never ends
                self._lanes.append(lane)
            try:
                while True:
                    expiry = self._expire_overdue()
                    self._start_due()
                    self._database_work()
                    await self._wait(expiry)
            finally:
                tasks = [lane.task for lane in self._lanes]
                tasks += [self._database] if self._database else []
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(Exception):
                    await asyncio.gather(*tasks, return_exceptions=True)

    async def _wait(self, expiry: float | None) -> None:
        now = time.time()
        until = self._next_poll if self._database is None else now + self.config.poll_s
        if self._database is None and (self._unrecorded or self._disabled or self._loaded_more):
            until = min(until, self._next_flush)
        due = self._scheduler.next_due_at()
        if due is not None and self._idle:
            until = min(until, due)
        if expiry is not None:
            until = min(until, expiry)
        self._wake.clear()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # comes as the wake-up does, and the worker would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, until - now)):
                await self._wake.wait()

    def _database_work(self) -> None:
        """Start the next piece of database work if none runs: a poll when one is due, else a
        flush of what was settled. Raises what the last piece failed with (but an outage)."""
        if self._database is not None:
            if not self._database.done():
                return
            done, self._database = self._database, None
            error = done.exception()
            if isinstance(error, StoreUnavailable):
                log.warning("webhooks_store_unavailable", extra={"error": str(error)[:300]})
                self._database_back_at = time.time() + 1.0
            elif error is not None:
                raise error
            else:
                self.turns += 1
        now = time.time()
        if now < self._database_back_at:
            return
        # What is settled moves only with a settlement or a poll that loaded more: no need to
        # look at every queue (_resolved) on every turn.
        to_flush = bool(self._unrecorded or self._disabled or self._loaded_more) and (
            now >= self._next_flush
        )
        # Poll and flush take turns when both wait, so that a slow database starves neither.
        if now >= self._next_poll and not (to_flush and self._polled_last):
            self._next_poll = now + self.config.poll_s
            self._polled_last = True
            self._database = asyncio.create_task(self._poll())
            oldest = self._scheduler.oldest_sequenced_at()  # once a poll: it looks at every queue
            self.metrics.lag_seconds.set(0.0 if oldest is None else max(0.0, now - oldest))
        elif to_flush:
            self._polled_last = False
            self._next_flush = now + self.config.flush_s
            # Taken together, with no await between: every settlement the resolved positions
            # reflect is in the records flushed with them.
            attempts, self._unrecorded = self._unrecorded, []
            disabled, self._disabled = self._disabled, {}
            self._loaded_more = False
            self._database = asyncio.create_task(self._flush(attempts, disabled, self._resolved()))
        else:
            return
        self._database.add_done_callback(lambda _: self._wake.set())

    async def _poll(self) -> None:
        await self._sequence()
        await self._sync_subscriptions()
        await self._load()
        if time.time() >= self._next_dead_count:
            self._next_dead_count = time.time() + self.config.dead_letters_s
            self.metrics.dead_letters.set(await self._outbox.dead_letters())
        if self.config.retention_s > 0 and time.time() >= self._next_prune:
            self._next_prune = time.time() + self.config.prune_every_s
            pruned, records = await self._outbox.prune(self.config.retention_s)
            if pruned or records:
                log.info("webhooks_pruned", extra={"outbox_rows": pruned, "records": records})

    async def _flush(
        self,
        attempts: list[Attempt],
        disabled: dict[str, tuple[int, str]],
        resolved: dict[str, tuple[int, int]],
    ) -> None:
        try:
            await self._outbox.record(attempts, resolved, disabled)
        except BaseException:
            self._unrecorded[:0] = attempts  # recorded with the next flush
            self._disabled = {**disabled, **self._disabled}
            self._loaded_more = True  # and the settled points with it
            raise
        for sub_id, (revision, through) in resolved.items():
            sub = self._subs.get(sub_id)
            if sub is not None and sub.row.revision == revision:
                sub.row = _with_resolved(sub.row, through)

    def _resolved(self) -> dict[str, tuple[int, int]]:
        """{subscription: (revision, settled through)} where that moved since it was stored."""
        resolved = {}
        for sub in self._subs.values():
            lowest = self._scheduler.lowest_position(sub.row.id)
            through = sub.loaded_through if lowest is None else lowest - 1
            if through != sub.row.resolved_through:
                resolved[sub.row.id] = (sub.row.revision, through)
        return resolved

    # --- the outbox and the subscriptions ---------------------------------------------------

    async def _sequence(self) -> None:
        while True:
            read, self._top = await self._outbox.sequence(self.config.sequence_batch)
            if read < self.config.sequence_batch:
                return

    async def _sync_subscriptions(self) -> None:
        rows = {r.id: r for r in await self._outbox.subscriptions()}
        for sub_id in list(self._subs):
            row = rows.get(sub_id)
            if row is None or not row.enabled or row.revision != self._subs[sub_id].row.revision:
                self._scheduler.drop(sub_id)  # deleted, disabled, or changed: reloaded below
                del self._subs[sub_id]
        for sub_id, row in rows.items():
            # One a 410 ended is not taken up again before its disabling is stored.
            if row.enabled and sub_id not in self._subs and sub_id not in self._disabled:
                self._subs[sub_id] = _Sub(row, row.resolved_through)

    async def _load(self) -> None:
        # Every subscription that gets an event shares one copy of it (its body above all).
        events: dict[int, OutboundEvent] = {}
        for sub in list(self._subs.values()):
            room = self.config.backlog - self._scheduler.queued_for(sub.row.id)
            if room <= 0 or sub.loaded_through >= self._top:
                continue
            rows = await self._outbox.to_deliver(sub.row, sub.loaded_through, self._top, room)
            if self._subs.get(sub.row.id) is not sub:
                continue  # ended by a 410 meanwhile
            for row in rows:
                event = events.get(row["position"])
                if event is None:
                    event = events[row["position"]] = outbound_event(row)
                delivery = Delivery(sub.row.id, event)
                if row["attempts"] is not None:  # waiting for a retry before the restart
                    delivery.failures = row["attempts"]
                    delivery.first_attempt_at = row["first_attempt_at"]
                    delivery.due_at = row["next_attempt_at"] or 0.0
                self._scheduler.add(delivery)
            sub.loaded_through = rows[-1]["position"] if len(rows) == room else self._top
            self._loaded_more = True

    # --- posting ----------------------------------------------------------------------------

    def _start_due(self) -> None:
        """Hand what is due to the idle lanes (busy lanes take the next one themselves)."""
        if not self._idle:
            return
        for delivery in self._scheduler.take_due(time.time(), len(self._idle)):
            lane = self._idle.pop()
            lane.handed.set_result((delivery, self._subs[delivery.subscription]))

    def _take_one(self) -> tuple[Delivery, _Sub] | None:
        for delivery in self._scheduler.take_due(time.time(), 1):
            return delivery, self._subs[delivery.subscription]
        return None

    def _expire_overdue(self) -> float | None:
        """Cancel the attempts in flight for longer than timeout_s (their lanes record them as
        timed out), and raise what a lane failed with. Returns when the next attempt in flight
        would be overdue. One look at the lanes per turn of the worker instead of a timer per
        request: an attempt ends between timeout_s and timeout_s + a turn (at most poll_s)
        after it began."""
        timeout_s = self.config.timeout_s
        overdue = time.time() - timeout_s
        earliest = None
        for lane in self._lanes:
            if lane.task.done():  # a lane never ends: the worker fails (and is started again)
                if lane.task.cancelled():
                    raise RuntimeError("a webhook lane was cancelled")
                raise lane.task.exception() or RuntimeError("a webhook lane ended")
            started = lane.started_at
            if started is None or lane.expired:
                continue
            if started <= overdue:
                lane.expired = True
                lane.task.cancel()
            elif earliest is None or started < earliest:
                earliest = started
        return None if earliest is None else earliest + timeout_s

    async def _run_lane(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        timed_out = f"no answer within {self.config.timeout_s:g} s"
        while True:
            work = self._take_one()
            if work is None:
                lane.handed = loop.create_future()
                self._idle.append(lane)
                try:
                    work = await lane.handed
                finally:
                    lane.handed = None
            delivery, sub = work
            lane.started_at, lane.expired = time.time(), False
            try:
                status, error = await self._post(sub, delivery)
            except asyncio.CancelledError:
                # Ours (the watchdog's) only when nothing else cancels the lane too.
                if not lane.expired or lane.task.uncancel() > 0:
                    raise
                status, error = None, timed_out
            else:
                if lane.expired:  # the request swallowed the watchdog's cancellation
                    lane.task.uncancel()
            finally:
                lane.started_at = None
            self._settle(delivery, status, error, time.time())

    async def _post(self, sub: _Sub, delivery: Delivery) -> tuple[int | None, str | None]:
        """One attempt: (HTTP status or None, why it failed or None)."""
        event = delivery.event
        sent_at = int(time.time())
        headers = {
            "Fleetgate-Event-Id": str(event.event_id),
            "Fleetgate-Event-Type": event.type,
            "Fleetgate-Timestamp": str(sent_at),
            "Fleetgate-Signature": sub.signer.sign(sent_at, event.body),
            "Fleetgate-Attempt": str(delivery.failures + 1),
        }
        try:
            async with self._client.post(
                sub.row.url, data=event.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                await _read_some(response)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return None, (f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__)
        return status, (None if 200 <= status < 300 else f"HTTP {status}")

    # --- settling and recording -------------------------------------------------------------

    def _settle(self, delivery: Delivery, status: int | None, error: str | None, at: float) -> None:
        """An answer, into the scheduler and the records."""
        settled = self._scheduler.settle(delivery, status, at)
        sub = self._subs.get(delivery.subscription)
        if settled is Settled.STALE or sub is None:
            return
        self._counted[_OUTCOME[settled]].inc()
        if not (self._unrecorded or self._disabled):
            self._wake.set()  # the first to record since the last flush: the worker flushes next
        if settled is Settled.GONE:
            reason = f"the receiver answered 410 at {at:.0f}"
            self._disabled[sub.row.id] = (sub.row.revision, reason)
            del self._subs[sub.row.id]
            log.warning("webhook_subscription_gone", extra={"subscription": sub.row.id})
            return
        self._unrecorded.append(_attempt(sub.row, delivery, settled, status, error, at))


async def _read_some(response: aiohttp.ClientResponse) -> None:
    """Read the answer's body up to _RESPONSE_READ_LIMIT, so that its connection can be used
    again; a longer one is not read further and its connection is closed."""
    read = 0
    while chunk := await response.content.readany():
        read += len(chunk)
        if read > _RESPONSE_READ_LIMIT:
            response.close()
            return


# The deliveries metric's outcome, and the record's state, of each settlement.
_OUTCOME = {
    Settled.DELIVERED: "delivered",
    Settled.RETRYING: "failed",
    Settled.DEAD: "dead_lettered",
    Settled.GONE: "gone",
}
_STATE = {Settled.DELIVERED: "delivered", Settled.RETRYING: "retrying", Settled.DEAD: "dead"}


def _attempt(
    sub: SubscriptionRow,
    delivery: Delivery,
    settled: Settled,
    status: int | None,
    error: str | None,
    at: float,
) -> Attempt:
    state = _STATE[settled]
    attempts = delivery.failures + (1 if settled is Settled.DELIVERED else 0)
    return Attempt(
        subscription=sub.id,
        revision=sub.revision,
        event=delivery.event,
        state=state,
        attempts=attempts,
        first_attempt_at=delivery.first_attempt_at or at,
        last_attempt_at=at,
        next_attempt_at=delivery.due_at if settled is Settled.RETRYING else None,
        status=status,
        error=None if settled is Settled.DELIVERED else error,
    )


def _with_resolved(row: SubscriptionRow, through: int) -> SubscriptionRow:
    return SubscriptionRow(
        row.id, row.url, row.secret, row.event_types, row.enabled, row.revision, through
    )
