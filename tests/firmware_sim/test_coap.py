"""The simulator's CoAP devices against a scripted UDP server: retransmission with back-off,
separate responses, Block1, and what a lock does with each answer."""

from __future__ import annotations

import asyncio
import contextlib

import aiocoap
import cbor2
import pytest

from firmware_sim.coap import CoapEndpoint, CoapFleet, CoapFleetOptions, CoapTimeout
from telemetry import senml


class Scripted(asyncio.DatagramProtocol):
    """A CoAP server that answers with a script: reply(request) -> list of messages to send
    (each with a delay), or None to drop the request."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.requests: list[aiocoap.Message] = []
        self.acks: list[aiocoap.Message] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        msg = aiocoap.Message.decode(data)
        if msg.mtype == aiocoap.ACK:
            self.acks.append(msg)
            return
        self.requests.append(msg)
        for delay, out in self.reply(msg, len(self.requests)) or ():
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, out.encode(), addr)


def piggybacked(req: aiocoap.Message, code=aiocoap.CHANGED, payload=b"", **opts):
    m = aiocoap.Message(
        code=code, payload=payload, _mtype=aiocoap.ACK, _mid=req.mid, _token=req.token
    )
    for k, v in opts.items():
        setattr(m.opt, k, v)
    return m


@contextlib.asynccontextmanager
async def server(reply):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: Scripted(reply), local_addr=("127.0.0.1", 0)
    )
    try:
        yield proto, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def endpoint(port: int, **kw) -> CoapEndpoint:
    return await CoapEndpoint.open("127.0.0.1", port, ack_timeout_s=0.05, **kw)


async def test_a_lost_request_is_retransmitted_with_the_same_message_id_and_back_off():
    def reply(req, n):
        return None if n < 3 else [(0, piggybacked(req))]

    async with server(reply) as (srv, port):
        ep = await endpoint(port)
        resp = await ep.post(("fg", "v1", "d", "telemetry"), b"{}", query=("t=x",))
        ep.close()
    assert resp.ok and resp.retransmissions == 2
    assert len({r.mid for r in srv.requests}) == 1 and len({r.token for r in srv.requests}) == 1


async def test_it_gives_up_after_max_retransmit():
    async with server(lambda req, n: None) as (srv, port):
        ep = await endpoint(port, max_retransmit=2)
        with pytest.raises(CoapTimeout):
            await ep.post(("x",), b"{}")
        ep.close()
    assert len(srv.requests) == 3


async def test_a_separate_response_is_acknowledged_even_when_it_overtakes_the_empty_ack():
    def reply(req, n):
        empty = aiocoap.Message(code=aiocoap.EMPTY, _mtype=aiocoap.ACK, _mid=req.mid)
        separate = aiocoap.Message(
            code=aiocoap.CHANGED, payload=b"cmd", _mtype=aiocoap.CON, _mid=0x7777, _token=req.token
        )
        return [(0.0, separate), (0.0, empty)] if n == 1 else [(0.02, empty), (0.05, separate)]

    async with server(reply) as (srv, port):
        ep = await endpoint(port)
        first = await ep.post(("a",), b"1")
        second = await ep.post(("a",), b"2")
        await asyncio.sleep(0.05)
        ep.close()
    assert first.payload == second.payload == b"cmd" and first.separate and second.separate
    assert [a.mid for a in srv.acks] == [0x7777, 0x7777]


async def test_a_large_payload_goes_in_block1_blocks_with_size1_first():
    def reply(req, n):
        block = req.opt.block1
        code = aiocoap.CONTINUE if block.more else aiocoap.CHANGED
        return [(0, piggybacked(req, code, block1=block))]

    payload = bytes(range(256)) * 5
    async with server(reply) as (srv, port):
        ep = await endpoint(port, block_size=256)
        resp = await ep.post(("a",), payload, content_format=60)
        ep.close()
    assert resp.ok
    blocks = [r.opt.block1 for r in srv.requests]
    assert [b.block_number for b in blocks] == [0, 1, 2, 3, 4]
    assert [b.more for b in blocks] == [True] * 4 + [False] and blocks[0].size == 256
    assert srv.requests[0].opt.size1 == len(payload)
    assert b"".join(r.payload for r in srv.requests) == payload
    assert all(int(r.opt.content_format) == 60 for r in srv.requests)


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        (aiocoap.CHANGED, 0),
        (aiocoap.SERVICE_UNAVAILABLE, 1),
        (aiocoap.BAD_REQUEST, 0),
        (aiocoap.UNAUTHORIZED, 0),
    ],
)
async def test_a_lock_keeps_its_sample_only_when_the_gateway_may_take_it_later(code, kept):
    async with server(lambda req, n: [(0, piggybacked(req, code, max_age=30))]) as (srv, port):
        fleet = CoapFleet(
            CoapFleetOptions(vehicles=1, port=port, ack_timeout_s=0.05), {"lock-0001": "tok"}
        )
        await fleet.run_round()
        fleet.close()
    [req] = srv.requests
    assert req.opt.uri_path == ("fg", "v1", "lock-0001", "telemetry")
    assert req.opt.uri_query == ("t=tok",) and int(req.opt.content_format) == 112
    [sample] = senml.to_samples(cbor2.loads(req.payload), 0)
    assert sample["t"] == fleet.model.t_ms
    assert len(fleet.locks[0].buffer) == kept
    assert fleet.stats.responses == {str(code.dotted): 1}
