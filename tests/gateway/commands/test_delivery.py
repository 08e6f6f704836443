"""Remote commands end to end: a real Mosquitto and PostgreSQL, the ingest gateway writing
vehicle_state, simulated TCUs executing commands, and the CommandService beside the gateway.
Device-side executions are counted, so "exactly once" is checked where it matters."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, replace

import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from commands import (
    CommandRequest,
    CommandState,
    DeliveryPolicy,
    IdempotencyConflict,
    NotCancellable,
    NotHeld,
)
from firmware_sim.fleet import Fleet, FleetOptions
from firmware_sim.model import CAR, TRIP
from firmware_sim.tcu import CommandBehaviour
from gateway.commands import CommandConfig, CommandService, command_client_id
from gateway.service import Gateway, GatewayConfig
from geofence import SpeedCapChange
from tests.harness import eventually, gateway_config, metric, register

pytestmark = pytest.mark.integration

S = CommandState
FAST = CommandBehaviour(delay_ms=(20.0, 60.0), acknowledge=True)
NEVER_MS = np.iinfo(np.int64).max


@dataclass
class Stack:
    fleet: Fleet
    gateway_config: GatewayConfig
    command_config: CommandConfig
    dsn: str
    service: CommandService | None = None
    gateway: Gateway | None = None
    registry: CollectorRegistry | None = None
    _gateway_task: asyncio.Task | None = None
    _fleet_stop: asyncio.Event | None = None
    _fleet_task: asyncio.Task | None = None
    pull: object = None

    def executions(self, device_id: str, command_id) -> int:
        return self.fleet.stats.command_executions[(device_id, str(command_id))]

    def executed_ids(self, device_id: str) -> list[str]:
        """Command ids in the order the device carried them out (answered or not)."""
        log = self.fleet.tcu(device_id).command_log
        return [*log.results, *log.held]

    async def start_service(self) -> CommandService:
        self.registry = CollectorRegistry()
        kw = {"pull": self.pull} if self.pull else {}
        self.service = CommandService(self.command_config, registry=self.registry, **kw)
        await self.service.start()
        return self.service

    async def start_gateway(self) -> None:
        # The commands hook: telemetry committed -> interlocks judged again at once.
        self.gateway = Gateway(
            self.gateway_config,
            registry=CollectorRegistry(),
            on_committed=lambda b, ms: self.service and self.service.on_batch_committed(b, ms),
        )
        self._gateway_task = asyncio.create_task(self.gateway.run())
        await eventually(
            lambda: (
                self._gateway_task.done()
                or (self.gateway.ingress is not None and self.gateway.ingress.subscribed.is_set())
            ),
            timeout=20,
            what="gateway subscribed",
        )
        if self._gateway_task.done():
            self._gateway_task.result()

    async def stop_gateway(self) -> None:
        self.gateway.stop()
        await asyncio.wait_for(self._gateway_task, 30)

    async def start_fleet(self) -> None:
        await self.fleet.start()
        self._fleet_stop = asyncio.Event()
        self._fleet_task = asyncio.create_task(self.fleet.run(self._fleet_stop))

    async def state(self, device_id: str) -> dict | None:
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cur = await conn.execute(
                "SELECT s.online, (extract(epoch FROM s.time) * 1000)::bigint, s.speed_kmh, "
                "s.ignition, s.locked, s.immobilised FROM vehicle_state s "
                "JOIN vehicles v ON v.id = s.vehicle WHERE v.device_id = %s",
                (device_id,),
            )
            row = await cur.fetchone()
        return (
            None
            if row is None
            else dict(zip(("online", "t", "speed_kmh", "ignition", "locked", "immobilised"), row))
        )

    async def submit(self, device_id: str, type_: str, key: str | None = None, **kw):
        return await self.service.submit(
            CommandRequest(
                device_id=device_id,
                type=type_,
                idempotency_key=key or uuid.uuid4().hex,
                requested_by=kw.pop("requested_by", "rental"),
                **kw,
            )
        )

    async def finished(self, command, timeout: float = 15.0):
        done = await self.service.wait(command.id, timeout)
        assert done.state.terminal, f"{command.type.value} still {done.state.value}"
        return done


def parked_fleet(fleet: Fleet) -> Fleet:
    """No vehicle starts a trip on its own (states stay as the test sets them)."""
    fleet.model.phase_end_ms[:] = NEVER_MS
    return fleet


@contextlib.asynccontextmanager
async def stack(
    pg_dsn,
    broker,
    topic_root,
    *,
    fleet: Fleet | None = None,
    vehicles: int = 4,
    behaviour: CommandBehaviour = FAST,
    delivery: DeliveryPolicy | None = None,
    pull=None,
    **config,
):
    if fleet is None:
        fleet = parked_fleet(
            Fleet(
                FleetOptions(
                    vehicles=vehicles,
                    rate_hz=2.0,
                    seed=7,
                    topic_root=topic_root,
                    host=broker.host,
                    port=broker.port,
                    session_expiry_s=60,
                    commands=behaviour,
                    track_keys=False,
                )
            )
        )
    await register(pg_dsn, fleet.registrations())
    gw = gateway_config(
        pg_dsn, broker, topic_root, mqtt_session_expiry_s=60, commands_enabled=False
    )  # these tests run their own CommandService
    cc = CommandConfig.from_gateway(
        gw, delivery=delivery or DeliveryPolicy(result_timeout_s=2.0, clock_grace_s=0.5), **config
    )
    s = Stack(fleet, gw, cc, pg_dsn, pull=pull)
    try:
        await s.start_service()
        await s.start_gateway()
        await s.start_fleet()

        async def all_online() -> bool:
            for d in fleet.device_ids:
                st = await s.state(d)
                if not (st and st["online"] and st["t"]):
                    return False
            return True

        await eventually(all_online, timeout=20, what="every vehicle online with a sample")
        yield s
    finally:
        if s._fleet_task is not None:
            s._fleet_stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s._fleet_task, 10)
            await fleet.stop(flush=False)
        if s.service is not None:
            await s.service.stop()
        if s._gateway_task is not None and not s._gateway_task.done():
            await s.stop_gateway()


async def history(s: Stack, command) -> list[tuple[str | None, str, str | None]]:
    return [
        (e.from_state.value if e.from_state else None, e.to_state.value, e.reason)
        for e in await s.service.history(command.id)
    ]


# --- round trips ------------------------------------------------------------------------------


async def test_unlock_and_lock_round_trip_with_every_step_in_the_history(
    mosquitto, pg_dsn, topic_root
):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        car, i = "car-0002", 1
        assert s.fleet.model.locked[i]
        unlock = await s.submit(car, "unlock", key="booking-77-start")
        assert unlock.state is S.SENT and unlock.attempts == 1
        done = await s.finished(unlock)
        assert done.state is S.SUCCEEDED and done.device_status == "succeeded"
        assert not s.fleet.model.locked[i] and s.executions(car, unlock.id) == 1
        assert await history(s, unlock) == [
            (None, "queued", None),
            ("queued", "sent", None),
            ("sent", "acknowledged", None),
            ("acknowledged", "succeeded", None),
        ]
        assert done.created_at <= done.sent_at <= done.acknowledged_at <= done.finished_at

        lock = await s.finished(await s.submit(car, "lock", key="booking-77-end"))
        assert lock.state is S.SUCCEEDED and s.fleet.model.locked[i]
        # The device reports its new state in telemetry; vehicle_state follows.
        await eventually(
            lambda: _state_is(s, car, locked=True, after=lock.device_t),
            timeout=10,
            what="vehicle_state shows the lock",
        )
        page = await s.service.list(vehicle="veh-0002")
        assert [c.id for c in page.items] == [lock.id, unlock.id]
        assert (
            metric(
                s.registry, "fleetgate_commands_finished_total", type="unlock", state="succeeded"
            )
            == 1
        )
        assert metric(s.registry, "fleetgate_command_round_trip_seconds_count", type="lock") == 1


async def _state_is(s: Stack, device_id: str, after=None, **want) -> bool:
    st = await s.state(device_id)
    if st is None or (after is not None and st["t"] < after.timestamp() * 1000):
        return False
    return all(st[k] == v for k, v in want.items())


async def test_unlock_then_lock_issued_back_to_back_arrive_in_that_order(
    mosquitto, pg_dsn, topic_root
):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        car, i = "car-0004", 3
        issued = [await s.submit(car, t) for t in ("unlock", "lock", "unlock", "lock")]
        assert [c.state for c in issued] == [S.SENT, S.QUEUED, S.QUEUED, S.QUEUED]
        done = [await s.finished(c) for c in issued]
        assert all(c.state is S.SUCCEEDED and c.attempts == 1 for c in done)
        assert s.executed_ids(car) == [str(c.id) for c in issued]
        assert s.fleet.model.locked[i]
        # One in flight: each went out only after the one before was answered.
        for before, after in zip(done, done[1:]):
            assert after.sent_at >= before.finished_at


async def test_the_same_idempotency_key_twice_yields_one_command_and_one_execution(
    mosquitto, pg_dsn, topic_root
):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        car = "car-0002"
        a, b = await asyncio.gather(
            s.submit(car, "unlock", key="booking-9-start"),
            s.submit(car, "unlock", key="booking-9-start"),
        )
        assert a.id == b.id
        done = await s.finished(a)
        again = await s.submit(car, "unlock", key="booking-9-start")  # the caller retries later
        assert again.id == a.id and again.state is S.SUCCEEDED
        assert s.executions(car, a.id) == 1
        with pytest.raises(IdempotencyConflict):
            await s.submit(car, "lock", key="booking-9-start")
        # The key is per caller: billing may use the same string for its own command.
        other = await s.submit(car, "lock", key="booking-9-start", requested_by="billing")
        assert other.id != a.id
        await s.finished(other)
        assert done.state is S.SUCCEEDED
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            (n,) = await (await conn.execute("SELECT count(*) FROM commands")).fetchone()
        assert n == 2


async def test_a_burst_of_concurrent_callers_is_written_together_and_each_executed_once(
    mosquitto, pg_dsn, topic_root
):
    """Twenty callers at once, nine commands per vehicle: written in joint writes, yet every
    command is executed once and each vehicle's commands run in the order they were given."""
    async with stack(pg_dsn, mosquitto, topic_root, vehicles=4) as s:
        cars = s.fleet.device_ids
        order = {car: ["unlock", "lock", "unlock", "lock", "unlock"] for car in cars}

        async def caller(car: str) -> list:
            submitted = [await s.submit(car, t) for t in order[car]]  # queued behind each other
            return [await s.finished(c) for c in submitted]

        # One caller per vehicle gives an order to keep; four more per vehicle race it.
        racing = [s.submit(car, "locate") for car in cars for _ in range(4)]
        per_car, raced = await asyncio.gather(
            asyncio.gather(*(caller(car) for car in cars)), asyncio.gather(*racing)
        )
        done = [c for cars_done in per_car for c in cars_done]
        done += [await s.finished(c) for c in raced]
        assert len({c.id for c in done}) == len(done) == 36
        assert all(c.state is S.SUCCEEDED for c in done)
        assert all(s.executions(c.device_id, c.id) == 1 for c in done)
        for car, cars_done in zip(cars, per_car):
            executed = s.executed_ids(car)
            positions = [executed.index(str(c.id)) for c in cars_done]
            assert positions == sorted(positions), f"{car}: not in the order given"


