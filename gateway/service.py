"""The gateway process: store, registry, pipeline, MQTT ingress and housekeeping, wired together.

`Gateway.run()` serves until `stop()`; stopping stops reading from the broker, commits and
acknowledges what is pending, then leaves the broker cleanly. Several processes can serve one
broker and database (docs/deployment.md): vehicles moving between them are continued from the
stored state (gateway/handover.py), and one of them runs the command dispatcher
(gateway/dispatcher_lease.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry

from gateway.coap import CoapIngress
from gateway.commands import CommandConfig, CommandService
from gateway.dispatcher_lease import DispatcherLease, LeaseLost
from gateway.handover import StateHandover
from gateway.metrics import GatewayMetrics
from gateway.mqtt import ConnectOptions
from gateway.mqtt_ingress import DrainError, MqttIngress, read_broker_version
from gateway.pipeline import DeviceRegistry, IngestPipeline, PipelineLimits
from gateway.stages import AlarmStage, BatteryStage, GeofenceStage, TripStage
from gateway.trips import TripMeasurer
from gateway.webhooks import WebhookConfig, WebhookMetrics
from gateway.webhooks.process import WebhookProcess
from gateway.webhooks.runner import WebhookRunner
from geofence import Hysteresis, SpeedCapChange
from telemetry.batch import TelemetryBatch
from telemetry.decoder import TimeLimits
from telemetry.dialect import Dialect
from telemetry.plausibility import PlausibilityFilter
from telemetry.store import (
    DeviceCredentials,
    StoreUnavailable,
    TelemetryStore,
    retry_while_unavailable,
)
from telemetry.vehicle_types import PLAUSIBLE_SPEED_KMH

log = logging.getLogger(__name__)


def _tune_gc(young_threshold: int | None) -> None:
    """Let the cyclic garbage collector's young generation grow to young_threshold objects
    (Python's default: 700) before a pass. Each message makes a few short-lived container
    objects (its packet, its Inbound, its decoded sample) that reference counting frees, yet each
    allocation counts towards the next pass, and every pass walks all young survivors: the
    messages pending for the next batch, thousands of them. At 700 that cost the gateway 3-4 µs
    of CPU per sample (benchmarks/README.md, *Ingest against the ceiling*); at 50,000 a pass comes
    every ~50,000 allocations and a full collection seldom. The process makes no cycles to speak
    of per message, so memory does not grow for it. Never lowers a larger threshold."""
    if young_threshold is None:
        return
    young, middle, old = gc.get_threshold()
    if young < young_threshold:
        gc.set_threshold(young_threshold, middle, old)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 16 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Let glibc's malloc keep the memory a batch frees for the next batch (False where the C
    library is not glibc's: nothing changed). By default an allocation from 128 KiB up is a
    fresh mapping, and freed memory above the heap's top is given back to the system: each batch
    of 5,000 samples allocates and frees some megabytes of numpy arrays and bytes (COPY streams,
    columns), and every page of them was faulted in afresh, ~700 faults and 1.4 ms of CPU per
    3 MB on this machine kind against 0.04 ms reused (benchmarks/README.md, *Write path*).
    Allocations below mmap_threshold now come from the heap, and up to trim_threshold of freed
    memory stays in the process (its resident size keeps that much above its live data)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not a C library with mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


class GatewayFailed(RuntimeError):
    """A task the gateway depends on ended: the process must exit and be restarted."""


@dataclass
class GatewayConfig:
    database_url: str
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_client_id: str = "fleetgate-gw-1"
    mqtt_topic_root: str = "fg/v1"
    mqtt_shared_group: str = ""  # plain subscriptions: see Settings.mqtt_shared_group
    # Payload dialects of legacy devices read beside the native topics (telemetry.dialect).
    mqtt_dialects: tuple[Dialect, ...] = ()
    mqtt_protocol: int = 5
    mqtt_keepalive_s: int = 30
    mqtt_session_expiry_s: int = 7 * 86400
    mqtt_receive_maximum: int = 65535
    # After a read that found the socket nearly empty, leave it unread this long (MqttClient
    # read_gather_s; FLEETGATE_MQTT_READ_GATHER_MS). Measured with the machine otherwise idle
    # (benchmarks/README.md): at a steady 30,000 samples/s, 0.004 took 11.6 µs of CPU a sample
    # against 13.4-14.5 and kept p99 at 178-249 ms; at the max rate it cost 5-13 % of the
    # throughput (the queue is read later, batches come out smaller). A fleet sending well
    # below its gateway's capacity gains from it; off by default, since it trades peak
    # throughput (what catching up after an outage needs) and two pairs on one machine kind are
    # all that measured it.
    mqtt_read_gather_s: float = 0.0
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    limits: PipelineLimits = field(default_factory=PipelineLimits)
    time_limits: TimeLimits = field(default_factory=TimeLimits)
    # Plausibility limits by vehicle type id overriding the type's own (from its form factor).
    max_speed_kmh: dict[str, float] = field(default_factory=dict)
    presence_timeout_s: float = 300.0
    comms_lost_s: float = 3600.0  # silence after which vehicle.comms_lost is announced
    registry_refresh_s: float = 60.0
    maintenance_interval_s: float = 3600.0
    db_pool_max: int = 4
    zones_refresh_s: float = 2.0
    # CoAP ingress (sleeping NB-IoT devices); off unless asked for, so that tests and benchmarks
    # of the MQTT path bind no UDP port.
    coap_enabled: bool = False
    coap_host: str = "127.0.0.1"
    coap_port: int = 5683
    coap_response_timeout_s: float = 5.0
    coap_retry_after_s: int = 30
    # Remote commands (commands.CommandService with its own MQTT session). Among processes on
    # one database only the holder of the dispatcher lease runs it; the others stand by.
    commands_enabled: bool = True
    commands_lease_check_s: float = 2.0
    command_overrides: dict = field(default_factory=dict)  # CommandConfig fields
    # Send set_speed_limit when a vehicle enters or leaves a zone with maximum_speed_kph.
    speed_caps_enabled: bool = False
    geofence_margin_m: float = 10.0
    geofence_fixes: int = 2
    fleet_gauges_s: float = 15.0  # how often fleetgate_devices_online is counted
    trips_measure_s: float = 1.0  # how often closed or late-updated trips are measured
    # Webhook deliveries (docs/webhooks.md): one worker per deployment, under a lease of its own.
    webhooks_enabled: bool = False
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    # The worker's own process (`fleetgate webhooks worker --supervised`, gateway/webhooks/
    # process.py), started and supervised by this one; None: the worker runs in this process.
    webhooks_command: list[str] | None = None
    # Drain mode (`fleetgate drain`): store what the broker holds for mqtt_client_id's session
    # (a process retired for good), end that session and stop. No commands, no CoAP.
    drain: bool = False
    # The cyclic garbage collector's young-generation threshold for this process (None: leave
    # it as it is): see _tune_gc.
    gc_young_threshold: int | None = 50_000

    @property
    def mqtt(self) -> ConnectOptions:
        """The broker and this process's CONNECT parameters (its ingress session's)."""
        return ConnectOptions(
            self.mqtt_host,
            self.mqtt_port,
            self.mqtt_client_id,
            username=self.mqtt_username,
            password=self.mqtt_password,
            protocol=self.mqtt_protocol,
            keepalive_s=self.mqtt_keepalive_s,
            session_expiry_s=self.mqtt_session_expiry_s,
            receive_maximum=self.mqtt_receive_maximum,
        )


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        registry: CollectorRegistry | None = REGISTRY,
        on_committed: Callable[[TelemetryBatch, float], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = GatewayMetrics(registry)
        self._on_committed = on_committed
        self._stop = asyncio.Event()
        self.store: TelemetryStore | None = None
        self.pipeline: IngestPipeline | None = None
        self.ingress: MqttIngress | None = None
        self.geofence: GeofenceStage | None = None
        self.battery: BatteryStage | None = None
        self.alarms: AlarmStage | None = None
        self.trips: TripStage | None = None
        self.trip_measurer: TripMeasurer | None = None
        self.coap: CoapIngress | None = None
        self.commands: CommandService | None = None
        # The slow-zone hook: speed-limit changes from the geofence core (commands layer).
        self.on_speed_caps: Callable[[list[SpeedCapChange]], None] | None = None
        self.handover: StateHandover | None = None
        self.lease: DispatcherLease | None = None
        self.ready = asyncio.Event()
        # Drain mode: what the drain did, or why the session could not be drained.
        self.drain_report: dict | None = None
        self.drain_error: str | None = None
        # Why the gateway stopped serving on its own (a task it needs ended); None while well.
        self.failure: str | None = None
        # Called with the vehicles whose stored state a commit changed (the API's live feed).
        self.change_listeners: list[Callable[[set[int]], None]] = []
        # Called with the CommandService when this process starts dispatching, None when it
        # stops (the API's commands routes, CoAP pull delivery follow it).
        self.commands_listeners: list[Callable[[CommandService | None], None]] = []
        # Since when this process has listened without a break (monotonic), for presence expiry.
        self._listening_since: float | None = None
        self._commands_collector = _CommandMetrics()
        self.webhook_metrics = WebhookMetrics(registry)
        self.webhooks: WebhookRunner | WebhookProcess | None = None
        if registry is not None:
            registry.register(self._commands_collector)

    async def run(self) -> None:
        """Serve until stop(); raises GatewayFailed when a task it needs ends sooner."""
        _tune_gc(self.config.gc_young_threshold)
        keep_freed_memory()
        self.store = await self._open_store()
        tasks: _Tasks | None = None
        try:
            registry, plausibility = await self._load_registry()
            await self._retry(self._maintain)  # partitions ahead, retention, TimescaleDB jobs
            await self._start_commands_unless_dispatched_elsewhere()
            await self._load_cores(registry, plausibility)
            self._connect_pipeline(registry, plausibility)
            await self._start_transports()
            tasks = self._start_tasks(registry)
            self.ready.set()
            await self._serve_until_stopped(tasks.needed)
            await self._stop_gracefully(tasks)
        finally:
            await self._clean_up(tasks)

    # --- the steps of run(), in order -------------------------------------------------------

    async def _open_store(self) -> TelemetryStore:
        def unavailable(exc: StoreUnavailable, retry_in_s: float) -> None:
            self.metrics.db_up.set(0)
            log.warning(
                "database_unavailable",
                extra={"operation": "open", "error": str(exc)[:300], "retry_in_s": retry_in_s},
            )

        cfg = self.config
        store = await retry_while_unavailable(
            lambda: TelemetryStore.open(cfg.database_url, pool_max=cfg.db_pool_max), unavailable
        )
        self.metrics.db_up.set(1)  # it stayed 0 after an outage at start until a write failed
        return store

    async def _load_registry(self) -> tuple[DeviceRegistry, PlausibilityFilter]:
        """The devices, and each vehicle's last fix (the plausibility filter continues from it)."""
        cfg, store = self.config, self.store
        plausibility = PlausibilityFilter(
            default_max_speed_kmh=max([PLAUSIBLE_SPEED_KMH["other"], *cfg.max_speed_kmh.values()])
        )
        registry = DeviceRegistry(store, plausibility, cfg.max_speed_kmh)
        await self._retry(registry.refresh)
        vehicles, t, lat, lon = await self._retry(store.load_last_fixes)
        plausibility.restore(vehicles, t, lat, lon)
        return registry, plausibility

    async def _start_commands_unless_dispatched_elsewhere(self) -> None:
        """Among processes on one database only the holder of the dispatcher lease runs the
        commands; the others stand by (and take over: _hold_dispatcher_lease)."""
        cfg = self.config
        if not cfg.commands_enabled or cfg.drain:
            return
        self.lease = DispatcherLease(cfg.database_url, check_s=cfg.commands_lease_check_s)
        started = False
        if await self.lease.try_acquire():
            try:
                await self._start_commands(retry=True)
                started = True
            except LeaseLost:
                await self.lease.release()
            except BaseException:
                await self.lease.release()
                raise
        if not started:
            log.info(
                "commands_standby",
                extra={"reason": "another gateway process runs the command dispatcher"},
            )

    async def _load_cores(self, registry: DeviceRegistry, plausibility: PlausibilityFilter) -> None:
        """The geofence and battery cores with their stored state, following the registry."""
        cfg, store = self.config, self.store
        self.geofence = geofence = GeofenceStage(
            store,
            hysteresis=Hysteresis(cfg.geofence_margin_m, cfg.geofence_fixes),
            on_speed_caps=self._speed_caps,
        )
        self.battery = battery = BatteryStage(store)
        self.handover = handover = StateHandover(
            store, plausibility, [geofence, battery], self.metrics
        )
        await self._retry(handover.start)  # before the stages load: see StateHandover.start
        await self._retry(lambda: geofence.start(registry.devices, registry.vehicle_types))
        await self._retry(lambda: battery.start(registry.devices, registry.vehicle_types))
        self.alarms = alarms = AlarmStage(store)
        await self._retry(lambda: alarms.start(registry.devices))
        self.trips = trip_stage = TripStage(store)
        await self._retry(lambda: trip_stage.start(registry.devices))
        self.trip_measurer = TripMeasurer(
            store,
            zones=lambda: geofence.tracker.zoneset if geofence.tracker is not None else None,
            max_speed_kmh=registry.max_speed_kmh,  # what the plausibility filter uses
            pack_wh=lambda vehicle_type: _pack_wh(battery, vehicle_type),
        )
        registry.on_refresh += [
            geofence.set_devices,
            battery.set_devices,
            lambda devices, _types: self.metrics.devices_registered.set(len(devices)),
        ]
        self.metrics.devices_registered.set(len(registry.devices))

    def _connect_pipeline(self, registry: DeviceRegistry, plausibility: PlausibilityFilter) -> None:
        """The batch pipeline and the MQTT ingress that feeds it (which does not read yet)."""
        cfg = self.config
        self.pipeline = pipeline = IngestPipeline(
            self.store,
            registry,
            plausibility,
            {
                "mqtt": lambda tokens: self.ingress.acknowledge(tokens),
                "coap": lambda tokens: self.coap.acknowledge(tokens),
            },
            limits=cfg.limits,
            time_limits=cfg.time_limits,
            metrics=self.metrics,
            on_backpressure=lambda paused: self.ingress.set_backpressure(paused),
            on_committed=self._committed,
            on_vehicles_changed=self._vehicles_changed,
            on_presence=self._presence,
            stages=[self.geofence, self.battery, self.alarms, self.trips],
            state_sync=self.handover.sync,
        )
        self.ingress = ingress = MqttIngress(
            pipeline,
            cfg.mqtt,
            topic_root=cfg.mqtt_topic_root,
            shared_group=cfg.mqtt_shared_group,
            metrics=self.metrics,
            drain=cfg.drain,
            dialects=cfg.mqtt_dialects,
            read_gather_s=cfg.mqtt_read_gather_s,
        )
        pipeline.count_held_upstream(lambda: ingress.held_back)

    async def _start_transports(self) -> None:
        """CoAP listens from here on; MQTT reads once its task starts (_start_tasks)."""
        cfg = self.config
        if cfg.mqtt_shared_group and not cfg.drain:
            await self._warn_if_broker_drops_shared_subscriptions()
        if cfg.coap_enabled and not cfg.drain:
            self.coap = CoapIngress(
                self.pipeline,
                DeviceCredentials(self.store).verify,
                metrics=self.metrics,
                host=cfg.coap_host,
                port=cfg.coap_port,
                path_root=cfg.mqtt_topic_root,
                time_limits=cfg.time_limits,
                commands=self.commands,
                response_timeout_s=cfg.coap_response_timeout_s,
                retry_after_s=cfg.coap_retry_after_s,
            )
            await self.coap.start()

    def _start_tasks(self, registry: DeviceRegistry) -> _Tasks:
        """The pipeline's writer, the MQTT reader and the housekeeping chores."""
        cfg = self.config
        log.info(
            "gateway_started",
            extra={
                "client_id": cfg.mqtt_client_id,
                "devices": len(registry.devices),
                "broker": f"{cfg.mqtt_host}:{cfg.mqtt_port}",
            },
        )
        writer = asyncio.create_task(self.pipeline.run(), name="pipeline")
        reader = asyncio.create_task(self.ingress.run(self._stop), name="mqtt-ingress")
        chores = [
            asyncio.create_task(self._every(interval, fn, first), name=name)
            for name, interval, fn, first in (
                ("presence-expiry", cfg.presence_timeout_s / 4, self._expire_presence, None),
                ("registry-refresh", cfg.registry_refresh_s, registry.refresh, None),
                ("zones-refresh", cfg.zones_refresh_s, self.geofence.refresh, None),
                ("maintenance", cfg.maintenance_interval_s, self._maintain, None),
                ("fleet-gauges", cfg.fleet_gauges_s, self._count_fleet, 0.0),
                ("trips-measure", cfg.trips_measure_s, self.trip_measurer.measure_waiting, None),
            )
        ]
        if self.lease is not None:
            chores.append(asyncio.create_task(self._hold_dispatcher_lease(), name="lease"))
        if cfg.webhooks_enabled and not cfg.drain:
            if cfg.webhooks_command:
                # The child reads the same settings from the same environment, and this
                # process's database (also an embedded one's, which no setting names).
                env = {**os.environ, "FLEETGATE_DATABASE_URL": cfg.database_url}
                self.webhooks = WebhookProcess(cfg.webhooks_command, self.webhook_metrics, env=env)
            else:
                self.webhooks = WebhookRunner(
                    cfg.database_url, self.store, cfg.webhooks, self.webhook_metrics
                )
            chores.append(asyncio.create_task(self.webhooks.run(), name="webhooks"))
        # Each runs until the gateway stops; one that ends sooner is a failure of the process.
        needed = {
            writer: "the pipeline writer",
            reader: "the MQTT ingress",
            **{c: f"the {c.get_name()} task" for c in chores},
        }
        if cfg.drain:
            chores.append(asyncio.create_task(self._drain(self.ingress), name="drain"))
        return _Tasks(writer, reader, chores, needed)

    async def _stop_gracefully(self, tasks: _Tasks) -> None:
        """No new messages, commit and acknowledge what we hold, leave the broker cleanly."""
        ingress, pipeline = self.ingress, self.pipeline
        ingress.pause()
        if self.coap is not None:
            self.coap.pause()
        pipeline.close()
        await tasks.writer
        if self.coap is not None:
            await self.coap.stop()  # answers 2.04 for what the last commit held
        await ingress.disconnect()
        for task in tasks.chores:  # the lease task must not start a dispatcher while we leave
            task.cancel()
        if self.commands is not None:
            await self.commands.stop()
            self._set_commands(None)
        if self.lease is not None:
            await self.lease.release()  # a standby process takes over within check_s
        await self._save_core_state()
        log.info(
            "gateway_stopped",
            extra={
                "unacknowledged": pipeline.unacknowledged,
                "samples_stored": _total(self.metrics.samples_stored),
                "samples_duplicate": _total(self.metrics.samples_duplicate),
            },
        )

    async def _clean_up(self, tasks: _Tasks | None) -> None:
        """Whatever the way out (a graceful stop, a failure, a failed start): nothing keeps
        running, and the store is closed."""
        running = tasks.all() if tasks is not None else []
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.coap is not None:
            with contextlib.suppress(Exception):
                await self.coap.stop(timeout=1.0)
        if self.commands is not None:
            with contextlib.suppress(Exception):
                await self.commands.abort()
            self._set_commands(None)
        if self.lease is not None:
            await self.lease.release()
        await self.store.close()

    async def _warn_if_broker_drops_shared_subscriptions(self) -> None:
        """Mosquitto 2.0 does not restore shared subscriptions after its own restart: until the
        gateway subscribes again, telemetry to the shared filter is acknowledged to the devices
        and dropped. Say so at start where the broker is one (docs/deployment.md)."""
        cfg = self.config
        version = await read_broker_version(cfg.mqtt)
        if version and version.lower().startswith("mosquitto"):
            log.warning(
                "shared_subscription_not_kept_by_broker",
                extra={
                    "broker": version,
                    "shared_group": cfg.mqtt_shared_group,
                    "consequence": "a broker restart loses the telemetry devices publish "
                    "before this process subscribes again",
                    "advice": "one gateway process per Mosquitto with FLEETGATE_MQTT_SHARED_GROUP "
                    "empty (docs/deployment.md)",
                },
            )

    # --- serving ----------------------------------------------------------------------------

    async def _serve_until_stopped(self, needed: dict[asyncio.Task, str]) -> None:
        """Wait for stop(); if a task the gateway needs ends first, fail loudly: readiness says
        why at once, and GatewayFailed ends the process non-zero so that its supervisor
        restarts it (the broker keeps what was not acknowledged)."""
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({stopping, *needed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        ended = [t for t in needed if t in done]
        if not ended or self._stop.is_set():
            return
        task = ended[0]
        error = None if task.cancelled() else task.exception()
        self.failure = f"{needed[task]} ended" + (
            f": {type(error).__name__}: {error}"[:300] if error else " unexpectedly"
        )
        self.metrics.broker_connected.set(0)
        log.critical(
            "gateway_failed",
            extra={
                "task": task.get_name(),
                "reason": self.failure,
                "action": "exiting for the supervisor to restart the process",
            },
            exc_info=error,
        )
        if self.ingress is not None:
            self.ingress.abort()  # unacknowledged messages stay with the broker
        raise GatewayFailed(self.failure) from error

    # --- the command dispatcher, in at most one process -------------------------------------

    async def _start_commands(self, *, retry: bool) -> None:
        cfg = self.config
        registry = CollectorRegistry()  # exported through _CommandMetrics
        service = CommandService(
            CommandConfig.from_gateway(cfg, **cfg.command_overrides),
            registry=registry,
            pull=lambda device_id: self.coap is not None and self.coap.serves(device_id),
        )
        try:
            await (self._retry(service.start) if retry else service.start())
        except BaseException:
            with contextlib.suppress(Exception):
                await service.abort()
            raise
        if not self.lease.held:  # lost while starting: someone else may dispatch by now
            await service.abort()
            raise LeaseLost("the dispatcher lease was lost while the dispatcher started")
        self._commands_collector.registry = registry
        self._set_commands(service)

    def _set_commands(self, service: CommandService | None) -> None:
        self.commands = service
        self.metrics.commands_dispatcher_active.set(0 if service is None else 1)
        self.on_speed_caps = (
            service.on_speed_caps
            if service is not None and self.config.speed_caps_enabled
            else None
        )
        if self.coap is not None:
            self.coap.commands = service
        for listener in self.commands_listeners:
            listener(service)

    async def _hold_dispatcher_lease(self) -> None:
        """Stop dispatching when the lease is lost; take it over when its holder goes away."""
        lease = self.lease
        while True:
            await asyncio.sleep(lease.check_s)
            try:
                if self.commands is not None and not lease.held:
                    # Another process may take over any moment: stop dispatching at once.
                    log.warning(
                        "commands_dispatcher_stopped",
                        extra={"reason": "the dispatcher lease was lost"},
                    )
                    service = self.commands
                    self._set_commands(None)
                    with contextlib.suppress(Exception):
                        await service.abort()
                    await lease.release()
                elif self.commands is None and await lease.try_acquire():
                    log.info(
                        "commands_dispatcher_taken_over",
                        extra={"client_id": self.config.mqtt_client_id},
                    )
                    await self._start_commands(retry=False)
            except Exception as exc:  # this loop must outlive any failure: it guards the lease
                log.warning("commands_start_failed", extra={"error": repr(exc)[:300]})
                with contextlib.suppress(Exception):
                    await lease.release()

    async def _drain(self, ingress: MqttIngress) -> None:
        """Drain mode: stop once the session is empty; the graceful stop then ends it."""
        started = time.monotonic()
        try:
            while not await ingress.finish_drain():
                pass
        except DrainError as exc:
            self.drain_error = str(exc)
            log.error(
                "drain_failed",
                extra={"client_id": self.config.mqtt_client_id, "error": self.drain_error},
            )
        else:
            self.drain_report = dict(
                client_id=self.config.mqtt_client_id,
                session_present=ingress.session_present,
                samples_stored=_total(self.metrics.samples_stored),
                rejected=_total(self.metrics.samples_rejected),
                seconds=round(time.monotonic() - started, 3),
            )
            log.info("session_drained", extra={**self.drain_report})
        self.stop()

    async def _maintain(self) -> None:
        report = await self.store.maintain()
        if report.created or report.dropped or report.policies_fixed:
            log.info("database_maintained", extra={"report": str(report)})
        self.metrics.timescaledb_jobs_failing.set(len(report.failing_jobs))
        if report.failing_jobs:
            log.warning("timescaledb_jobs_failing", extra={"jobs": report.failing_jobs})

    async def _save_core_state(self) -> None:
        """Everything is committed: store the battery core's full state so that the next start
        continues without a gap. A database that is away now only costs that gap."""
        try:
            await asyncio.wait_for(self.battery.save(), 30)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("battery_state_not_saved", extra={"error": str(exc)[:300]})

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> asyncio.Event:
        """Set once stop() was called (what companions running beside the gateway wait on)."""
        return self._stop

    async def _retry(self, fn):
        """fn() (a coroutine function) again and again while the database is away: the steps of
        the start cannot go on without it."""

        def unavailable(exc: StoreUnavailable, retry_in_s: float) -> None:
            log.warning(
                "database_unavailable",
                extra={"operation": getattr(fn, "__name__", "?"), "error": str(exc)[:300]},
            )

        return await retry_while_unavailable(fn, unavailable)

    async def _every(self, interval_s: float, fn, first_after_s: float | None = None) -> None:
        delay = interval_s if first_after_s is None else first_after_s
        while True:
            await asyncio.sleep(delay)
            delay = interval_s
            try:
                await fn()
            except StoreUnavailable:
                pass  # the pipeline reports the outage; housekeeping simply tries again later
            except Exception:
                log.exception("housekeeping_failed", extra={"task": getattr(fn, "__name__", "?")})

    def _silence_is_evidence(self) -> bool:
        """Whether this process has listened long enough for a vehicle's silence to mean the
        vehicle is silent. After a restart (SIGTERM or kill -9), a broker outage or while the
        database refuses writes, the gateway itself was deaf: every vehicle's last_seen is old
        for the gateway's reason, not the vehicle's. Expiring then would announce false
        vehicle.offline events (and vehicle.online ones once the backlog is stored), so expiry
        waits until it has listened for a whole presence timeout."""
        subscribed = self.ingress is not None and self.ingress.subscribed.is_set()
        if not subscribed or (self.pipeline is not None and self.pipeline.db_down):
            self._listening_since = None
            return False
        now = time.monotonic()
        if self._listening_since is None:
            self._listening_since = now
        return now - self._listening_since >= self.config.presence_timeout_s

    async def _expire_presence(self) -> None:
        if not self._silence_is_evidence():
            return
        lost = await self.store.mark_comms_lost(self.config.comms_lost_s)
        if lost:
            self.metrics.presence_changes.labels("comms_lost", "timeout").inc(len(lost))
            log.info("vehicles_comms_lost", extra={"count": len(lost)})
        expired = await self.store.expire_presence(self.config.presence_timeout_s)
        if expired:
            self.metrics.presence_changes.labels("offline", "timeout").inc(len(expired))
            log.info("vehicles_offline_timeout", extra={"count": len(expired)})
            self._presence([(v, False, 0) for v in expired])
            self._vehicles_changed(set(expired))

    async def _count_fleet(self) -> None:
        online, known = await self.store.count_online()
        self.metrics.devices_online.set(online)
        self.metrics.devices_known.set(known)

    def _committed(self, batch: TelemetryBatch, commit_ms: float) -> None:
        self.handover.committed(batch)
        if self.commands is not None:
            self.commands.on_batch_committed(batch, commit_ms)  # interlocks see the new state
        if self._on_committed is not None:
            self._on_committed(batch, commit_ms)

    def _presence(self, updates: list[tuple[int, bool, int]]) -> None:
        if self.commands is not None:
            for vehicle, online, _ in updates:
                self.commands.on_presence(vehicle, online)  # a reconnect delivers what waits

    def _speed_caps(self, changes: list[SpeedCapChange]) -> None:
        if self.on_speed_caps is not None:
            self.on_speed_caps(changes)

    def _vehicles_changed(self, vehicles: set[int]) -> None:
        for listener in self.change_listeners:
            listener(vehicles)

    async def check_subscribed(self) -> str | None:
        """Readiness: None when subscribed to the broker, else why not."""
        if self.failure is not None:
            return self.failure
        if self.ingress is None or not self.ingress.subscribed.is_set():
            return "not subscribed to the broker"
        return None

    @property
    def readiness(self) -> dict[str, Callable[[], Awaitable[str | None]]]:
        """The readiness checks (/readyz on the API and on the metrics port)."""
        checks = {"broker": self.check_subscribed, "database": self.check_database}
        if self.config.webhooks_enabled and not self.config.drain:
            checks["webhooks"] = self.check_webhooks
        return checks

    async def check_webhooks(self) -> str | None:
        """Readiness: None unless the webhook worker failed (and no new one works yet)."""
        return None if self.webhooks is None else await self.webhooks.check()

    async def check_database(self) -> str | None:
        """Readiness: None when the database takes writes (and the last batch committed)."""
        if self.failure is not None:
            return self.failure
        if self.store is None:
            return "database not opened yet"
        if self.pipeline is not None and self.pipeline.db_down:
            return "the last write to the database failed; retrying"
        return await self.store.check_writable()


@dataclass
class _Tasks:
    """What runs while the gateway serves."""

    writer: asyncio.Task
    reader: asyncio.Task
    chores: list[asyncio.Task]  # housekeeping, the lease, the drain
    needed: dict[asyncio.Task, str]  # the tasks that must not end before stop(), and what each is

    def all(self) -> list[asyncio.Task]:
        return [self.reader, self.writer, *self.chores]


class _CommandMetrics:
    """The command dispatcher's metrics in the gateway's registry. A process may start a new
    dispatcher when it takes the lease over; each gets a registry of its own (its counters start
    from zero, a reset Prometheus handles), exported here under the same names."""

    def __init__(self) -> None:
        self.registry: CollectorRegistry | None = None

    def collect(self):
        return self.registry.collect() if self.registry is not None else iter(())


def _pack_wh(battery: BatteryStage, vehicle_type: str) -> float | None:
    """The nominal energy of a vehicle type's pack as the battery core knows it (None: none)."""
    pack = battery.core.types.get(vehicle_type)
    return None if pack is None else pack.nominal_kwh * 1000.0


def _total(counter) -> int:
    """A counter's value summed over its labels (for the log)."""
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )
