"""The command service: the IO shell around the sans-IO core. It accepts commands (idempotently),
persists every state change before relying on it, delivers over its own MQTT connection (or hands
commands to a pull transport), applies device results and wakes waiting callers.

One dispatcher owns every vehicle's commands (see docs/commands.md for several processes). Per
vehicle one command is in flight, in submission order; the scheduler (commands.scheduler)
decides, this module carries out: write the plan in one transaction, then publish, then tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from commands import machine
from commands._time import from_ms, to_ms, utc_now
from commands.errors import (
    CommandNotFound,
    IdempotencyConflict,
    InvalidDeadline,
    NotCancellable,
    UnknownVehicle,
)
from commands.interlocks import InterlockPolicy
from commands.metrics import CommandMetrics
from commands.model import (
    MAX_TTL_S,
    Command,
    CommandRequest,
    CommandState,
    CommandType,
    DeviceResult,
    HistoryEntry,
)
from commands.mqtt import CommandLink, InboundResult, command_client_id
from commands.reads import CommandReads
from commands.scheduler import DeliveryPolicy, Plan, plan_vehicle
from commands.store import CommandConflict, CommandStore, VehicleInfo
from telemetry.store import StoreUnavailable

log = logging.getLogger(__name__)

Change = tuple[Command, HistoryEntry]


@dataclass
class CommandConfig:
    database_url: str | None = None  # unless the service is given a CommandStore
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_client_id: str = "fleetgate-gw-1-cmd"
    mqtt_topic_root: str = "fg/v1"
    mqtt_protocol: int = 5
    mqtt_keepalive_s: int = 30
    mqtt_session_expiry_s: int = 7 * 86400
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    default_ttl_s: float = 60.0
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    interlocks: InterlockPolicy = field(default_factory=InterlockPolicy)
    recheck_s: float = 1.0  # held-back commands are judged again at least this often
    speed_cap_ttl_s: float = 300.0
    db_pool_max: int = 4

    @classmethod
    def from_gateway(cls, gw: Any, **overrides: Any) -> CommandConfig:
        """The commands' config next to a gateway.service.GatewayConfig (same broker, topic
        root, credentials and database; client id derived from the gateway's)."""
        return cls(
            **{
                "database_url": gw.database_url,
                "mqtt_host": gw.mqtt_host,
                "mqtt_port": gw.mqtt_port,
                "mqtt_client_id": command_client_id(gw.mqtt_client_id),
                "mqtt_topic_root": gw.mqtt_topic_root,
                "mqtt_protocol": gw.mqtt_protocol,
                "mqtt_keepalive_s": gw.mqtt_keepalive_s,
                "mqtt_session_expiry_s": gw.mqtt_session_expiry_s,
                "mqtt_username": gw.mqtt_username,
                "mqtt_password": gw.mqtt_password,
                **overrides,
            }
        )


class _VehicleLocks:
    """One asyncio lock per vehicle; several are taken in id order, so never in a cycle."""

    def __init__(self) -> None:
        self._locks: dict[int, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, vehicles: Iterable[int]) -> AsyncIterator[None]:
        taken: list[asyncio.Lock] = []
        try:
            for v in sorted(set(vehicles)):
                lock = self._locks.get(v)
                if lock is None:
                    lock = self._locks[v] = asyncio.Lock()
                await lock.acquire()
                taken.append(lock)
            yield
        finally:
            for lock in reversed(taken):
                lock.release()


def _apply(queue: Sequence[Command], changes: Iterable[Change]) -> list[Command]:
    """A vehicle's open commands after changes: newest versions, the finished ones gone."""
    final = {c.id: c for c, _ in changes}
    return [c for c in (final.get(c.id, c) for c in queue) if not c.state.terminal]


