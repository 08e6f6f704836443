"""One gateway, two transports: MQTT devices and sleeping CoAP devices feed the same pipeline,
each answered only after its samples are committed, counted per transport so that the counts add
up."""

from __future__ import annotations

import socket
import time

import aiocoap
import orjson
import pytest

from fleetgate.embedded import free_port
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry import senml
from tests.coap_devices import coap_client, post, provision
from tests.harness import (
    GatewayProcess,
    eventually,
    gateway_config,
    metric,
    running_gateway,
    sample_sum,
    stored_keys,
)

pytestmark = pytest.mark.integration

DEVICES = [("tcu-1", "car-1", "car"), ("lock-1", "bike-1", "ebike")]


async def test_mqtt_and_coap_devices_share_one_pipeline(mosquitto, pg_dsn, topic_root):
    tokens = await provision(pg_dsn, DEVICES)
    now = int(time.time() * 1000)
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, coap_enabled=True, coap_port=0)
    async with running_gateway(cfg) as (gw, reg):
        car = MqttClient(ConnectOptions(mosquitto.host, mosquitto.port, "tcu-1"))
        await car.connect()
        await car.publish(
            f"{topic_root}/tcu-1/telemetry",
            orjson.dumps({"t": now - 2000, "lat": 52.5, "lon": 13.4}),
            qos=1,
        )
        await car.disconnect()

        pack = senml.encode_pack(
            [{"t": now - 1000, "lat": 52.51, "lon": 13.41, "soc_pct": 55.0, "locked": True}],
            base_name="urn:dev:lock-1:",
        )
        uri = f"coap://127.0.0.1:{gw.coap.port}/{topic_root}/lock-1/telemetry?t={tokens['lock-1']}"
        async with coap_client() as ctx:
            answer = await post(ctx, uri, pack, content_format=112)
            # 2.04 only after the commit: the row is there when the answer arrives.
            assert answer.code == aiocoap.CHANGED, answer.payload
            assert ("lock-1", now - 1000) in set(await stored_keys(pg_dsn))
            refused = await post(
                ctx, uri.replace(tokens["lock-1"], "not-the-token"), pack, content_format=112
            )
            assert refused.code == aiocoap.UNAUTHORIZED
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 2)
        assert (
            metric(reg, "fleetgate_messages_received_total", transport="mqtt", kind="telemetry")
            == 1
        )
        # The refused one too, as a rejected message: received, never stored.
        assert (
            metric(reg, "fleetgate_messages_received_total", transport="coap", kind="telemetry")
            == 2
        )
        assert (
            metric(reg, "fleetgate_samples_rejected_total", reason="unauthorized", transport="coap")
            == 1
        )
    assert sorted(await stored_keys(pg_dsn)) == [("lock-1", now - 1000), ("tcu-1", now - 2000)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fix(t: int, **over) -> dict:
    return {"t": t, "lat": 52.5, "lon": 13.4, "soc_pct": 70.0, **over}


async def test_received_is_stored_plus_duplicate_plus_rejected_on_both_transports(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """A mixed run of valid, duplicate and refused uplinks on each transport, against
    `fleetgate run`; the counts read from its /metrics. Rejected device events and presence
    messages are counted apart: they are no samples."""
    tokens = await provision(pg_dsn, DEVICES)
    coap_port = free_udp_port()
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        "gw-numbers",
        tmp_path / "gw.log",
        metrics_port=free_port(),
        FLEETGATE_COAP_ENABLED="true",
        FLEETGATE_COAP_HOST="127.0.0.1",
        FLEETGATE_COAP_PORT=coap_port,
    ).start()
    t0 = int(time.time() * 1000) - 60_000
    try:
        await gw.wait_subscribed()
        car = MqttClient(ConnectOptions(mosquitto.host, mosquitto.port, "tcu-1"))
        await car.connect()
        mqtt = [
            ("telemetry", orjson.dumps([fix(t0 + k * 1000) for k in range(3)])),
            ("telemetry", orjson.dumps([fix(t0 + 3000), fix(t0 + 4000, lat=95.0)])),
            ("telemetry", orjson.dumps(fix(t0))),  # a re-upload: a duplicate
            ("telemetry", b'{"t": 1'),  # malformed_json
            ("event", orjson.dumps({"t": t0, "type": "Not An Event"})),
            ("status", b"not a status"),
        ]
        for kind, payload in mqtt:
            await car.publish(f"{topic_root}/tcu-1/{kind}", payload, qos=1)
        await car.disconnect()

        base = f"coap://127.0.0.1:{coap_port}/{topic_root}/lock-1"
        uri = f"{base}/telemetry?t={tokens['lock-1']}"
        async with coap_client() as ctx:
            answers = [
                await post(ctx, uri, orjson.dumps([fix(t0 + k * 1000) for k in range(3)]), 50),
                await post(
                    ctx, uri, orjson.dumps([fix(t0 + 3000), fix(t0 + 4000, soc_pct=140)]), 50
                ),
                await post(ctx, uri, orjson.dumps(fix(t0)), 50),  # sent again: a duplicate
                await post(ctx, uri, orjson.dumps(fix(t0 + 5000, lat=95.0)), 50),  # 4.00
                await post(ctx, uri, b'{"t": 1', 50),  # 4.00 malformed_json
                await post(ctx, uri, b"<xml/>", 41),  # 4.15 unknown_encoding
                await post(
                    ctx,
                    uri.replace(tokens["lock-1"], "not-the-token"),
                    orjson.dumps(fix(t0 + 6000)),
                    50,
                ),  # 4.01 unauthorized
                await post(
                    ctx, f"{base}/telemetri?t={tokens['lock-1']}", orjson.dumps(fix(t0 + 7000)), 50
                ),  # 4.04 bad_topic
                await post(
                    ctx,
                    f"{base}/event?t={tokens['lock-1']}",
                    orjson.dumps({"t": t0, "type": "Not An Event"}),
                    50,
                ),  # 4.00
            ]
        assert [a.code.dotted for a in answers] == [
            "2.04",
            "2.04",
            "2.04",
            "4.00",
            "4.00",
            "4.15",
            "4.01",
            "4.04",
            "4.00",
        ]

        async def settled() -> bool:
            m = await gw.scrape()
            return (
                sample_sum(m, "fleetgate_messages_received_total", transport="mqtt") == len(mqtt)
                and sample_sum(m, "fleetgate_pipeline_pending_messages") == 0
            )

        await eventually(settled, what="every MQTT message counted")
        m = await gw.scrape()
        counts = {
            transport: {
                name: sample_sum(m, f"fleetgate_samples_{name}_total", transport=transport)
                for name in ("received", "stored", "duplicate", "rejected")
            }
            for transport in ("mqtt", "coap")
        }
        for transport, c in counts.items():
            assert c["received"] == c["stored"] + c["duplicate"] + c["rejected"], transport
        assert {t: (c["received"], c["rejected"]) for t, c in counts.items()} == {
            "mqtt": (7, 2),
            "coap": (11, 6),
        }
        # Between transports, a batch holding both splits stored and duplicate in proportion.
        assert sum(c["stored"] for c in counts.values()) == 8
        assert sum(c["duplicate"] for c in counts.values()) == 2
        for transport in ("mqtt", "coap"):
            assert (
                sample_sum(
                    m,
                    "fleetgate_device_events_rejected_total",
                    reason="wrong_type",
                    transport=transport,
                )
                == 1
            )
        assert (
            sample_sum(
                m, "fleetgate_status_rejected_total", reason="bad_structure", transport="mqtt"
            )
            == 1
        )
    finally:
        gw.stop()


@pytest.mark.parametrize(
    "inserted,duplicates,sizes",
    [
        (1, 2, {"mqtt": 1, "coap": 2}),
        (8, 2, {"mqtt": 5, "coap": 5}),
        (3, 4, {"mqtt": 4, "coap": 3}),
        (0, 7, {"mqtt": 2, "coap": 5}),
        (7, 0, {"mqtt": 6, "coap": 1}),
        (4, 1, {"coap": 5}),
    ],
)
def test_a_batch_of_both_transports_splits_its_counts_so_that_each_transport_adds_up(
    inserted, duplicates, sizes
):
    """The store counts a batch's new rows, not which transport brought them; the split must
    keep stored + duplicate = samples for each transport, whatever the proportions."""
    from gateway.pipeline import _stored_and_duplicates

    stored, duplicate = _stored_and_duplicates(inserted, duplicates, sizes)
    assert {t: stored[t] + duplicate[t] for t in sizes} == sizes
    assert sum(stored.values()) == inserted and sum(duplicate.values()) == duplicates
    assert all(v >= 0 for v in (*stored.values(), *duplicate.values()))