async def test_a_vehicle_another_platform_holds_is_refused_in_a_burst_and_nothing_written(
    mosquitto, pg_dsn, topic_root
):
    """The authority is read in the joint write of a burst: the held vehicle's command is
    refused with NotHeld and leaves no row, the other callers' commands go through."""
    from telemetry.store import CommandAuthority, TelemetryStore

    async with stack(pg_dsn, mosquitto, topic_root, vehicles=3) as s:
        held, *free = s.fleet.device_ids
        info = await s.service.store.vehicle(device_id=held)
        async with await TelemetryStore.open(pg_dsn) as store:
            authority = CommandAuthority(store)
            await authority.hold_for_legacy([info.vehicle_id], "traccar")
            outcome = await asyncio.gather(
                s.submit(held, "unlock", key="held-1"),
                *(s.submit(car, "unlock") for car in free),
                return_exceptions=True,
            )
            assert isinstance(outcome[0], NotHeld) and outcome[0].holder == "traccar"
            assert all(c.state is S.SENT for c in outcome[1:])
            assert [(await s.finished(c)).state for c in outcome[1:]] == [S.SUCCEEDED] * 2
            async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM commands WHERE vehicle = %s", (info.vehicle_id,)
                )
                assert (await cur.fetchone())[0] == 0
            # Cut over: the next command is fleetgate's to send (the authority is not cached).
            await authority.cut_over("pilot", [info.vehicle_id], {})
            done = await s.finished(await s.submit(held, "unlock", key="held-1"))
            assert done.state is S.SUCCEEDED and s.executions(held, done.id) == 1


