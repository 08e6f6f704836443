"""Commands to sleeping CoAP devices: queued while the device sleeps, handed over in the 2.04 of
its next uplink exactly once, its result posted to /cmd/result; the command state machine is
the one MQTT devices use (commands.CommandService)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import aiocoap
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from commands import CommandRequest, CommandState
from firmware_sim.coap import CoapFleet, CoapFleetOptions
from gateway.commands import CommandConfig, CommandService
from tests.batches import now_ms
from tests.coap_devices import coap_client, coap_gateway, post, provision, sample
from tests.harness import metric

pytestmark = pytest.mark.integration

NEVER_MS = np.iinfo(np.int64).max


@contextlib.asynccontextmanager
async def gateway_with_commands(pg_dsn, broker, topic_root):
    """The CoAP gateway and the command service beside it, wired as the Gateway wires them:
    committed batches feed the interlocks, CoAP devices get their commands by pull."""
    box: list[CommandService] = []
    async with coap_gateway(
        pg_dsn, on_committed=lambda b, ms: box and box[0].on_batch_committed(b, ms)
    ) as gw:
        service = CommandService(
            CommandConfig(
                database_url=pg_dsn,
                mqtt_host=broker.host,
                mqtt_port=broker.port,
                mqtt_topic_root=topic_root,
                mqtt_client_id=f"cmd-{uuid.uuid4().hex[:8]}",
                mqtt_session_expiry_s=60,
            ),
            registry=CollectorRegistry(),
            pull=gw.coap.serves,
        )
        await service.start()
        box.append(service)
        gw.coap.commands = service
        try:
            yield gw, service
        finally:
            await service.stop()


def sleeping_locks(port: int, tokens: dict[str, str], n: int = 1) -> CoapFleet:
    fleet = CoapFleet(
        CoapFleetOptions(vehicles=n, port=port, wake_interval_s=30, rounds=20, seed=3), tokens
    )
    fleet.model.phase_end_ms[:] = NEVER_MS  # parked: no trip starts on its own
    return fleet


async def finished(service: CommandService, command_id, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        cmd = await service.get(command_id)
        if cmd.state.terminal or time.monotonic() > deadline:
            return cmd
        await asyncio.sleep(0.05)


async def test_a_command_queued_for_a_sleeping_lock_arrives_with_its_next_uplink_once(
    pg_dsn, mosquitto, topic_root
):
    devices = [("lock-0001", "bike-0001", "ebike")]
    tokens = await provision(pg_dsn, devices)
    async with gateway_with_commands(pg_dsn, mosquitto, topic_root) as (gw, service):
        fleet = sleeping_locks(gw.port, tokens)
        try:
            await fleet.run_round()  # first wake: the gateway now knows it talks CoAP
            assert fleet.stats.responses == {"2.04": 1}
            assert fleet.model.locked[0]

            unlock = await service.submit(
                CommandRequest(
                    device_id="lock-0001",
                    type="unlock",
                    idempotency_key="ride-1",
                    requested_by="test",
                )
            )
            await asyncio.sleep(0.5)
            assert (await service.get(unlock.id)).state is CommandState.QUEUED, (
                "a sleeping device is not pushed to: the command waits for its uplink"
            )

            await fleet.run_round()  # wakes: 2.04 carries the unlock; it posts the result
            done = await finished(service, unlock.id)
            assert done.state is CommandState.SUCCEEDED and done.device_status == "succeeded"
            assert not fleet.model.locked[0]
            assert fleet.firmware.stats.command_executions[("lock-0001", str(unlock.id))] == 1
            assert fleet.stats.commands_received == 1 and fleet.stats.results_posted == 1

            for _ in range(3):  # later uplinks carry nothing
                await fleet.run_round()
            assert fleet.stats.commands_received == 1
            assert metric(gw.registry, "fleetgate_coap_commands_delivered_total") == 1
            assert (await service.get(unlock.id)).attempts == 1
        finally:
            fleet.close()


async def test_a_lost_response_is_replayed_with_the_same_command_and_not_handed_over_again(
    pg_dsn, mosquitto, topic_root
):
    """The device's 2.04 (with the command) is lost; it retransmits the same CON and gets the
    same response from the message layer, not a second hand-over."""
    devices = [("lock-0001", "bike-0001", "ebike")]
    tokens = await provision(pg_dsn, devices)
    async with (
        gateway_with_commands(pg_dsn, mosquitto, topic_root) as (gw, service),
        coap_client() as ctx,
    ):
        uri = gw.uri("lock-0001", tokens["lock-0001"])
        t = now_ms() - 10_000
        assert (await post(ctx, uri, orjson.dumps(sample(t)), 50)).code == aiocoap.CHANGED
        locate = await service.submit(
            CommandRequest(
                device_id="lock-0001", type="locate", idempotency_key="find-me", requested_by="test"
            )
        )

        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Raw(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Raw, remote_addr=("127.0.0.1", gw.port))
        try:
            msg = aiocoap.Message(
                code=aiocoap.POST,
                payload=orjson.dumps(sample(t + 1000)),
                _mtype=aiocoap.CON,
                _mid=0x4242,
                _token=b"\x0a\x0b",
            )
            msg.opt.uri_path = ("fg", "v1", "lock-0001", "telemetry")
            msg.opt.uri_query = (f"t={tokens['lock-0001']}",)
            msg.opt.content_format = 50
            transport.sendto(msg.encode())
            first = await _response(received)
            transport.sendto(msg.encode())  # "the response never arrived"
            replay = await asyncio.wait_for(received.get(), 5)
        finally:
            transport.close()
        response = aiocoap.Message.decode(first)
        assert response.code == aiocoap.CHANGED and int(response.opt.content_format) == 50
        assert orjson.loads(response.payload)["id"] == str(locate.id)
        if aiocoap.Message.decode(replay).code != aiocoap.EMPTY:
            assert replay == first
        sent = await service.get(locate.id)
        assert sent.state is CommandState.SENT and sent.attempts == 1

        # The device answers; its next uplink (a new message) gets no command.
        result = orjson.dumps({"id": str(locate.id), "status": "succeeded", "t": t + 2000})
        resp = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"], "cmd/result"), result, 50)
        assert resp.code == aiocoap.CHANGED and resp.payload == b""
        assert (await finished(service, locate.id)).state is CommandState.SUCCEEDED
        resp = await post(ctx, uri, orjson.dumps(sample(t + 3000)), 50)
        assert resp.code == aiocoap.CHANGED and resp.payload == b""

        bad = await post(
            ctx, gw.uri("lock-0001", tokens["lock-0001"], "cmd/result"), b'{"status": "maybe"}', 50
        )
        assert bad.code == aiocoap.BAD_REQUEST and bad.payload.startswith(b"bad_structure")


async def test_a_result_of_a_command_nobody_knows_gets_2_04_and_changes_nothing(
    pg_dsn, mosquitto, topic_root
):
    """Found by benchmarks/fuzz.py: the service ignored the result (as on MQTT) but the ingress
    answered 5.00, because reading the unknown command back raised CommandNotFound."""
    tokens = await provision(pg_dsn, [("lock-0001", "bike-0001", "ebike")])
    async with (
        gateway_with_commands(pg_dsn, mosquitto, topic_root) as (gw, service),
        coap_client() as ctx,
    ):
        result = orjson.dumps({"id": str(uuid.uuid4()), "status": "succeeded", "t": now_ms()})
        resp = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"], "cmd/result"), result, 50)
        assert resp.code == aiocoap.CHANGED and resp.payload == b""
        assert (await service.list(device_id="lock-0001")).items == []


async def test_a_result_at_a_process_that_does_not_dispatch_gets_5_03_with_max_age(pg_dsn):
    """Another process holds the dispatcher lease: the device keeps its result and sends it
    again after Max-Age (it got 5.01 Not Implemented, which a device treats as final)."""
    tokens = await provision(pg_dsn, [("lock-0001", "bike-0001", "ebike")])
    async with coap_gateway(pg_dsn, retry_after_s=7) as gw, coap_client() as ctx:
        result = orjson.dumps({"id": str(uuid.uuid4()), "status": "succeeded", "t": now_ms()})
        resp = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"], "cmd/result"), result, 50)
    assert resp.code == aiocoap.SERVICE_UNAVAILABLE and resp.opt.max_age == 7
    assert resp.payload.startswith(b"commands_unavailable")


async def _response(received: asyncio.Queue) -> bytes:
    while True:
        data = await asyncio.wait_for(received.get(), 10)
        if aiocoap.Message.decode(data).code != aiocoap.EMPTY:
            return data


async def test_cbor_devices_get_their_command_in_cbor_and_accept_wins(pg_dsn):
    """Without a command service: the pull side against a test double."""
    tokens = await provision(pg_dsn, [("lock-0001", "bike-0001", "ebike")])
    handed: list[str] = []

    class Mailbox:
        def __init__(self) -> None:
            self.queue = [
                {"id": "c1", "type": "lock", "params": {}, "deadline": 1},
                {"id": "c2", "type": "unlock", "params": {}, "deadline": 2},
            ]

        async def take_pending_for(self, device_id: str):
            if not self.queue:
                return None
            handed.append(device_id)
            return self.queue.pop(0)

        async def record_result(self, device_id: str, payload: bytes):
            raise AssertionError("not used here")

    import cbor2

    async with coap_gateway(pg_dsn, commands=Mailbox()) as gw, coap_client() as ctx:
        uri = gw.uri("lock-0001", tokens["lock-0001"])
        t = now_ms() - 5000
        from telemetry import senml

        resp = await post(ctx, uri, senml.encode_pack([sample(t)]), 112)
        assert int(resp.opt.content_format) == 60 and cbor2.loads(resp.payload)["id"] == "c1"
        resp = await post(ctx, uri, senml.encode_pack([sample(t + 1)]), 112, accept=50)
        assert int(resp.opt.content_format) == 50 and orjson.loads(resp.payload)["id"] == "c2"
        resp = await post(ctx, uri, orjson.dumps(sample(t + 2)), 50)
        assert resp.payload == b"" and handed == ["lock-0001", "lock-0001"]