class CommandService(CommandReads):
    """Remote commands for the gateway and the HTTP API. `await start()`, then use it; `await
    stop()` leaves the broker cleanly (the session keeps results arriving meanwhile)."""

    def __init__(
        self,
        config: CommandConfig,
        *,
        store: CommandStore | None = None,
        registry: CollectorRegistry | None = REGISTRY,
        pull: Callable[[str], bool] = lambda device_id: False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.config = config
        self.metrics = CommandMetrics(registry)
        self._store = store
        self._owns_store = store is None
        self._pull = pull  # device ids served by pull delivery (sleeping CoAP devices)
        self._clock = clock
        self._locks = _VehicleLocks()
        self._queues: dict[int, list[Command]] = {}  # vehicle -> open commands, oldest first
        self._open: dict[uuid.UUID, Command] = {}  # id -> open command (newest version)
        self._waiters: dict[uuid.UUID, list[asyncio.Future]] = {}
        self._timers: list[tuple[float, int]] = []  # (when, vehicle) heap
        self._next_at: dict[int, float] = {}
        self._dirty: set[int] = set()
        self._blocked: set[int] = set()  # head held back (offline, unsafe): judged again on news
        self._wake = asyncio.Event()
        self._results: list[InboundResult] = []
        self._results_ready = asyncio.Event()
        self._submissions: list[tuple[Command, asyncio.Future]] = []
        self._submit_ready = asyncio.Event()
        self._unpublished: set[uuid.UUID] = set()
        self._vehicle_cache: dict[tuple[str, Any], tuple[float, VehicleInfo]] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self.ready = asyncio.Event()
        self.link = CommandLink(
            host=config.mqtt_host,
            port=config.mqtt_port,
            client_id=config.mqtt_client_id,
            topic_root=config.mqtt_topic_root,
            protocol=config.mqtt_protocol,
            keepalive_s=config.mqtt_keepalive_s,
            session_expiry_s=config.mqtt_session_expiry_s,
            username=config.mqtt_username,
            password=config.mqtt_password,
            on_results=self._on_results,
            on_up=self._on_link_up,
            on_connected=lambda up: self.metrics.broker_connected.set(1 if up else 0),
        )

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        """Open the store, reload the open commands, connect and subscribe; returns when the
        results subscription is in place (the dispatcher then starts)."""
        if self._store is None:
            self._store = await self._retry(
                lambda: CommandStore.open(
                    self.config.database_url, pool_max=self.config.db_pool_max
                )
            )
        for cmd in await self._retry(self._store.open_commands):
            self._queues.setdefault(cmd.vehicle_id, []).append(cmd)
            self._open[cmd.id] = cmd
        self._dirty.update(self._queues)
        link = asyncio.create_task(self.link.run(self._stop), name="commands-mqtt")
        self._tasks.append(link)
        try:
            async with asyncio.timeout(timeout):
                while not self.link.subscribed.is_set():
                    if link.done():
                        link.result()
                    await asyncio.wait(
                        {link, asyncio.ensure_future(self.link.subscribed.wait())},
                        return_when=asyncio.FIRST_COMPLETED,
                    )
        except TimeoutError:
            await self.abort()
            raise TimeoutError(
                f"commands: no MQTT subscription to {self.config.mqtt_host}:"
                f"{self.config.mqtt_port} within {timeout} s"
            ) from None
        self._tasks += [
            asyncio.create_task(self._dispatch_loop(), name="commands-dispatch"),
            asyncio.create_task(self._results_loop(), name="commands-results"),
            asyncio.create_task(self._submit_loop(), name="commands-submit"),
        ]
        self.ready.set()
        log.info(
            "commands_started",
            extra={"open_commands": len(self._open), "client_id": self.config.mqtt_client_id},
        )

    async def stop(self) -> None:
        """Stop dispatching, leave the broker cleanly, close the store if it is ours. A change
        being written is rolled back and redone by the next start; unacknowledged results come
        again from the broker session."""
        await self._halt()
        await self.link.disconnect()
        await self._close_store()

    async def abort(self) -> None:
        """Like a crash: drop the MQTT connection without DISCONNECT (tests)."""
        await self._halt()
        self.link.abort()
        await self._close_store()

    async def _halt(self) -> None:
        self._stop.set()
        self.ready.clear()
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            if task.get_name() != "commands-mqtt":
                task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        pending, self._submissions = self._submissions, []
        for _, fut in pending:  # not written: the callers may submit again (same key)
            if not fut.done():
                fut.set_exception(StoreUnavailable("the command service is stopping"))

    async def _close_store(self) -> None:
        if self._owns_store and self._store is not None:
            await self._store.close()
            self._store = None

    @property
    def store(self) -> CommandStore:
        return self._store

    # --- the API ------------------------------------------------------------------------------

    async def submit(self, request: CommandRequest) -> Command:
        """Accept a command, or return the one this caller's idempotency key already made
        (IdempotencyConflict if that one was a different request)."""
        info = await self._resolve(
            vehicle_ref=request.vehicle, device_id=request.device_id, vehicle_id=request.vehicle_id
        )
        now = self._clock()
        if request.deadline is not None:
            deadline = request.deadline
            if deadline <= now:
                raise InvalidDeadline(f"deadline {deadline.isoformat()} is in the past")
            if deadline - now > timedelta(seconds=MAX_TTL_S):
                raise InvalidDeadline(f"deadline is more than {MAX_TTL_S / 86400:.0f} days away")
        else:
            deadline = now + timedelta(seconds=request.ttl_s or self.config.default_ttl_s)
        deadline = from_ms(to_ms(deadline))  # the payload carries ms: keep both the same
        fingerprint = request.fingerprint(info.vehicle_id)
        cmd = Command(
            id=uuid.uuid4(),
            vehicle_id=info.vehicle_id,
            vehicle_ref=info.vehicle_ref,
            device_id=info.device_id,
            type=request.type,
            params=request.params,
            idempotency_key=request.idempotency_key,
            requested_by=request.requested_by,
            request_hash=fingerprint,
            on_unsafe=request.on_unsafe,
            created_at=now,
            deadline=deadline,
            updated_at=now,
        )
        if not self.ready.is_set():
            raise StoreUnavailable("the command service is not running")
        fut = asyncio.get_running_loop().create_future()
        self._submissions.append((cmd, fut))
        self._submit_ready.set()
        inserted = await fut
        if inserted is not None:
            self.metrics.submitted.labels(cmd.type.value).inc()
            return inserted
        existing = await self._store.find(request.requested_by, request.idempotency_key)
        if existing is None:  # only if it was deleted in between
            raise CommandNotFound("the command of this idempotency key disappeared")
        if existing.request_hash != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {request.idempotency_key!r} of {request.requested_by!r} was "
                f"used for another request (command {existing.id}); use a new key"
            )
        return self._open.get(existing.id, existing)

    async def get(self, command_id: uuid.UUID) -> Command:
        """The newest version: an open command from memory, else from the store."""
        cmd = self._open.get(command_id)
        return cmd if cmd is not None else await super().get(command_id)

    async def _vehicle_id(self, vehicle_ref: str) -> int:
        return (await self._resolve(vehicle_ref=vehicle_ref)).vehicle_id

    async def cancel(
        self, command_id: uuid.UUID, *, by: str | None = None, reason: str = "cancelled"
    ) -> Command:
        """Cancel a command not delivered yet (NotCancellable once it was sent or finished)."""
        cmd = await self.get(command_id)
        async with self._locks.hold([cmd.vehicle_id]):
            cmd = self._open.get(command_id)
            if cmd is None:
                cmd = await self.get(command_id)
                raise NotCancellable(
                    f"command {command_id} cannot be cancelled: it is {cmd.state.value} already"
                )
            if cmd.state.in_flight:
                raise NotCancellable(
                    f"command {command_id} was delivered to the vehicle "
                    f"({cmd.state.value}); it cannot be called back"
                )
            change = machine.transition(
                cmd,
                CommandState.CANCELLED,
                self._clock(),
                reason=reason,
                detail={"by": by} if by else None,
            )
            v = cmd.vehicle_id
            await self._commit({v: _apply(self._queues.get(v, ()), [change])}, [change])
        return change[0]

    async def _submit_loop(self) -> None:
        """New commands, as many as are waiting, together: one read of their vehicles' state,
        then one write (a single statement for a single command)."""
        while not self._stop.is_set():
            await self._submit_ready.wait()
            batch, self._submissions = self._submissions[:1000], self._submissions[1000:]
            if not self._submissions:
                self._submit_ready.clear()
            if not batch:
                continue
            vehicles = {cmd.vehicle_id for cmd, _ in batch}
            for attempt in range(2):
                try:
                    async with self._locks.hold(vehicles):
                        results = await self._commit(
                            {v: list(self._queues.get(v, ())) for v in vehicles},
                            [],
                            inserts=[cmd for cmd, _ in batch],
                        )
                except CommandConflict:
                    if attempt == 0:
                        await self._reload(vehicles)
                        continue
                    results = None
                    error: BaseException = CommandConflict("commands changed meanwhile; retry")
                except Exception as exc:  # StoreUnavailable included: the callers decide
                    results, error = None, exc
                break
            for i, (_, fut) in enumerate(batch):
                if fut.done():
                    continue  # the caller gave up waiting (the command may exist: same key)
                if results is None:
                    fut.set_exception(error)
                else:
                    fut.set_result(results[i])

    async def wait(self, command_id: uuid.UUID, timeout: float) -> Command:
        """The command once it is final, or as it stands after timeout seconds (the HTTP API
        answers 200 or 202 accordingly)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(fut)
        try:
            cmd = await self.get(command_id)
            if cmd.state.terminal:
                return cmd
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    return await fut
            return await self.get(command_id)
        finally:
            waiters = self._waiters.get(command_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    del self._waiters[command_id]

    # --- hooks the gateway calls ----------------------------------------------------------------

    def on_batch_committed(self, batch, commit_ms: float | None = None) -> None:
        """Telemetry was committed (gateway on_committed): vehicles whose next command waits
        for a safe state or for the vehicle to come back are judged again."""
        if not self._blocked or not len(batch):
            return
        hit = self._blocked.intersection(np.unique(batch.vehicle).tolist())
        if hit:
            self._dirty.update(hit)
            self._wake.set()

    def on_presence(self, vehicle_id: int, online: bool) -> None:
        """A vehicle's presence changed: on reconnect its waiting commands go out."""
        if vehicle_id in self._queues:
            self._dirty.add(vehicle_id)
            self._wake.set()

    def on_speed_caps(self, changes: list) -> None:
        """The geofence's slow-zone hook (geofence.SpeedCapChange list): set_speed_limit
        commands, submitted in the background."""
        if changes:
            self._spawn(self.submit_speed_caps(changes), "speed_caps")

    async def submit_speed_caps(self, changes: list) -> list[Command]:
        """One set_speed_limit per change; its idempotency key is derived from vehicle, zone and
        time, so a batch replayed after a crash makes no second command. A newer cap
        supersedes an older one of the same vehicle that was not delivered yet."""
        out = []
        for ch in changes:
            kph = ch.max_speed_kph
            if kph is not None:
                kph = min(max(float(kph), 5.0), 250.0)
            for old in list(self._queues.get(ch.vehicle, ())):
                if (
                    old.type is CommandType.SET_SPEED_LIMIT
                    and old.requested_by == "geofence"
                    and not old.state.in_flight
                ):
                    with contextlib.suppress(NotCancellable, CommandNotFound):
                        await self.cancel(old.id, by="geofence", reason="superseded")
            request = CommandRequest(
                vehicle_id=ch.vehicle,
                type=CommandType.SET_SPEED_LIMIT,
                params={"kph": kph},
                idempotency_key=f"speed_cap:{ch.vehicle}:{ch.zone_id or '-'}:{ch.time_ms}",
                requested_by="geofence",
                ttl_s=self.config.speed_cap_ttl_s,
            )
            out.append(await self.submit(request))
        return out

    # --- pull delivery (sleeping CoAP devices) --------------------------------------------------

    async def take_pending_for(self, device_id: str) -> dict | None:
        """The downlink to piggyback on a device's uplink response, marked sent; None if it has
        nothing due. An in-flight command without an answer is handed over again (same id)."""
        info = await self._resolve(device_id=device_id)
        v = info.vehicle_id
        async with self._locks.hold([v]):
            queue = list(self._queues.get(v, ()))
            if not queue:
                return None
            sent = await self._commit({v: queue}, [], present=True)
        return sent[0].downlink() if sent else None

    async def record_result(self, device_id: str, payload: bytes) -> Command | None:
        """A result that came with a pull transport's uplink; returns the command after it."""
        await self._process_results([InboundResult(device_id, payload, None)])
        with contextlib.suppress(ValueError):
            return await self.get(DeviceResult.parse(payload).id)
        return None

    # --- the transaction every decision goes through ----------------------------------------

    async def _commit(
        self,
        queues: dict[int, list[Command]],
        decided: list[Change],
        *,
        inserts: Sequence[Command] = (),
        present: bool = False,
    ) -> Any:
        """Persist and carry out decisions about some vehicles, whose locks the caller holds.
        `queues` are their open commands with `decided` (changes made already: results, a
        cancel) applied; each vehicle with open commands is planned (commands.scheduler).

        inserts: new commands, each for the end of its vehicle's queue; returns each as
        planned, or None where its idempotency key is taken (nothing of it is written then).
        present: a pull device is talking to us now; returns the commands to hand it.

        Atomically: the writes already decided, the vehicles' snapshots (seeing those writes),
        the plans' writes. When nothing decided must be seen first, the snapshots are read
        before and everything is written at once, often in one statement. Then memory,
        publish, waiters.
        """
        if decided and inserts:
            raise ValueError("new commands and decided changes are committed separately")
        now = self._clock()
        for cmd in inserts:
            queues[cmd.vehicle_id] = [*queues.get(cmd.vehicle_id, ()), cmd]
        busy = [v for v, q in queues.items() if q]

        def plan_all(snaps: dict) -> dict[int, Plan]:
            plans: dict[int, Plan] = {v: Plan() for v in queues}
            for v in busy:
                queue, snap = queues[v], snaps.get(v)
                pull = self._pull(queue[0].device_id)
                if present and snap is not None:
                    snap = replace(snap, online=True)
                plans[v] = plan_vehicle(
                    queue,
                    snap,
                    now,
                    delivery=self.config.delivery,
                    interlocks=self.config.interlocks,
                    push=present or not pull,
                )
                if present:
                    _hand_over_again(plans[v], queue, now)
            return plans

        results: list[Command | None] = []
        new_ids = {c.id for c in inserts}
        if decided and busy:
            async with self._store.transaction() as tx:
                # Read after what is decided: the interlocks see the answers just written.
                plans = plan_all(await tx.write(decided, then_snapshots=busy))
                await tx.write([c for p in plans.values() for c in p.changes])
            stored_inserts: list[Command | None] = []
        else:
            # Nothing written yet that the interlocks must see: judge, then write once. A new
            # command is inserted in the state its plan gives it, with that history.
            plans = plan_all(await self._store.snapshots(busy) if busy else {})
            planned = {c.id: (c, [machine.created(c)]) for c in inserts}
            for p in plans.values():
                for cmd, entry in p.changes:
                    if cmd.id in planned:
                        planned[cmd.id] = (cmd, [*planned[cmd.id][1], entry])
            changes = [
                *decided,
                *(c for p in plans.values() for c in p.changes if c[0].id not in new_ids),
            ]
            stored_inserts = await self._store.apply(list(planned.values()), changes)
        for new, stored in zip(inserts, stored_inserts):
            v, plan = new.vehicle_id, plans[new.vehicle_id]
            if stored is None:  # its key was taken: forget it, judge the rest again
                queues[v] = [c for c in queues[v] if c.id != new.id]
                plan.changes = [c for c in plan.changes if c[0].id != new.id]
                plan.send = [c for c in plan.send if c.id != new.id]
                self._dirty.add(v)
                self._wake.set()
                results.append(None)
                continue
            queues[v] = [
                c.model_copy(update={"seq": stored.seq}) if c.id == new.id else c for c in queues[v]
            ]
            _set_seq(plan, new.id, stored.seq)
            results.append(planned[new.id][0].model_copy(update={"seq": stored.seq}))
        self._adopt(queues, decided, plans, publish=not present)
        if present:
            return [c for p in plans.values() for c in p.send]
        return results

    def _adopt(
        self,
        queues: dict[int, list[Command]],
        decided: list[Change],
        plans: dict[int, Plan],
        publish: bool = True,
    ) -> None:
        """Committed: make memory say what the database says, then act on it."""
        for v, queue in queues.items():
            plan = plans[v]
            for c in queue:
                self._open.pop(c.id, None)
            remaining = _apply(queue, plan.changes)
            if remaining:
                self._queues[v] = remaining
                self._open.update((c.id, c) for c in remaining)
            else:
                self._queues.pop(v, None)
            if plan.blocked and remaining:
                self._blocked.add(v)
            else:
                self._blocked.discard(v)
            if plan.wake_at is not None:
                self._schedule(v, plan.wake_at)
        for cmd, entry in [*decided, *(c for p in plans.values() for c in p.changes)]:
            self._account(cmd, entry)
            if cmd.state.terminal:
                self._open.pop(cmd.id, None)
                self._unpublished.discard(cmd.id)
                for fut in self._waiters.get(cmd.id, ()):
                    if not fut.done():
                        fut.set_result(cmd)
        if publish:
            for plan in plans.values():
                for cmd in plan.send:
                    self._publish(cmd)

    def _account(self, cmd: Command, entry: HistoryEntry) -> None:
        m, t = self.metrics, cmd.type.value
        if entry.from_state is not None and entry.from_state.terminal:
            return  # a note on a finished command (late answer)
        if (
            entry.to_state is CommandState.WAITING_FOR_SAFE_STATE
            and entry.from_state is not CommandState.WAITING_FOR_SAFE_STATE
        ):
            m.interlock_waits.labels(t, entry.reason or "").inc()
        if entry.to_state is CommandState.SENT or entry.reason == "retry":
            m.deliveries.labels("first" if cmd.attempts == 1 else "retry").inc()
        if cmd.state.terminal:
            m.finished.labels(t, cmd.state.value).inc()
            if (
                entry.from_state is not None
                and entry.from_state.in_flight
                and cmd.device_status is not None
            ):
                m.round_trip.labels(t).observe(
                    max((cmd.finished_at - cmd.created_at).total_seconds(), 0.0)
                )

    def _publish(self, cmd: Command) -> None:
        fut = self.link.publish(cmd.device_id, orjson.dumps(cmd.downlink()))
        if fut is None:
            self._unpublished.add(cmd.id)
            return
        self._unpublished.discard(cmd.id)

        def done(f: asyncio.Future, cid=cmd.id) -> None:
            if f.cancelled() or f.exception() is not None:
                self._unpublished.add(cid)  # handed over again when the link is back

        fut.add_done_callback(done)

    def _on_link_up(self) -> None:
        """Deliveries whose publish failed go out again (same id) now, not at their retry."""
        if self._unpublished:
            ids, self._unpublished = self._unpublished, set()
            self._spawn(self._resend(ids), "resend_unpublished")

    async def _resend(self, ids: set[uuid.UUID]) -> None:
        by_vehicle: dict[int, list[uuid.UUID]] = {}
        for cid in ids:
            cmd = self._open.get(cid)
            if cmd is not None and cmd.state.in_flight:
                by_vehicle.setdefault(cmd.vehicle_id, []).append(cid)
        if not by_vehicle:
            return
        async with self._locks.hold(by_vehicle):
            now = self._clock()
            again = [
                machine.resend(self._open[cid], now)
                for cids in by_vehicle.values()
                for cid in cids
                if cid in self._open and self._open[cid].state.in_flight
            ]
            queues = {v: _apply(self._queues.get(v, ()), again) for v in by_vehicle}
            await self._commit(queues, again)
        for cmd, _ in again:
            self._publish(cmd)

    # --- device results ---------------------------------------------------------------------

    def _on_results(self, items: list[InboundResult]) -> None:
        self._results.extend(items)
        self._results_ready.set()

    async def _results_loop(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            await self._results_ready.wait()
            items = self._results[:5000]
            try:
                await self._process_results(items)
                backoff = 0.2
            except StoreUnavailable as exc:
                self.metrics.db_errors.labels("unavailable").inc()
                log.warning(
                    "commands_database_unavailable",
                    extra={"operation": "results", "error": str(exc)[:300], "retry_in_s": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except CommandConflict as exc:
                log.warning("commands_conflict", extra={"error": str(exc)[:300]})
                await self._reload(None)
                continue
            except Exception:
                # A result the code cannot handle must not block the ones behind it forever.
                log.exception("commands_results_failed", extra={"results": len(items)})
            del self._results[: len(items)]
            self.link.acknowledge(i.token for i in items if i.token is not None)
            if not self._results:
                self._results_ready.clear()

    async def _process_results(self, items: list[InboundResult]) -> None:
        parsed: list[tuple[str, DeviceResult]] = []
        for item in items:
            try:
                result = DeviceResult.parse(item.payload)
            except ValueError as exc:
                self.metrics.results.labels("invalid").inc()
                log.warning(
                    "command_result_invalid",
                    extra={"device_id": item.device_id, "error": str(exc)[:200]},
                )
                continue
            if not item.device_id:
                self.metrics.results.labels("invalid").inc()
                continue
            parsed.append((item.device_id, result))
        if not parsed:
            return
        vehicles = {self._open[r.id].vehicle_id for _, r in parsed if r.id in self._open}
        async with self._locks.hold(vehicles):
            queues = {v: list(self._queues.get(v, ())) for v in vehicles}
            current = {c.id: c for q in queues.values() for c in q}
            missing = {r.id for _, r in parsed if r.id not in current}
            stored = await self._store.get_many(missing) if missing else {}
            now = self._clock()
            decided: list[Change] = []
            for device_id, result in parsed:
                cmd = current.get(result.id) or stored.get(result.id)
                kind = self._result_kind(cmd, device_id, result)
                if kind is None:
                    change = machine.apply_result(cmd, result, now)
                    if change is None:
                        kind = "duplicate"
                    else:
                        decided.append(change)
                        kind = (
                            "late"
                            if cmd.state.terminal
                            else "ack"
                            if change[0].state is CommandState.ACKNOWLEDGED
                            else "applied"
                        )
                        if cmd.id in current:
                            current[cmd.id] = change[0]
                        else:
                            stored[cmd.id] = change[0]
                        if kind == "late":
                            log.warning(
                                "command_late_result",
                                extra={
                                    "command_id": str(cmd.id),
                                    "state": cmd.state.value,
                                    "device_status": result.status,
                                    "device_reason": result.reason,
                                },
                            )
                self.metrics.results.labels(kind).inc()
            if decided:
                await self._commit({v: _apply(q, decided) for v, q in queues.items()}, decided)

    def _result_kind(self, cmd: Command | None, device_id: str, result: DeviceResult) -> str | None:
        """Why a result is not applied, or None to apply it."""
        if cmd is None:
            log.info(
                "command_result_unknown",
                extra={"device_id": device_id, "command_id": str(result.id)},
            )
            return "unknown"
        if cmd.device_id != device_id:
            log.warning(
                "command_result_foreign",
                extra={
                    "device_id": device_id,
                    "command_id": str(cmd.id),
                    "addressed_to": cmd.device_id,
                },
            )
            return "foreign"
        if not cmd.state.terminal and cmd.id not in self._open:
            return "foreign"  # open, but another dispatcher's (several processes, later)
        return None

    # --- the dispatcher: timers, presence, state changes ---------------------------------------

    async def _dispatch_loop(self) -> None:
        backoff = 0.2
        last_recheck = time.monotonic()
        while not self._stop.is_set():
            now_ts = self._clock().timestamp()
            due = set()
            while self._timers and self._timers[0][0] <= now_ts:
                at, v = heapq.heappop(self._timers)
                if self._next_at.get(v) == at:
                    del self._next_at[v]
                due.add(v)
            if time.monotonic() - last_recheck >= self.config.recheck_s:
                last_recheck = time.monotonic()
                due |= self._blocked
                self._update_gauges()
            vehicles = (self._dirty | due) & self._queues.keys()
            self._dirty.clear()
            if vehicles:
                try:
                    await self._replan(vehicles)
                    backoff = 0.2
                except StoreUnavailable as exc:
                    self._dirty |= vehicles
                    self.metrics.db_errors.labels("unavailable").inc()
                    log.warning(
                        "commands_database_unavailable",
                        extra={
                            "operation": "dispatch",
                            "error": str(exc)[:300],
                            "retry_in_s": backoff,
                        },
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except CommandConflict as exc:
                    log.warning("commands_conflict", extra={"error": str(exc)[:300]})
                    await self._reload(vehicles)
                    self._dirty |= vehicles
                except Exception:
                    log.exception("commands_dispatch_failed")
                    await asyncio.sleep(1.0)
                continue
            timeout = self.config.recheck_s
            if self._timers:
                timeout = min(timeout, max(self._timers[0][0] - now_ts, 0.0))
            self._wake.clear()
            if self._dirty:
                continue
            # (asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and stop() would wait for this loop forever.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _replan(self, vehicles: set[int]) -> None:
        for chunk in _chunks(sorted(vehicles), 500):
            async with self._locks.hold(chunk):
                await self._commit(
                    {v: list(self._queues[v]) for v in chunk if v in self._queues}, []
                )

    def _schedule(self, vehicle: int, at: datetime) -> None:
        ts = at.timestamp()
        current = self._next_at.get(vehicle)
        if current is not None and current <= ts:
            return
        self._next_at[vehicle] = ts
        heapq.heappush(self._timers, (ts, vehicle))
        if current is None or ts < current:
            self._wake.set()

    async def _reload(self, vehicles: Iterable[int] | None) -> None:
        """Memory lost track (a conflicting change): read the open commands again."""
        fresh = await self._store.open_commands(vehicles)
        targets = set(self._queues) if vehicles is None else set(vehicles)
        async with self._locks.hold(targets | {c.vehicle_id for c in fresh}):
            for v in targets:
                for c in self._queues.pop(v, ()):
                    self._open.pop(c.id, None)
            for c in fresh:
                self._queues.setdefault(c.vehicle_id, []).append(c)
                self._open[c.id] = c
            self._dirty.update(c.vehicle_id for c in fresh)
        self._wake.set()

    def _update_gauges(self) -> None:
        counts = {s: 0 for s in CommandState if not s.terminal}
        for c in self._open.values():
            counts[c.state] += 1
        for s, n in counts.items():
            self.metrics.open.labels(s.value).set(n)

    # --- helpers --------------------------------------------------------------------------------

    async def _resolve(
        self,
        *,
        vehicle_ref: str | None = None,
        device_id: str | None = None,
        vehicle_id: int | None = None,
    ) -> VehicleInfo:
        key = (
            ("ref", vehicle_ref)
            if vehicle_ref is not None
            else ("device", device_id)
            if device_id is not None
            else ("id", vehicle_id)
        )
        hit = self._vehicle_cache.get(key)
        # Cached briefly: a TCU swap (new device_id) is seen within half a minute.
        if hit is not None and time.monotonic() - hit[0] < 30.0:
            return hit[1]
        info = await self._store.vehicle(
            vehicle_ref=vehicle_ref, device_id=device_id, vehicle_id=vehicle_id
        )
        if info is None:
            raise UnknownVehicle(f"no vehicle with {key[0]} {key[1]!r} in the registry")
        self._vehicle_cache[key] = (time.monotonic(), info)
        return info

    async def _retry(self, fn):
        backoff = 0.5
        while True:
            try:
                return await fn()
            except StoreUnavailable as exc:
                log.warning(
                    "commands_database_unavailable",
                    extra={"operation": getattr(fn, "__name__", "?"), "error": str(exc)[:300]},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _spawn(self, coro, what: str) -> None:
        task = asyncio.create_task(coro, name=f"commands-{what}")
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("commands_task_failed", exc_info=t.exception(), extra={"task": what})

        task.add_done_callback(done)


def _set_seq(plan: Plan, command_id: uuid.UUID, seq: int) -> None:
    """The seq the database gave a new command, on the plan's copies of it."""

    def fix(c: Command) -> Command:
        return c.model_copy(update={"seq": seq}) if c.id == command_id else c

    plan.changes = [(fix(c), e) for c, e in plan.changes]
    plan.send = [fix(c) for c in plan.send]


def _hand_over_again(plan: Plan, queue: list[Command], now: datetime) -> None:
    """Pull delivery: the device is here now; an in-flight head it has not answered is handed
    over again (same id; the device answers an id it knows with its earlier result)."""
    if plan.send:
        return
    remaining = _apply(queue, plan.changes)
    if remaining and remaining[0].state.in_flight and now < remaining[0].deadline:
        again = machine.resend(remaining[0], now)
        plan.changes.append(again)
        plan.send.append(again[0])


def _chunks(items: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