# --- offline vehicles, deadlines ---------------------------------------------------------------


async def test_an_offline_vehicle_gets_its_command_after_reconnecting_never_after_the_deadline(
    mosquitto, pg_dsn, topic_root
):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        waits, misses = "car-0002", "car-0004"
        for d in (waits, misses):
            s.fleet.go_offline(d, seconds=3600)
        await eventually(lambda: _state_is(s, waits, online=False), what="car-0002 offline")
        await eventually(lambda: _state_is(s, misses, online=False), what="car-0004 offline")
        unlock = await s.submit(waits, "unlock", ttl_s=30)
        late = await s.submit(misses, "unlock", ttl_s=1.5)
        assert (unlock.state, unlock.reason) == (S.QUEUED, "vehicle_offline")
        expired = await s.finished(late, timeout=5)
        assert (expired.state, expired.reason, expired.attempts) == (
            S.EXPIRED,
            "vehicle_offline",
            0,
        )
        s.fleet.go_online(misses)
        s.fleet.go_online(waits)
        done = await s.finished(unlock, timeout=15)
        assert done.state is S.SUCCEEDED and s.executions(waits, unlock.id) == 1
        assert not s.fleet.model.locked[1]
        await eventually(lambda: _state_is(s, misses, online=True), what="car-0004 back")
        await asyncio.sleep(1.0)
        # Never published, so nothing waits in the broker: the device never saw it.
        assert s.executions(misses, late.id) == 0
        assert str(late.id) not in s.executed_ids(misses)
        assert s.fleet.model.locked[3]
        assert await history(s, late) == [
            (None, "queued", None),
            ("queued", "queued", "vehicle_offline"),
            ("queued", "expired", "vehicle_offline"),
        ]


