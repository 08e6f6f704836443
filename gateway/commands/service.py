"""The command service: the IO shell around the sans-IO core (commands/) that the gateway and the
HTTP API hold; it implements commands.ports.CommandDispatcher. It owns the life cycle and
composes the parts, one job per module: memory (the open commands), commit (the transaction
every decision goes through), submission, results, dispatch (timers, retries), delivery (MQTT).

One dispatcher owns every vehicle's commands (see docs/commands.md for several processes). Per
vehicle one command is in flight, in submission order; the scheduler (commands.scheduler)
decides, this shell carries out: write the plan in one transaction, then publish, then tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry

from commands import machine
from commands._time import utc_now
from commands.errors import CommandNotFound, IdempotencyConflict, NotCancellable
from commands.model import Command, CommandRequest, CommandState, CommandType, DeviceResult
from gateway.commands.commit import Committer
from gateway.commands.config import CommandConfig
from gateway.commands.delivery import Deliveries
from gateway.commands.dispatch import Dispatcher
from gateway.commands.memory import OpenCommands, Waiters, without_finished
from gateway.commands.metrics import CommandMetrics
from gateway.commands.mqtt import CommandLink, InboundResult
from gateway.commands.reads import CommandReads
from gateway.commands.results import ResultIntake
from gateway.commands.store import CommandStore
from gateway.commands.submission import Submissions, new_command
from gateway.commands.vehicles import VehicleDirectory
from gateway.mqtt import ConnectOptions
from telemetry.store import StoreUnavailable, retry_while_unavailable

log = logging.getLogger(__name__)


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
        self._memory = OpenCommands()
        self._waiters = Waiters()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self.ready = asyncio.Event()
        self.link = CommandLink(
            ConnectOptions(
                config.mqtt_host,
                config.mqtt_port,
                config.mqtt_client_id,
                username=config.mqtt_username,
                password=config.mqtt_password,
                protocol=config.mqtt_protocol,
                keepalive_s=config.mqtt_keepalive_s,
                session_expiry_s=config.mqtt_session_expiry_s,
            ),
            topic_root=config.mqtt_topic_root,
            on_results=self._on_results,
            on_up=self._on_link_up,
            on_connected=lambda up: self.metrics.broker_connected.set(1 if up else 0),
        )
        self._deliveries = Deliveries(self.link)
        # The parts that use the store, put together by start() once it is open.
        self._vehicles: VehicleDirectory | None = None
        self._committer: Committer | None = None
        self._dispatcher: Dispatcher | None = None
        self._results: ResultIntake | None = None
        self._submissions: Submissions | None = None

    def _assemble(self, store: CommandStore) -> None:
        memory, metrics, clock = self._memory, self.metrics, self._clock
        self._vehicles = VehicleDirectory(store)
        self._committer = committer = Committer(
            store=store,
            memory=memory,
            waiters=self._waiters,
            deliveries=self._deliveries,
            metrics=metrics,
            delivery=self.config.delivery,
            interlocks=self.config.interlocks,
            pull=self._pull,
            clock=clock,
        )
        self._dispatcher = dispatcher = Dispatcher(
            store=store,
            memory=memory,
            committer=committer,
            deliveries=self._deliveries,
            metrics=metrics,
            recheck_s=self.config.recheck_s,
            clock=clock,
        )
        self._results = ResultIntake(
            store=store,
            memory=memory,
            committer=committer,
            metrics=metrics,
            acknowledge=self.link.acknowledge,
            reload=dispatcher.reload,
            clock=clock,
        )
        self._submissions = Submissions(memory, committer, dispatcher.reload)

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
        self._assemble(self._store)
        self._memory.load(await self._retry(self._store.open_commands))
        link = asyncio.create_task(self.link.run(self._stop), name="commands-mqtt")
        self._tasks.append(link)
        await self._until_subscribed(link, timeout)
        self._tasks += [
            asyncio.create_task(self._dispatcher.run(self._stop), name="commands-dispatch"),
            asyncio.create_task(self._results.run(self._stop), name="commands-results"),
            asyncio.create_task(self._submissions.run(self._stop), name="commands-submit"),
        ]
        self.ready.set()
        log.info(
            "commands_started",
            extra={
                "open_commands": len(self._memory.by_id),
                "client_id": self.config.mqtt_client_id,
            },
        )

    async def _until_subscribed(self, link: asyncio.Task, timeout: float) -> None:
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
        if self._vehicles is not None:
            await self._vehicles.close()
        if self._submissions is not None:
            # Not written: the callers may submit again (same key).
            self._submissions.fail_pending("the command service is stopping")

    async def _close_store(self) -> None:
        if self._owns_store and self._store is not None:
            await self._store.close()
            self._store = None

    @property
    def store(self) -> CommandStore:
        return self._store

    # --- the API (commands.ports.CommandDispatcher) -------------------------------------------

    async def submit(self, request: CommandRequest) -> Command:
        """Accept a command, or return the one this caller's idempotency key already made
        (IdempotencyConflict if that one was a different request); NotHeld while another
        platform holds the vehicle's command authority."""
        info = await self._vehicles.resolve(
            vehicle_ref=request.vehicle, device_id=request.device_id, vehicle_id=request.vehicle_id
        )
        cmd = new_command(request, info, self._clock(), self.config.default_ttl_s)
        if not self.ready.is_set():
            raise StoreUnavailable("the command service is not running")
        inserted = await self._submissions.write(cmd)
        if inserted is not None:
            self.metrics.submitted.labels(cmd.type.value).inc()
            return inserted
        return await self._made_before(request, cmd.request_hash)

    async def _made_before(self, request: CommandRequest, fingerprint: str) -> Command:
        """The command this caller's idempotency key made before, if it was the same request."""
        existing = await self._store.find(request.requested_by, request.idempotency_key)
        if existing is None:  # only if it was deleted in between
            raise CommandNotFound("the command of this idempotency key disappeared")
        if existing.request_hash != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {request.idempotency_key!r} of {request.requested_by!r} was "
                f"used for another request (command {existing.id}); use a new key"
            )
        return self._memory.by_id.get(existing.id, existing)

    async def get(self, command_id: uuid.UUID) -> Command:
        """The newest version: an open command from memory, else from the store."""
        cmd = self._memory.by_id.get(command_id)
        return cmd if cmd is not None else await super().get(command_id)

    async def _vehicle_id(self, vehicle_ref: str) -> int:
        return (await self._vehicles.resolve(vehicle_ref=vehicle_ref)).vehicle_id

    async def cancel(
        self, command_id: uuid.UUID, *, by: str | None = None, reason: str = "cancelled"
    ) -> Command:
        """Cancel a command not delivered yet (NotCancellable once it was sent or finished)."""
        cmd = await self.get(command_id)
        async with self._memory.locks.hold([cmd.vehicle_id]):
            cmd = self._memory.by_id.get(command_id)
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
            queue = without_finished(self._memory.queues.get(v, ()), [change])
            await self._committer.commit({v: queue}, [change])
        return change[0]

    async def wait(self, command_id: uuid.UUID, timeout: float) -> Command:
        """The command once it is final, or as it stands after timeout seconds (the HTTP API
        answers 200 or 202 accordingly)."""
        with self._waiters.waiting(command_id) as outcome:
            cmd = await self.get(command_id)
            if cmd.state.terminal:
                return cmd
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    return await outcome
            return await self.get(command_id)

    # --- hooks the gateway calls ----------------------------------------------------------------

    def on_batch_committed(self, batch, commit_ms: float | None = None) -> None:
        """Telemetry was committed (gateway on_committed): vehicles whose next command waits
        for a safe state or for the vehicle to come back are judged again."""
        if not self._memory.blocked or not len(batch):
            return
        hit = self._memory.blocked.intersection(np.unique(batch.vehicle).tolist())
        if hit:
            self._memory.touch(hit)

    def on_presence(self, vehicle_id: int, online: bool) -> None:
        """A vehicle's presence changed: on reconnect its waiting commands go out."""
        if vehicle_id in self._memory.queues:
            self._memory.touch([vehicle_id])

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
            for old in self._memory.queue(ch.vehicle):
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
        info = await self._vehicles.resolve(device_id=device_id)
        v = info.vehicle_id
        async with self._memory.locks.hold([v]):
            queue = self._memory.queue(v)
            if not queue:
                return None
            sent = await self._committer.commit({v: queue}, [], present=True)
        return sent[0].downlink() if sent else None

    async def record_result(self, device_id: str, payload: bytes) -> Command | None:
        """A result that came with a pull transport's uplink; returns the command after it, None
        for a result of a command nobody knows (expired and purged, or never sent), which is
        ignored as on MQTT."""
        await self._results.process([InboundResult(device_id, payload, None)])
        with contextlib.suppress(ValueError, CommandNotFound):
            return await self.get(DeviceResult.parse(payload).id)
        return None

    # --- the MQTT link's callbacks and helpers --------------------------------------------------

    def _on_results(self, items: list[InboundResult]) -> None:
        self._results.arrived(items)

    def _on_link_up(self) -> None:
        """Deliveries whose publish failed go out again (same id) now, not at their retry."""
        ids = self._deliveries.take_unpublished()
        if ids:
            self._spawn(self._dispatcher.resend(ids), "resend_unpublished")

    async def _retry(self, fn):
        def unavailable(exc: StoreUnavailable, retry_in_s: float) -> None:
            log.warning(
                "commands_database_unavailable",
                extra={"operation": getattr(fn, "__name__", "?"), "error": str(exc)[:300]},
            )

        return await retry_while_unavailable(fn, unavailable)

    def _spawn(self, coro, what: str) -> None:
        task = asyncio.create_task(coro, name=f"commands-{what}")
        self._background.add(task)

        def done(t: asyncio.Task) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("commands_task_failed", exc_info=t.exception(), extra={"task": what})

        task.add_done_callback(done)
