"""One gateway, two transports: MQTT devices and sleeping CoAP devices feed the same pipeline,
each answered only after its samples are committed, counted per transport."""

from __future__ import annotations

import time

import aiocoap
import orjson
import pytest

from fleetgate.mqtt import MqttClient
from telemetry import senml
from tests.harness import eventually, gateway_config, metric, running_gateway, stored_keys
from tests.test_coap_ingress import coap_client, post, provision

pytestmark = pytest.mark.integration

DEVICES = [("tcu-1", "car-1", "car"), ("lock-1", "bike-1", "ebike")]


async def test_mqtt_and_coap_devices_share_one_pipeline(mosquitto, pg_dsn, topic_root):
    tokens = await provision(pg_dsn, DEVICES)
    now = int(time.time() * 1000)
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, coap_enabled=True, coap_port=0)
    async with running_gateway(cfg) as (gw, reg):
        car = MqttClient(mosquitto.host, mosquitto.port, client_id="tcu-1")
        await car.connect()
        await car.publish(f"{topic_root}/tcu-1/telemetry",
                          orjson.dumps({"t": now - 2000, "lat": 52.5, "lon": 13.4}), qos=1)
        await car.disconnect()

        pack = senml.encode_pack([{"t": now - 1000, "lat": 52.51, "lon": 13.41, "soc_pct": 55.0,
                                   "locked": True}], base_name="urn:dev:lock-1:")
        uri = f"coap://127.0.0.1:{gw.coap.port}/{topic_root}/lock-1/telemetry?t={tokens['lock-1']}"
        async with coap_client() as ctx:
            answer = await post(ctx, uri, pack, content_format=112)
            # 2.04 only after the commit: the row is there when the answer arrives.
            assert answer.code == aiocoap.CHANGED, answer.payload
            assert ("lock-1", now - 1000) in set(await stored_keys(pg_dsn))
            refused = await post(ctx, uri.replace(tokens["lock-1"], "not-the-token"),
                                 pack, content_format=112)
            assert refused.code == aiocoap.UNAUTHORIZED
        await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 2)
        assert metric(reg, "fleetgate_messages_received_total", transport="mqtt",
                      kind="telemetry") == 1
        assert metric(reg, "fleetgate_messages_received_total", transport="coap",
                      kind="telemetry") == 1
    assert sorted(await stored_keys(pg_dsn)) == [("lock-1", now - 1000), ("tcu-1", now - 2000)]