async def test_a_late_answer_after_the_time_out_is_kept_and_the_state_stays_timed_out(
    mosquitto, pg_dsn, topic_root
):
    async with stack(
        pg_dsn,
        mosquitto,
        topic_root,
        delivery=DeliveryPolicy(result_timeout_s=10.0, clock_grace_s=0.5),
    ) as s:
        car = "car-0002"
        s.fleet.tcu(car).command_behaviour = CommandBehaviour(
            delay_ms=(50.0, 50.0), late_share=1.0, late_delay_ms=(2500.0, 2500.0)
        )
        unlock = await s.submit(car, "unlock", ttl_s=1.5)
        timed_out = await s.finished(unlock, timeout=5)
        assert (timed_out.state, timed_out.reason) == (S.TIMED_OUT, "no_result")
        assert not s.fleet.model.locked[1], "the device did unlock, before the deadline"

        async def noted() -> bool:
            return (await s.service.get(unlock.id)).device_status == "succeeded"

        await eventually(noted, timeout=10, what="the late answer recorded")
        final = await s.service.get(unlock.id)
        assert final.state is S.TIMED_OUT and final.device_t is not None
        assert (await history(s, unlock))[-1] == ("timed_out", "timed_out", "late_result")
        assert s.executions(car, unlock.id) == 1
        assert metric(s.registry, "fleetgate_command_results_total", kind="late") == 1


