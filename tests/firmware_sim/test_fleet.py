"""The simulated fleet through a real Mosquitto: exactly the accounted samples arrive, presence
and wills, and commands executed once however often they are retried."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from firmware_sim.fleet import Fleet, FleetOptions, run_fleet
from firmware_sim.tcu import CommandBehaviour, Misbehaviour
from gateway.mqtt import ConnectOptions, MqttClient
from tests.broker_listener import Listener
from tests.harness import eventually

pytestmark = pytest.mark.integration


def options(broker, topic_root: str, **kw) -> FleetOptions:
    return FleetOptions(
        host=broker.host,
        port=broker.port,
        topic_root=topic_root,
        session_expiry_s=30,
        track_keys=True,
        **kw,
    )


async def test_exactly_the_accounted_samples_arrive_with_misbehaving_devices(mosquitto, topic_root):
    mb = Misbehaviour(
        duplicate_share=0.02,
        malformed_share=0.02,
        out_of_order_share=0.5,
        disconnects_per_h=150.0,
        offline_s=(2.0, 6.0),
    )
    opts = options(
        mosquitto,
        topic_root,
        vehicles=20,
        rate_hz=5.0,
        fast=True,
        samples_per_vehicle=60,
        cbor_share=0.5,
        misbehaviour=mb,
        seed=11,
    )
    async with Listener(mosquitto, topic_root) as listener:
        fleet = Fleet(opts)
        await fleet.start()
        await fleet.run()
        stats = await fleet.stop()
        expected = fleet.expected_keys()
        assert len(expected) == 20 * 60 == stats.samples_generated == stats.samples_acked
        assert stats.acked_keys() == expected

        async def all_arrived() -> bool:
            return set(listener.decoded(fleet.device_ids)[0]) >= expected

        await eventually(all_arrived, timeout=20, what="every acknowledged sample at the listener")
        keys, r = listener.decoded(fleet.device_ids)
        assert set(keys) == expected  # nothing else looks like a valid sample
        assert stats.disconnects > 0 and stats.duplicates_sent > 0
        # Each acknowledged malformed message was rejected for its reason; lost ones may have
        # reached the broker too.
        for reason, n in stats.expected_rejections().items():
            assert n <= r.rejected.get(reason, 0)
        assert sum(r.rejected.values()) <= sum(stats.malformed_sent.values())

        # Presence: the will said offline on every dropped connection; the last word is a
        # clean goodbye, retained.
        statuses = [
            (m.topic.split("/")[-2], orjson.loads(m.payload)) for m in listener.of("status")
        ]
        assert sum(1 for _, s in statuses if s == {"online": False}) >= 1
        last = {d: s for d, s in statuses}
        assert set(last) == set(fleet.device_ids)
        assert all(s["online"] is False and "t" in s for s in last.values())
        assert fleet.registrations()[:2] == [
            ("ebike-0001", "veh-0001", "ebike"),
            ("car-0002", "veh-0002", "car"),
        ]


async def test_commands_are_executed_once_and_answered_per_retry_even_when_offline(
    mosquitto, topic_root
):
    opts = options(
        mosquitto,
        topic_root,
        vehicles=4,
        rate_hz=10.0,
        seed=12,
        commands=CommandBehaviour(delay_ms=(20.0, 60.0)),
    )
    async with Listener(mosquitto, topic_root) as listener:
        commander = MqttClient(
            ConnectOptions(mosquitto.host, mosquitto.port, f"cmd-{time.monotonic_ns() % 10**9}")
        )
        await commander.connect()
        stop = asyncio.Event()
        fleet = Fleet(opts)
        await fleet.start()
        runner = asyncio.create_task(fleet.run(stop))

        def send(device: str, cid: str, ctype: str) -> asyncio.Future:
            body = {
                "id": cid,
                "type": ctype,
                "params": {},
                "deadline": int(time.time() * 1000) + 60_000,
            }
            return commander.publish(f"{topic_root}/{device}/cmd", orjson.dumps(body), qos=1)

        def results(cid: str) -> list[bytes]:
            return [
                m.payload for m in listener.of("result") if orjson.loads(m.payload)["id"] == cid
            ]

        try:
            await send("car-0002", "u-1", "unlock")
            await eventually(lambda: len(results("u-1")) == 1, timeout=10, what="first result")
            await send("car-0002", "u-1", "unlock")  # the backend's retry
            await eventually(lambda: len(results("u-1")) == 2, timeout=10, what="second result")
            first, again = results("u-1")
            assert first == again and orjson.loads(first)["status"] == "succeeded"
            assert fleet.stats.command_executions[("car-0002", "u-1")] == 1

            # A device that is offline gets the command from its persistent session later.
            fleet.go_offline("car-0004", seconds=1.5)
            await send("car-0004", "l-1", "lock")
            await eventually(lambda: len(results("l-1")) == 1, timeout=15, what="late result")
            assert fleet.stats.command_executions[("car-0004", "l-1")] == 1
            assert fleet.model.locked[3]
            wills = [
                m
                for m in listener.of("status")
                if m.topic.endswith("car-0004/status") and m.payload == b'{"online":false}'
            ]
            assert wills, "the dropped connection's will was published"
        finally:
            stop.set()
            await runner
            await fleet.stop()
            await commander.disconnect()
        assert fleet.stats.samples_acked == fleet.stats.samples_generated > 0


async def test_run_fleet_is_what_the_cli_calls(mosquitto, topic_root):
    stop = asyncio.Event()
    started = []
    opts = options(mosquitto, topic_root, vehicles=3, rate_hz=20.0, speedup=10.0, seed=13)
    task = asyncio.create_task(run_fleet(opts, stop, on_started=started.append))
    await eventually(
        lambda: started and started[0].stats.samples_acked >= 30, timeout=15, what="samples flowing"
    )
    stop.set()
    stats = await asyncio.wait_for(task, 20)
    assert stats.samples_acked == stats.samples_generated and stats.finished_monotonic is not None


async def test_a_broker_crash_loses_no_sample(restartable_mosquitto, topic_root):
    broker = restartable_mosquitto
    fleet = Fleet(options(broker, topic_root, vehicles=6, rate_hz=20.0, seed=14))
    await fleet.start()
    stop = asyncio.Event()
    runner = asyncio.create_task(fleet.run(stop))
    await eventually(lambda: fleet.stats.samples_acked > 60, timeout=10, what="samples flowing")
    broker.stop(kill=True)
    await eventually(
        lambda: sum(len(t.buffer) for t in fleet.firmware.tcus) > 60,
        timeout=10,
        what="devices buffering while the broker is down",
    )
    broker.start()
    await eventually(
        lambda: all(link.up.is_set() for link in fleet._links),
        timeout=15,
        what="devices reconnected",
    )
    stop.set()
    await runner
    stats = await fleet.stop()
    assert stats.connection_losses == 6 and stats.batches_published >= 6
    assert stats.samples_acked == stats.samples_generated
    assert stats.acked_keys() == fleet.expected_keys()


def test_a_fleet_of_named_vehicles_starts_where_they_were_last_seen():
    """The vehicles a migration imported (`migrate rehearse`): their ids, refs and types as
    given (a type without a model of its own drives as an e-bike under its name), each placed
    at its last known fix; nothing is sent until the fleet starts."""
    from firmware_sim.specs import Area

    named = [
        ("356307042441011", "Bike 0101", "ebike"),
        ("862095051234037", "B-FG 103E", "car"),
        ("862095051234045", "Moped 0104", "moped"),
        ("lock-77", "Cargo 7", "longtail"),
    ]
    fixes = {"356307042441011": (52.5101, 13.3902), "862095051234037": (52.5302, 13.4101)}
    fleet = Fleet(
        FleetOptions(
            vehicles=len(named),
            named=named,
            start_fixes=fixes,
            area=Area(south=52.49, west=13.37, north=52.55, east=13.43),
        )
    )
    assert fleet.registrations() == named
    assert fleet.device_ids == [d for d, _, _ in named]
    lat, lon = fleet.model.latlon()
    for i, device in enumerate(fleet.device_ids[:2]):
        assert (lat[i], lon[i]) == pytest.approx(fixes[device], abs=1e-9)
