"""Legacy devices speaking a payload dialect, through the real broker, gateway and database: each
shipped dialect stored exactly as the native protocol stores the same samples, garbage on a
dialect topic counted by reason without stalling anything."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest

from firmware_sim import Fleet, FleetOptions, Misbehaviour
from telemetry.decoder import REASONS
from telemetry.dialect import SHIPPED, load_dialects
from tests.dialect_traffic import as_dialect_can_say, encoder, full_samples, shipped_path
from tests.harness import (
    GatewayProcess,
    eventually,
    gateway_config,
    metric,
    register,
    running_gateway,
    stored_at_least,
    stored_keys,
)
from tests.mqtt_devices import device
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration

# One legacy device per shipped dialect, and its native twin sending the same samples.
LEGACY = [(f"legacy-{name}", f"veh-legacy-{name}", "ebike") for name in SHIPPED]
TWINS = [(f"twin-{name}", f"veh-twin-{name}", "ebike") for name in SHIPPED]
_ROW = (
    "SELECT (extract(epoch FROM p.time) * 1000)::bigint AS t, lat, lon, speed_kmh, heading_deg,"
    " soc_pct, pack_v, pack_a, aux_v, odometer_m, locked, ignition, immobilised, charging, flags"
    " FROM positions p JOIN vehicles v ON v.id = p.vehicle WHERE v.device_id = %s ORDER BY p.time"
)


async def _rows(dsn: str, device_id: str) -> list[dict]:
    return await fetch(dsn, _ROW, device_id)


async def _publish(broker, device_id: str, topic: str, payloads: list[bytes]) -> None:
    client = await device(broker, device_id)
    for body in payloads:
        await client.publish(topic, body, qos=1)
    await client.disconnect()


async def test_each_shipped_dialect_is_stored_as_the_native_protocol_stores_it(
    mosquitto, pg_dsn, topic_root
):
    await register(pg_dsn, LEGACY + TWINS)
    t0 = int(time.time() * 1000) - 60_000
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, mqtt_dialects=load_dialects(SHIPPED))
    async with running_gateway(cfg):
        for k, name in enumerate(SHIPPED):
            samples = full_samples(t0, 12, i=k)
            enc = encoder(name)
            legacy_id, twin_id = LEGACY[k][0], TWINS[k][0]
            # The simulator's encoder, batches of 1 and 5 samples per message.
            bodies = [enc.encode(samples[j : j + 1]) for j in range(6)]
            bodies += [enc.encode(samples[6:11]), enc.encode(samples[11:])]
            await _publish(mosquitto, legacy_id, enc.topic(legacy_id), bodies)
            native = [orjson.dumps(s) for s in as_dialect_can_say(samples, name)]
            await _publish(mosquitto, twin_id, f"{topic_root}/{twin_id}/telemetry", native)
        for (legacy_id, _, _), (twin_id, _, _) in zip(LEGACY, TWINS):
            await eventually(lambda d=legacy_id: _stored(pg_dsn, d, 12), what=f"{legacy_id} stored")
            await eventually(lambda d=twin_id: _stored(pg_dsn, d, 12), what=f"{twin_id} stored")
    for (legacy_id, _, _), (twin_id, _, _) in zip(LEGACY, TWINS):
        got, want = await _rows(pg_dsn, legacy_id), await _rows(pg_dsn, twin_id)
        assert len(got) == 12
        for g, w in zip(got, want):
            # km -> m twice over (encoder, decoder) may move the last bit of a double.
            assert g.pop("odometer_m") == pytest.approx(w.pop("odometer_m"), rel=1e-12)
            assert g == w


async def _stored(dsn: str, device_id: str, n: int) -> bool:
    return len(await _rows(dsn, device_id)) >= n


async def test_garbage_on_a_dialect_topic_is_counted_and_the_gateway_goes_on(
    mosquitto, pg_dsn, topic_root
):
    legacy_id = LEGACY[SHIPPED.index("traccar-osmand")][0]
    await register(pg_dsn, LEGACY[:2])
    now = int(time.time() * 1000)
    enc = encoder("traccar-osmand")
    topic = enc.topic(legacy_id)
    garbage = [
        b'{"lat": 52.5',  # malformed_json
        b"\xff\x00\x13",  # unknown_encoding
        b' "text"',  # bad_structure
        orjson.dumps({"timestamp": "yesterday", "lat": 52.5, "lon": 13.4}),  # wrong_type
        orjson.dumps({"timestamp": now / 1000, "lat": 152.5, "lon": 13.4}),  # lat_out_of_range
        orjson.dumps({"lat": 52.5, "lon": 13.4}),  # missing_field
    ]
    good = enc.encode(full_samples(now - 5000, 3))
    cfg = gateway_config(
        pg_dsn, mosquitto, topic_root, mqtt_dialects=load_dialects(["traccar-osmand"])
    )
    async with running_gateway(cfg) as (_, reg):
        await _publish(mosquitto, legacy_id, topic, garbage + [good])
        # A topic of the dialect's layout naming an unregistered device.
        await _publish(mosquitto, "stranger", enc.topic("stranger"), [good])
        await eventually(lambda: _stored(pg_dsn, legacy_id, 3), what="good samples stored")
        await eventually(
            lambda: metric(reg, "fleetgate_samples_rejected_total", reason="unknown_device") == 1,
            what="unknown device counted",
        )
        for reason in (
            "malformed_json",
            "unknown_encoding",
            "bad_structure",
            "wrong_type",
            "lat_out_of_range",
            "missing_field",
        ):
            assert metric(reg, "fleetgate_samples_rejected_total", reason=reason) == 1, reason
    assert len(await _rows(pg_dsn, legacy_id)) == 3


async def test_a_misbehaving_simulated_fleet_in_a_dialect_is_stored_exactly(
    mosquitto, pg_dsn, topic_root
):
    """The simulated fleet speaking Traccar's dialect with duplicates, garbage, reconnects and
    out-of-order uploads: exactly the samples the broker acknowledged are stored, each once."""
    fleet = Fleet(
        FleetOptions(
            vehicles=10,
            rate_hz=5.0,
            fast=True,
            samples_per_vehicle=40,
            dialect=str(shipped_path("traccar-osmand")),
            misbehaviour=Misbehaviour(
                duplicate_share=0.03,
                malformed_share=0.02,
                out_of_order_share=1.0,
                disconnects_per_h=150.0,
                offline_s=(2.0, 6.0),
            ),
            seed=31,
            track_keys=True,
            host=mosquitto.host,
            port=mosquitto.port,
            topic_root=topic_root,
            session_expiry_s=30,
        )
    )
    await register(pg_dsn, fleet.registrations())
    cfg = gateway_config(
        pg_dsn, mosquitto, topic_root, mqtt_dialects=load_dialects(["traccar-osmand"])
    )
    async with running_gateway(cfg) as (_, reg):
        await fleet.start()
        await fleet.run()
        stats = await fleet.stop()
        expected = stats.acked_keys()
        assert len(expected) == 10 * 40

        async def all_stored() -> bool:
            return metric(reg, "fleetgate_samples_stored_total") >= len(expected)

        await eventually(all_stored, timeout=30, what="every acknowledged sample stored")
        assert stats.duplicates_sent > 0 and sum(stats.malformed_sent.values()) > 0
        assert sum(metric(reg, "fleetgate_samples_rejected_total", reason=r) for r in REASONS) > 0
    keys = await stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)) and set(keys) == expected


async def test_fleetgate_run_reads_a_dialect_and_a_kill_9_loses_no_acknowledged_sample(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """`fleetgate run` with FLEETGATE_MQTT_DIALECTS (the setting, not a test's config), killed
    with SIGKILL while legacy devices stream and started again: every sample the broker
    acknowledged is stored, once (the dialect's topics are in the same persistent session)."""
    devices = [(f"kill-legacy-{i}", f"veh-kill-legacy-{i}", "ebike") for i in range(5)]
    await register(pg_dsn, devices)
    enc = encoder("traccar-osmand")
    client_id = f"gw-dialect-{uuid.uuid4().hex[:8]}"
    gw = GatewayProcess(
        pg_dsn,
        mosquitto,
        topic_root,
        client_id,
        tmp_path / "gw.log",
        FLEETGATE_MQTT_DIALECTS="traccar-osmand",
    ).start()
    clients = {d: await device(mosquitto, d) for d, _, _ in devices}
    acked: set[tuple[str, int]] = set()
    t0 = int(time.time() * 1000) - 600_000

    async def stream() -> None:
        futures = []
        for k in range(100):
            for i, (device_id, client) in enumerate(clients.items()):
                sample = full_samples(t0 + k * 1000, 1, i=i)[0]
                fut = client.publish(enc.topic(device_id), enc.encode([sample]), qos=1)
                key = (device_id, sample["t"])
                fut.add_done_callback(lambda f, key=key: f.exception() or acked.add(key))
                futures.append(fut)
            await asyncio.sleep(0.01)
        await asyncio.gather(*futures)

    try:
        await gw.wait_subscribed()
        publishing = asyncio.create_task(stream())
        await eventually(lambda: stored_at_least(pg_dsn, 100), what="rows before the kill")
        gw.kill()
        await publishing
        gw.start()
        await gw.wait_subscribed()
        await eventually(
            lambda: stored_at_least(pg_dsn, len(acked)), timeout=30, what="all acked stored"
        )
    finally:
        gw.stop()
        for client in clients.values():
            await client.disconnect()
    keys = await stored_keys(pg_dsn)
    assert len(acked) == 500
    assert len(keys) == len(set(keys)) and set(keys) == acked


async def test_a_dialect_topic_below_the_topic_root_is_read_as_the_dialect(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """docs/dialects.md's way around broker accounts limited to the topic root: a dialect on
    {root}/traccar/{device_id}/osmand is read as the dialect, not as a native topic."""
    legacy_id = LEGACY[SHIPPED.index("traccar-osmand")][0]
    await register(pg_dsn, [LEGACY[SHIPPED.index("traccar-osmand")]])
    text = shipped_path("traccar-osmand").read_text()
    below_root = tmp_path / "below-root.toml"
    below_root.write_text(
        text.replace('"traccar/{device_id}/osmand"', f'"{topic_root}/traccar/{{device_id}}/osmand"')
    )
    dialects = load_dialects([str(below_root)])
    assert dialects[0].topic_filter == f"{topic_root}/traccar/+/osmand"
    samples = full_samples(int(time.time() * 1000) - 10_000, 3)
    cfg = gateway_config(pg_dsn, mosquitto, topic_root, mqtt_dialects=dialects)
    async with running_gateway(cfg) as (_, reg):
        await _publish(
            mosquitto,
            legacy_id,
            f"{topic_root}/traccar/{legacy_id}/osmand",
            [encoder("traccar-osmand").encode(samples)],
        )
        await eventually(lambda: _stored(pg_dsn, legacy_id, 3), what="stored via the dialect")
        assert metric(reg, "fleetgate_samples_rejected_total") == 0