async def test_dropped_and_slow_commands_are_retried_with_the_same_id_and_executed_once(
    mosquitto, pg_dsn, topic_root
):
    async with stack(
        pg_dsn,
        mosquitto,
        topic_root,
        delivery=DeliveryPolicy(result_timeout_s=0.4, backoff=1.0, clock_grace_s=0.5),
    ) as s:
        dropping, slow = "car-0002", "car-0004"
        s.fleet.tcu(dropping).command_behaviour = CommandBehaviour(drop_share=1.0)
        s.fleet.tcu(slow).command_behaviour = CommandBehaviour(delay_ms=(1500.0, 1500.0))
        a = await s.submit(dropping, "unlock", ttl_s=20)
        b = await s.submit(slow, "unlock", ttl_s=20)
        await asyncio.sleep(0.6)
        s.fleet.tcu(dropping).command_behaviour = FAST  # the radio link is back
        a, b = await s.finished(a), await s.finished(b)
        assert a.state is b.state is S.SUCCEEDED
        assert a.attempts >= 2 and b.attempts >= 3
        assert s.executions(dropping, a.id) == 1 and s.executions(slow, b.id) == 1
        assert metric(s.registry, "fleetgate_command_deliveries_total", kind="retry") >= 3


async def test_device_refusals_end_as_failed_with_the_device_reason(mosquitto, pg_dsn, topic_root):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        s.fleet.tcu("car-0002").command_behaviour = CommandBehaviour(refuse_share=1.0)
        refused = await s.finished(await s.submit("car-0002", "unlock"))
        assert (refused.state, refused.reason, refused.device_reason) == (
            S.FAILED,
            "refused",
            "refused",
        )
        bike = await s.finished(await s.submit("ebike-0001", "immobilise"))
        assert (bike.state, bike.reason) == (S.FAILED, "not_supported")
        queued = await s.submit("car-0004", "locate", ttl_s=30)
        done = await s.finished(queued)
        with pytest.raises(NotCancellable):
            await s.service.cancel(done.id)


# --- restarts --------------------------------------------------------------------------------


async def test_a_restart_while_commands_are_in_flight_loses_none_and_duplicates_none(
    mosquitto, pg_dsn, topic_root
):
    slow = CommandBehaviour(delay_ms=(300.0, 700.0), acknowledge=True)
    async with stack(pg_dsn, mosquitto, topic_root, vehicles=6, behaviour=slow) as s:
        order = ("unlock", "lock", "unlock", "lock")
        issued = {d: [await s.submit(d, t, ttl_s=60) for t in order] for d in s.fleet.device_ids}
        await asyncio.sleep(0.5)
        in_flight = [
            c for cs in issued.values() for c in cs if (await s.service.get(c.id)).state.in_flight
        ]
        assert in_flight, "the restart must catch commands in flight"
        # Crash the command service (no DISCONNECT), stop the gateway; the devices go on
        # answering into the broker meanwhile.
        await s.service.abort()
        await s.stop_gateway()
        await asyncio.sleep(1.5)
        await s.start_service()
        await s.start_gateway()
        for device_id, commands in issued.items():
            done = [await s.finished(c, timeout=30) for c in commands]
            assert [c.state for c in done] == [S.SUCCEEDED] * 4, device_id
            assert all(s.executions(device_id, c.id) == 1 for c in commands), device_id
            assert s.executed_ids(device_id) == [str(c.id) for c in commands]
        assert all(s.fleet.model.locked)


async def test_a_command_persisted_as_sent_but_never_published_goes_out_after_a_restart(
    mosquitto, pg_dsn, topic_root
):
    """A service that dies between persisting "sent" and publishing: the command goes out again
    with the same id after the restart, and the device executes it once."""
    async with stack(
        pg_dsn,
        mosquitto,
        topic_root,
        delivery=DeliveryPolicy(result_timeout_s=1.0, clock_grace_s=0.5),
    ) as s:
        s.service.link.abort()  # publishes fail from now on, as if the process died here
        unlock = await s.submit("car-0002", "unlock", ttl_s=30)
        assert unlock.state is S.SENT
        await s.service.abort()
        await s.start_service()
        done = await s.finished(unlock)
        assert done.state is S.SUCCEEDED and done.attempts >= 2
        assert s.executions("car-0002", unlock.id) == 1


