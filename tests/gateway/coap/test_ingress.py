"""The CoAP ingress against PostgreSQL, with aiocoap's client, libcoap's coap-client and raw UDP:
what lands, what is refused with which code, durability (2.04 only after the commit), duplicates
and database outages."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from pathlib import Path

import aiocoap
import cbor2
import orjson
import psycopg
import pytest

from telemetry import senml
from telemetry.plausibility import PlausibilityFilter
from tests.batches import now_ms
from tests.coap_devices import coap_client, coap_gateway, post, provision, sample
from tests.harness import count_positions, eventually, metric, stored_keys
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.integration

COAP_CLIENTS = ("coap-client", "coap-client-notls", "coap-client-openssl", "coap-client-gnutls")


# --- a client the project did not write: aiocoap ----------------------------------------------


async def test_senml_cbor_senml_json_json_and_cbor_uplinks_land_after_their_2_04(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms() - 60_000
    bodies = [  # (content-format, payload, samples in it)
        (112, senml.encode_pack([sample(t)], base_name="urn:dev:lock-0001:"), 1),
        (110, senml.encode_pack([sample(t + 1000), sample(t + 2000, locked=False)], cbor=False), 2),
        (50, orjson.dumps(sample(t + 3000)), 1),
        (60, cbor2.dumps([sample(t + 4000), sample(t + 5000)]), 2),
        (None, orjson.dumps(sample(t + 6000)), 1),  # no content-format: sniffed, as on MQTT
    ]
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        expected = 0
        for cf, payload, n in bodies:
            resp = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"]), payload, cf)
            assert resp.code == aiocoap.CHANGED, resp.payload
            expected += n
            # Durable before the answer: the rows are there the moment the 2.04 is.
            assert await count_positions(pg_dsn) == expected
        assert metric(
            gw.registry, "fleetgate_messages_received_total", transport="coap", kind="telemetry"
        ) == len(bodies)
    keys = sorted(k for _, k in await stored_keys(pg_dsn))
    assert keys == [t + 1000 * k for k in range(7)]
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        locked = await (await conn.execute("SELECT locked FROM positions ORDER BY time")).fetchall()
    assert [r[0] for r in locked] == [True, True, False, True, True, True, True]


async def test_malformed_and_invalid_uplinks_get_4_00_with_the_reason_and_store_nothing(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms()
    cases = {
        "malformed_cbor": (112, b"\x9f\x01"),
        "malformed_json": (110, b'[{"n": "lat"'),
        "bad_structure": (112, cbor2.dumps({"not": "a pack"})),
        "wrong_type": (110, orjson.dumps([{"bt": t / 1000, "n": "soc_pct", "u": "degC", "v": 20}])),
        "soc_out_of_range": (50, orjson.dumps(sample(t, soc_pct=140))),
        "lat_out_of_range": (60, cbor2.dumps(sample(t, lat=95.0))),
        "missing_field": (50, orjson.dumps({"lat": 52.5, "lon": 13.4})),
        "time_in_future": (50, orjson.dumps(sample(t + 86_400_000))),
        "unknown_encoding": (None, b"hello"),
    }
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        uri = gw.uri("lock-0001", tokens["lock-0001"])
        for reason, (cf, payload) in cases.items():
            resp = await post(ctx, uri, payload, cf)
            assert resp.code == aiocoap.BAD_REQUEST, reason
            assert resp.payload.decode().startswith(f"{reason}: "), resp.payload
            assert (
                metric(
                    gw.registry, "fleetgate_samples_rejected_total", reason=reason, transport="coap"
                )
                == 1
            )
        resp = await post(ctx, uri, b'{"t": 1}', 11542)  # LwM2M TLV: not ours
        assert resp.code == aiocoap.UNSUPPORTED_CONTENT_FORMAT
        resp = await post(
            ctx,
            gw.uri("lock-0001", tokens["lock-0001"], "event"),
            senml.encode_pack([sample(t)]),
            112,
        )
        assert resp.code == aiocoap.UNSUPPORTED_CONTENT_FORMAT, "SenML carries telemetry only"
        resp = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"], "status"), b"{}", 50)
        assert resp.code == aiocoap.NOT_FOUND
        # In a batch the good samples are kept (as on MQTT): 2.04.
        resp = await post(ctx, uri, orjson.dumps([sample(t - 5), sample(t - 4, soc_pct=-3)]), 50)
        assert resp.code == aiocoap.CHANGED
        assert (
            metric(
                gw.registry,
                "fleetgate_samples_rejected_total",
                reason="soc_out_of_range",
                transport="coap",
            )
            == 2
        )
    assert [k for _, k in await stored_keys(pg_dsn)] == [t - 5]


async def test_refusals_before_the_pipeline_are_counted_under_mqtts_reason_names(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms()
    payload = orjson.dumps(sample(t))
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        token = tokens["lock-0001"]
        refusals = [  # (uri, content-format, expected code)
            (gw.uri("lock-0001", token), 11542, aiocoap.UNSUPPORTED_CONTENT_FORMAT),
            (gw.uri("lock-0001", token, "event"), 112, aiocoap.UNSUPPORTED_CONTENT_FORMAT),
            (gw.uri("lock-0001", "x" * 32), 50, aiocoap.UNAUTHORIZED),
            (gw.uri("lock-0001", None), 50, aiocoap.UNAUTHORIZED),
            (gw.uri("bad+id", token), 50, aiocoap.UNAUTHORIZED),
            (gw.uri("lock-0001", token, "positions"), 50, aiocoap.NOT_FOUND),
        ]
        for uri, cf, code in refusals:
            assert (await post(ctx, uri, payload, cf)).code == code, uri
        from firmware_sim.coap import CoapEndpoint

        device = await CoapEndpoint.open("127.0.0.1", gw.port, block_size=1024)
        try:
            too_big = await device.post(
                ("fg", "v1", "lock-0001", "telemetry"),
                b"[" + b" " * (300 * 1024) + b"]",
                query=(f"t={token}",),
                content_format=50,
            )
        finally:
            device.close()
        assert too_big.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
        # Not uplinks: a GET, and a command result (no sample), are answered and not counted.
        get = aiocoap.Message(code=aiocoap.GET, uri=gw.uri("lock-0001", token))
        assert (await ctx.request(get).response).code == aiocoap.METHOD_NOT_ALLOWED
        result = await post(ctx, gw.uri("lock-0001", "x" * 32, "cmd/result"), b"{}", 50)
        assert result.code == aiocoap.UNAUTHORIZED

        def rejected(transport="coap", **labels) -> float:
            return metric(
                gw.registry, "fleetgate_samples_rejected_total", transport=transport, **labels
            )

        assert rejected(reason="unknown_encoding") == 1
        assert (
            metric(
                gw.registry,
                "fleetgate_device_events_rejected_total",
                reason="unknown_encoding",
                transport="coap",
            )
            == 1
        )
        assert rejected(reason="unauthorized") == 2
        assert rejected(reason="bad_topic") == 2
        assert rejected(reason="payload_too_large") == 1
        assert rejected() == 6
        assert metric(gw.registry, "fleetgate_samples_received_total", transport="coap") == 6
        assert metric(gw.registry, "fleetgate_messages_received_total", transport="coap") == 7
    assert await count_positions(pg_dsn) == 0


async def test_a_datagram_with_an_option_that_is_not_utf8_is_dropped_with_a_warning(pg_dsn, caplog):
    """Found by benchmarks/fuzz.py: aiocoap 0.4.17 lets a UnicodeDecodeError out of its receive
    callback for a Uri-Query or Uri-Path that is not UTF-8, and asyncio logged an error with a
    traceback for every such datagram. Now it is dropped with a warning, like garbage."""
    tokens = await provision(pg_dsn)
    t = now_ms()
    async with coap_gateway(pg_dsn) as gw:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Raw(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.put_nowait(data)

        def uplink(mid: int, path: tuple[str, ...], query: str) -> bytes:
            msg = aiocoap.Message(
                code=aiocoap.POST,
                payload=orjson.dumps(sample(t)),
                _mtype=aiocoap.CON,
                _mid=mid,
                _token=mid.to_bytes(2, "big"),
            )
            msg.opt.uri_path = path
            msg.opt.uri_query = (query,)
            msg.opt.content_format = 50
            return msg.encode()

        path = ("fg", "v1", "lock-0001", "telemetry")
        transport, _ = await loop.create_datagram_endpoint(Raw, remote_addr=("127.0.0.1", gw.port))
        try:
            with caplog.at_level(logging.WARNING):
                transport.sendto(uplink(1, path, "t=ZZ").replace(b"t=ZZ", b"t=\xff\xfe"))
                transport.sendto(
                    uplink(
                        2, ("fg", "v1", "lockZ0001", "telemetry"), f"t={tokens['lock-0001']}"
                    ).replace(b"lockZ", b"lock\xff")
                )
                transport.sendto(uplink(3, path, f"t={tokens['lock-0001']}"))
                answer = aiocoap.Message.decode(await _final_response(received))
        finally:
            transport.close()
    assert answer.code == aiocoap.CHANGED and answer.token == (3).to_bytes(2, "big")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [
        r.getMessage() for r in caplog.records if r.getMessage() == "coap_datagram_undecodable"
    ] == ["coap_datagram_undecodable"] * 2
    assert await stored_keys(pg_dsn) == [("lock-0001", t)]


async def test_device_events_are_posted_like_telemetry(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms() - 5000
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        uri = gw.uri("lock-0001", tokens["lock-0001"], "event")
        resp = await post(
            ctx,
            uri,
            cbor2.dumps({"t": t, "type": "tamper", "detail": {"sensor": "lock_cable"}}),
            60,
        )
        assert resp.code == aiocoap.CHANGED
        bad = await post(ctx, uri, orjson.dumps({"t": t, "type": "Not An Event"}), 50)
        assert bad.code == aiocoap.BAD_REQUEST and bad.payload.startswith(b"wrong_type")
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        events = await (
            await conn.execute("SELECT source, type, detail FROM events ORDER BY source")
        ).fetchall()
    assert events == [  # the device's event, and the alarm that passes it on
        ("alarm", "alarm.tamper", {"reported": {"sensor": "lock_cable"}}),
        ("device", "tamper", {"sensor": "lock_cable"}),
    ]


async def test_an_event_the_store_cannot_hold_gets_4_00_and_the_next_uplink_lands(pg_dsn):
    """Such an event once reached the store and killed the pipeline's writer: the uplink never
    got its answer, and every later one waited behind it."""
    tokens = await provision(pg_dsn)
    t = now_ms() - 5000
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        events = gw.uri("lock-0001", tokens["lock-0001"], "event")
        for poison in (
            cbor2.dumps({"t": t, "type": "tamper", "detail": {"raw": b"\x01"}}),
            cbor2.dumps({"t": t, "type": "tamper", "detail": {"n": 2**64}}),
        ):
            bad = await post(ctx, events, poison, 60)
            assert bad.code == aiocoap.BAD_REQUEST and bad.payload.startswith(b"bad_structure")
        ok = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"]), orjson.dumps(sample(t)), 50)
        assert ok.code == aiocoap.CHANGED
    assert await count_positions(pg_dsn) == 1


async def test_a_message_the_gateway_fails_on_is_quarantined_and_answered_2_04(pg_dsn, monkeypatch):
    """A fault of the gateway's own (planted in the plausibility filter: no payload reaches such a
    fault once validation is right): the uplink is kept verbatim and answered, the next stored."""

    tokens = await provision(pg_dsn)
    t = now_ms() - 5000
    apply = PlausibilityFilter.apply

    def failing_apply(self, batch):
        if (batch.time_ms == t).any():
            raise RuntimeError("planted fault of the plausibility filter")
        return apply(self, batch)

    monkeypatch.setattr(PlausibilityFilter, "apply", failing_apply)
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        uri = gw.uri("lock-0001", tokens["lock-0001"])
        kept = await post(ctx, uri, orjson.dumps(sample(t)), 50)
        assert kept.code == aiocoap.CHANGED, "kept in quarantine: the device may delete it"
        ok = await post(ctx, uri, orjson.dumps(sample(t + 1000)), 50)
        assert ok.code == aiocoap.CHANGED
        assert (
            metric(
                gw.registry,
                "fleetgate_samples_rejected_total",
                reason="processing_failed",
                transport="coap",
            )
            == 1
        )
    assert await count_positions(pg_dsn) == 1
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        quarantined = await (
            await conn.execute("SELECT device_id, transport, payload FROM quarantined_messages")
        ).fetchall()
    assert [(d, tr, orjson.loads(p)["t"]) for d, tr, p in quarantined] == [("lock-0001", "coap", t)]


async def test_tokens_are_per_device_and_a_wrong_one_gets_4_01_and_stores_nothing(pg_dsn):
    tokens = await provision(pg_dsn)
    payload = orjson.dumps(sample(now_ms()))
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        for device_id, token in [
            ("lock-0002", tokens["lock-0001"]),  # A's token for B
            ("lock-0001", None),  # no token
            ("lock-0001", "x" * 32),  # a guess
            ("ghost-7", tokens["lock-0001"]),  # unknown device
            ("bad+id", tokens["lock-0001"]),
        ]:  # not a device id
            resp = await post(ctx, gw.uri(device_id, token), payload, 50)
            assert resp.code == aiocoap.UNAUTHORIZED, (device_id, resp.code)
            assert resp.payload == b"", "a refusal reveals nothing about the device"
        resp = await post(ctx, gw.uri("lock-0002", tokens["lock-0002"]), payload, 50)
        assert resp.code == aiocoap.CHANGED
    assert await stored_keys(pg_dsn) == [("lock-0002", orjson.loads(payload)["t"])]


async def test_a_batch_larger_than_a_datagram_arrives_in_block1_blocks(pg_dsn):
    tokens = await provision(pg_dsn)
    t0 = now_ms() - 3_600_000
    batch = [sample(t0 + k * 5000, lat=52.5 + k * 1e-5) for k in range(400)]
    payload = senml.encode_pack(batch)
    assert len(payload) > 4 * 1024
    async with coap_gateway(pg_dsn) as gw, coap_client() as ctx:
        resp = await post(ctx, gw.uri("lock-0001", tokens["lock-0001"]), payload, 112)
        assert resp.code == aiocoap.CHANGED
        assert (
            metric(gw.registry, "fleetgate_coap_responses_total", resource="telemetry", code="2.31")
            > 0
        )
    assert len(await stored_keys(pg_dsn)) == 400


async def test_an_oversized_block1_transfer_gets_4_13_with_the_limit_in_size1(pg_dsn):
    tokens = await provision(pg_dsn)
    async with coap_gateway(pg_dsn) as gw:
        from firmware_sim.coap import CoapEndpoint

        device = await CoapEndpoint.open("127.0.0.1", gw.port, block_size=1024)
        try:
            too_big = b"[" + b" " * (300 * 1024) + b"]"
            resp = await device.post(
                ("fg", "v1", "lock-0001", "telemetry"),
                too_big,
                query=(f"t={tokens['lock-0001']}",),
                content_format=50,
            )
        finally:
            device.close()
        assert resp.code == aiocoap.REQUEST_ENTITY_TOO_LARGE
        assert resp.payload.startswith(b"payload_too_large")
    assert await count_positions(pg_dsn) == 0


# --- duplicates: a confirmable request sent again with the same message id ---------------------


async def test_a_retransmitted_con_gets_the_same_response_and_is_processed_once(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms()
    async with coap_gateway(pg_dsn) as gw:
        loop = asyncio.get_running_loop()
        received: asyncio.Queue[bytes] = asyncio.Queue()

        class Raw(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                received.put_nowait(data)

        transport, _ = await loop.create_datagram_endpoint(Raw, remote_addr=("127.0.0.1", gw.port))
        try:
            msg = aiocoap.Message(
                code=aiocoap.POST,
                payload=orjson.dumps(sample(t)),
                _mtype=aiocoap.CON,
                _mid=0x1234,
                _token=b"\x01\x02\x03\x04",
            )
            msg.opt.uri_path = ("fg", "v1", "lock-0001", "telemetry")
            msg.opt.uri_query = (f"t={tokens['lock-0001']}",)
            msg.opt.content_format = 50
            wire = msg.encode()
            transport.sendto(wire)
            transport.sendto(wire)  # at once: before the first one is answered
            first = await _final_response(received)
            transport.sendto(wire)  # after the answer (the ACK was "lost")
            again = await asyncio.wait_for(received.get(), 5)
        finally:
            transport.close()
        assert aiocoap.Message.decode(first).code == aiocoap.CHANGED
        replay = aiocoap.Message.decode(again)
        assert replay.mtype == aiocoap.ACK and replay.mid == 0x1234
        if replay.code != aiocoap.EMPTY:  # piggybacked: the very same response again
            assert again == first
        assert (
            metric(
                gw.registry, "fleetgate_messages_received_total", transport="coap", kind="telemetry"
            )
            == 1
        ), "processed once"
        assert (
            metric(gw.registry, "fleetgate_coap_responses_total", resource="telemetry", code="2.04")
            == 1
        )
    assert await stored_keys(pg_dsn) == [("lock-0001", t)]


async def _final_response(received: asyncio.Queue) -> bytes:
    """The piggybacked response, or the separate one after an empty ACK."""
    while True:
        data = await asyncio.wait_for(received.get(), 10)
        if aiocoap.Message.decode(data).code != aiocoap.EMPTY:
            return data


# --- shutdown and backpressure ----------------------------------------------------------------


async def test_a_graceful_stop_commits_and_answers_what_it_holds_then_refuses_new_uplinks(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms() - 1000
    async with coap_client() as ctx:
        async with coap_gateway(pg_dsn, max_age_ms=2000) as gw:  # batches held for 2 s
            uri = gw.uri("lock-0001", tokens["lock-0001"])
            held = asyncio.create_task(post(ctx, uri, orjson.dumps(sample(t)), 50))
            await eventually(lambda: gw.pipeline.unacknowledged == 1)
            # What Gateway.run does on stop: pause the ingress, commit, answer, close.
            gw.coap.pause()
            late = await post(ctx, uri, orjson.dumps(sample(t + 1)), 50)
            assert late.code == aiocoap.SERVICE_UNAVAILABLE and late.payload == b"shutting_down"
        assert (await held).code == aiocoap.CHANGED
    assert await stored_keys(pg_dsn) == [("lock-0001", t)]


async def test_when_the_pipeline_holds_too_much_uplinks_get_5_03_busy(pg_dsn):
    tokens = await provision(pg_dsn)
    t = now_ms() - 1000
    async with (
        coap_gateway(pg_dsn, max_age_ms=1000, max_pending=1, busy_retry_after_s=3) as gw,
        coap_client() as ctx,
    ):
        first = asyncio.create_task(
            post(ctx, gw.uri("lock-0001", tokens["lock-0001"]), orjson.dumps(sample(t)), 50)
        )
        await eventually(lambda: gw.pipeline.unacknowledged == 1)
        busy = await post(
            ctx, gw.uri("lock-0002", tokens["lock-0002"]), orjson.dumps(sample(t)), 50
        )
        assert busy.code == aiocoap.SERVICE_UNAVAILABLE and busy.opt.max_age == 3
        assert busy.payload == b"busy"
        assert (await first).code == aiocoap.CHANGED


# --- the database goes away ----------------------------------------------------------------------


async def test_while_the_database_is_away_uplinks_get_5_03_and_every_2_04_is_stored(pg_dsn):
    tokens = await provision(pg_dsn)
    proxy = await TcpProxy.start_for(pg_dsn)
    t0 = now_ms() - 600_000
    changed: list[int] = []
    try:
        async with (
            coap_gateway(proxy.dsn(pg_dsn), response_timeout_s=1.0, retry_after_s=17) as gw,
            coap_client() as ctx,
        ):
            uri = gw.uri("lock-0001", tokens["lock-0001"])

            async def send(k: int) -> aiocoap.Message:
                resp = await post(ctx, uri, orjson.dumps(sample(t0 + k * 1000)), 50)
                if resp.code == aiocoap.CHANGED:
                    changed.append(t0 + k * 1000)
                return resp

            assert (await send(0)).code == aiocoap.CHANGED
            await proxy.cut()
            first = await send(1)  # waits for the commit, which does not come
            assert first.code == aiocoap.SERVICE_UNAVAILABLE and first.opt.max_age == 17
            await eventually(lambda: metric(gw.registry, "fleetgate_database_up") == 0)
            started = time.monotonic()
            during = await send(2)  # the outage is known: refused at once, not submitted
            assert during.code == aiocoap.SERVICE_UNAVAILABLE and during.opt.max_age == 17
            assert time.monotonic() - started < 0.5
            assert during.payload == b"store_unavailable"
            await proxy.restore()
            await eventually(lambda: metric(gw.registry, "fleetgate_database_up") == 1, timeout=30)
            for k in (1, 2, 3):  # the device sends again what got no 2.04
                assert (await send(k)).code == aiocoap.CHANGED
    finally:
        await proxy.close()
    keys = sorted(k for _, k in await stored_keys(pg_dsn))
    assert set(changed) <= set(keys) and keys == [t0 + k * 1000 for k in range(4)]


# --- a client the project did not write: libcoap's coap-client -----------------------------------


def _coap_client() -> str:
    for name in COAP_CLIENTS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "libcoap's coap-client is not installed (Debian: apt-get install libcoap3-bin; "
        "scripts/setup installs it)"
    )


async def coap_client_post(
    uri: str, payload: bytes, content_format: int | None, tmp_path: Path, *extra: str
) -> tuple[str, bytes]:
    """Run coap-client; (response code, response payload) from its message dump."""
    body = tmp_path / f"body-{time.monotonic_ns()}"
    body.write_bytes(payload)
    args = [_coap_client(), "-m", "post", "-f", str(body), "-B", "20", "-v", "6", *extra]
    if content_format is not None:
        args += ["-t", str(content_format)]
    proc = await asyncio.create_subprocess_exec(
        *args, uri, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    # The last response line of -v 6: "v:1 t:ACK c:2.04 i:... {..} [ ... ] :: 'payload'"
    responses = [
        line
        for line in out.decode(errors="replace").splitlines()
        if " c:" in line and "c:POST" not in line and " c:0.00" not in line
    ]
    assert responses, out.decode()
    last = responses[-1]
    code = last.split(" c:", 1)[1].split()[0]
    payload_text = last.split(" :: ", 1)[1].strip("'") if " :: " in last else ""
    return code, payload_text.encode()


async def test_libcoap_coap_client_uplinks_land_and_refusals_have_the_right_codes(pg_dsn, tmp_path):
    tokens = await provision(pg_dsn)
    t = now_ms() - 30_000
    good = {
        "senml+cbor": (112, senml.encode_pack([sample(t)], base_name="lock-0001/")),
        "senml+json": (110, senml.encode_pack([sample(t + 1000)], cbor=False)),
        "json": (50, orjson.dumps(sample(t + 2000))),
    }
    big = senml.encode_pack([sample(t - 1000 * (k + 1)) for k in range(150)])
    async with coap_gateway(pg_dsn) as gw:
        uri = gw.uri("lock-0001", tokens["lock-0001"])
        for name, (cf, payload) in good.items():
            code, _ = await coap_client_post(uri, payload, cf, tmp_path)
            assert code == "2.04", name
        code, _ = await coap_client_post(uri, big, 112, tmp_path, "-b", "256")
        assert code == "2.04", "Block1 from coap-client"
        assert await count_positions(pg_dsn) == 3 + 150

        code, diag = await coap_client_post(uri, b"\xff\x00garbage", 112, tmp_path)
        assert code == "4.00" and diag.startswith(b"malformed_cbor"), diag
        code, diag = await coap_client_post(uri, orjson.dumps(sample(t, soc_pct=101)), 50, tmp_path)
        assert code == "4.00" and diag.startswith(b"soc_out_of_range")
        code, _ = await coap_client_post(
            gw.uri("lock-0002", tokens["lock-0001"]), orjson.dumps(sample(t + 5000)), 50, tmp_path
        )
        assert code == "4.01", "A's token cannot post for B"
        code, _ = await coap_client_post(
            gw.uri("lock-0001", None), orjson.dumps(sample(t + 6000)), 50, tmp_path
        )
        assert code == "4.01"
        code, _ = await coap_client_post(uri, b"<xml/>", 41, tmp_path)
        assert code == "4.15"
    assert await count_positions(pg_dsn) == 3 + 150