# --- interlocks ------------------------------------------------------------------------------


def fleet_with_a_car_about_to_stop(
    broker, topic_root: str, stop_in_s=(8, 16), cars: int = 12
) -> tuple[Fleet, int, int]:
    """A fleet of cars, one of which is driving and ends its trip stop_in_s seconds after the
    fleet starts. Found by running a copy of the model ahead (1 s steps, as the fleet will):
    the model is deterministic for a seed and the steps, and its clock is only an offset.
    Returns (fleet, car index, the model time its trip ends)."""

    def options(start_ms: int) -> FleetOptions:
        return FleetOptions(
            vehicles=cars,
            car_share=1.0,
            rate_hz=1.0,
            seed=21,
            topic_root=topic_root,
            host=broker.host,
            port=broker.port,
            session_expiry_s=60,
            commands=FAST,
            track_keys=False,
            start_ms=start_ms,
        )

    def prepared(fleet: Fleet) -> Fleet:
        m = fleet.model
        m.phase_end_ms[:] = m.t_ms + 60_000 * np.arange(1, cars + 1)  # trips start in turn
        m.soc[:] = 80.0
        return fleet

    probe = prepared(Fleet(options(0))).model
    trip_log: list[np.ndarray] = []
    speed_log: list[np.ndarray] = []
    found = None
    for step in range(3 * 3600):
        probe.step_ms(1000)
        trip_log.append(probe.phase == TRIP)
        speed_log.append(probe.speed.copy())
        lo, hi = stop_in_s
        k = step - hi
        if k < 0:
            continue
        for i in np.flatnonzero(trip_log[k] & (speed_log[k] > 5.0)):
            ends = [j for j in range(k + lo, k + hi + 1) if not trip_log[j][i]]
            if ends and all(trip_log[j][i] for j in range(k, ends[0])):
                found = (k, int(i), ends[0])
                break
        if found:
            break
    assert found, "no car ends a trip in the probe run"
    k, car, end = found
    now = int(time.time() * 1000)
    fleet = prepared(Fleet(options(now - (k + 1) * 1000)))
    model = fleet.model
    for _ in range(k + 1):
        model.step_ms(1000)
    assert model.phase[car] == TRIP and model.kind[car] == CAR
    assert model.speed[car] == speed_log[k][car], "the copy ran ahead differently"
    fleet.start_ms = model.t_ms  # the fleet steps on from here, on the wall clock
    return fleet, car, model.t_ms + (end - k) * 1000


async def test_immobilise_of_a_moving_car_waits_until_it_stops(mosquitto, pg_dsn, topic_root):
    fleet, i, stops_at_ms = fleet_with_a_car_about_to_stop(mosquitto, topic_root)
    car = fleet.device_ids[i]
    async with stack(pg_dsn, mosquitto, topic_root, fleet=fleet) as s:
        await eventually(lambda: _state_is(s, car, ignition=True), what="the car driving")
        assert fleet.model.phase[i] == TRIP
        refused = await s.finished(await s.submit(car, "immobilise", on_unsafe="refuse"))
        assert (refused.state, refused.reason) == (S.FAILED, "vehicle_moving")
        imm = await s.submit(car, "immobilise", ttl_s=120, requested_by="billing")
        assert (imm.state, imm.reason) == (S.WAITING_FOR_SAFE_STATE, "vehicle_moving")
        while fleet.model.phase[i] == TRIP:
            assert s.executions(car, imm.id) == 0, "delivered to a moving car"
            assert (await s.service.get(imm.id)).state is S.WAITING_FOR_SAFE_STATE
            await asyncio.sleep(0.1)
        done = await s.finished(imm, timeout=15)
        assert done.state is S.SUCCEEDED and fleet.model.immobilised[i]
        assert s.executions(car, imm.id) == 1
        assert done.device_t.timestamp() * 1000 > stops_at_ms - 1000
        assert done.sent_at.timestamp() * 1000 >= stops_at_ms - 500  # sent once it stood
        assert await history(s, imm) == [
            (None, "queued", None),
            ("queued", "waiting_for_safe_state", "vehicle_moving"),
            ("waiting_for_safe_state", "sent", None),
            ("sent", "acknowledged", None),
            ("acknowledged", "succeeded", None),
        ]
        assert (
            metric(
                s.registry,
                "fleetgate_command_interlock_waits_total",
                type="immobilise",
                reason="vehicle_moving",
            )
            == 1
        )


async def test_unlock_of_an_unlocked_vehicle_with_fresh_state_needs_no_round_trip(
    mosquitto, pg_dsn, topic_root
):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        car = "car-0002"
        first = await s.finished(await s.submit(car, "unlock"))
        await eventually(
            lambda: _state_is(s, car, locked=False, after=first.device_t),
            what="vehicle_state after the unlock",
        )
        received = s.fleet.stats.commands_received
        again = await s.submit(car, "unlock")
        assert (again.state, again.reason, again.attempts) == (S.SUCCEEDED, "already_unlocked", 0)
        assert s.fleet.stats.commands_received == received  # no round trip


# --- hooks for the geofence and pull transports ----------------------------------------------


async def test_slow_zone_speed_caps_become_set_speed_limit_commands_once(
    mosquitto, pg_dsn, topic_root
):
    async with stack(pg_dsn, mosquitto, topic_root) as s:
        bike = (await s.service.store.vehicle(device_id="ebike-0001")).vehicle_id
        enter = SpeedCapChange(
            vehicle=bike, time_ms=1_764_412_800_000, max_speed_kph=15.0, zone_id="slow-1"
        )
        [cap] = await s.service.submit_speed_caps([enter])
        [same] = await s.service.submit_speed_caps([enter])  # the batch replayed after a crash
        assert same.id == cap.id and cap.params == {"kph": 15.0}
        assert (await s.finished(cap)).state is S.SUCCEEDED
        assert s.fleet.model.speed_limit[0] == pytest.approx(15.0 / 3.6)
        leave = replace(enter, time_ms=enter.time_ms + 60_000, max_speed_kph=None)
        s.service.on_speed_caps([leave])  # what the gateway calls (synchronous)

        async def lifted() -> bool:
            page = await s.service.list(device_id="ebike-0001")
            return page.items[0].id != cap.id and page.items[0].state is S.SUCCEEDED

        await eventually(lifted, what="the cap lifted")
        assert s.fleet.model.speed_limit[0] == np.inf


async def test_pull_delivery_hands_the_command_over_on_the_devices_uplink(
    mosquitto, pg_dsn, topic_root
):
    sleepy = "ebike-0003"
    async with stack(pg_dsn, mosquitto, topic_root, pull=lambda d: d == sleepy) as s:
        unlock = await s.submit(sleepy, "unlock", ttl_s=30)
        await asyncio.sleep(0.5)
        assert (await s.service.get(unlock.id)).state is S.QUEUED
        assert s.fleet.stats.commands_received == 0  # nothing pushed over MQTT
        payload = await s.service.take_pending_for(sleepy)
        assert payload["id"] == str(unlock.id) and payload["type"] == "unlock"
        assert (await s.service.get(unlock.id)).state is S.SENT
        again = await s.service.take_pending_for(sleepy)  # no answer yet: the same id again
        assert again["id"] == payload["id"]
        result = b'{"id": "%s", "status": "succeeded", "t": %d}' % (
            payload["id"].encode(),
            int(time.time() * 1000),
        )
        done = await s.service.record_result(sleepy, result)
        assert done.state is S.SUCCEEDED and done.attempts == 2
        assert await s.service.take_pending_for(sleepy) is None


def test_the_command_client_id_sits_next_to_the_gateways():
    assert command_client_id("fleetgate-gw-1") == "fleetgate-gw-1-cmd"
    assert len(command_client_id("x" * 64)) == 64
