"""`fleetgate migrate bridge-config` with two real Mosquitto processes: a legacy broker the devices
still talk to, and fleetgate's, bridged by the generated configuration. Devices' uplinks arrive
and are stored; nothing published on fleetgate's side reaches the legacy broker; the bridge comes
back after the legacy broker restarts."""

from __future__ import annotations

import os
import threading
import time

import orjson
import paho.mqtt.client as paho
import pytest
import typer

from fleetgate.embedded import Mosquitto
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.dialect import load_dialects
from tests.cli_runner import run_fleetgate
from tests.dialect_traffic import encoder, full_samples
from tests.harness import eventually, gateway_config, register, running_gateway
from tests.mqtt_devices import device
from tests.stored_rows import fetch

pytestmark = pytest.mark.integration

DEVICE = ("osm-001", "veh-osm-001", "ebike")


@pytest.fixture
def legacy_broker(tmp_path):
    broker = Mosquitto(datadir=tmp_path / "legacy").start()
    yield broker
    broker.stop(kill=True)


def _bridge_text(tmp_path, legacy: Mosquitto, *extra: str) -> str:
    out = tmp_path / "bridge.conf"
    result = run_fleetgate(
        "migrate",
        "bridge-config",
        "--legacy-url",
        legacy.url,
        "--dialect",
        "traccar-osmand",
        "--out",
        str(out),
        *extra,
    )
    assert result.exit_code == 0, result.output
    return out.read_text()


async def _stored(dsn: str) -> int:
    rows = await fetch(
        dsn,
        "SELECT count(*) AS n FROM positions p JOIN vehicles v ON v.id = p.vehicle "
        "WHERE v.device_id = %s",
        DEVICE[0],
    )
    return rows[0]["n"]


async def _send(legacy: Mosquitto, samples: list[dict]) -> None:
    enc = encoder("traccar-osmand")
    client = await device(legacy, DEVICE[0])
    for s in samples:
        await client.publish(enc.topic(DEVICE[0]), enc.encode([s]), qos=1)
    await client.disconnect()


async def test_the_bridge_mirrors_uplinks_read_only_and_survives_a_legacy_restart(
    tmp_path, legacy_broker, pg_dsn, topic_root
):
    text = _bridge_text(tmp_path, legacy_broker)
    assert "topic traccar/+/osmand in 1" in text and " out " not in text and " both " not in text
    fleetgate = Mosquitto(datadir=tmp_path / "fleetgate", extra_config="\n" + text).start()
    seen_on_legacy: list = []
    watcher = MqttClient(
        ConnectOptions(legacy_broker.host, legacy_broker.port, "legacy-watcher"),
        on_messages=seen_on_legacy.extend,
    )
    try:
        await register(pg_dsn, [DEVICE])
        cfg = gateway_config(
            pg_dsn, fleetgate, topic_root, mqtt_dialects=load_dialects(["traccar-osmand"])
        )
        t0 = int(time.time() * 1000) - 120_000
        samples = full_samples(t0, 30)
        async with running_gateway(cfg):
            await watcher.connect()
            await watcher.subscribe([("#", 1)])
            # The bridge may still be connecting: the first uplinks wait in the legacy broker's
            # session for it (QoS 1, persistent bridge session) or are sent again below.
            await eventually(
                lambda: _send_until_stored(legacy_broker, pg_dsn, samples[:5], 5),
                timeout=30,
                what="first uplinks mirrored and stored",
            )
            # Commands and anything else published on fleetgate's side, even on the dialect's
            # own uplink topic, stay there.
            side = await device(fleetgate, "rental-service")
            for topic in (
                f"{topic_root}/{DEVICE[0]}/cmd",
                f"traccar/{DEVICE[0]}/cmd",
                f"traccar/{DEVICE[0]}/osmand",
            ):
                await side.publish(topic, orjson.dumps({"type": "unlock"}), qos=1)
            await side.disconnect()
            await _send(legacy_broker, samples[5:10])
            await eventually(lambda: _at_least(pg_dsn, 10), what="uplinks after the commands")
            assert {m.topic for m in seen_on_legacy} == {f"traccar/{DEVICE[0]}/osmand"}
            assert all(b"unlock" not in m.payload for m in seen_on_legacy)
            assert len(seen_on_legacy) >= 10  # the devices' own (the first ones maybe twice)
            await watcher.disconnect()

            legacy_broker.restart()
            await eventually(
                lambda: _send_until_stored(legacy_broker, pg_dsn, samples[10:], 30),
                timeout=60,
                what="uplinks mirrored after the legacy broker restarted",
            )
        assert await _stored(pg_dsn) == 30
    finally:
        fleetgate.stop(kill=True)


async def _at_least(dsn: str, n: int) -> bool:
    return await _stored(dsn) >= n


async def _send_until_stored(legacy: Mosquitto, dsn: str, samples: list[dict], n: int) -> bool:
    """Send (again: the store ignores duplicates) and say whether n samples are stored now."""
    if await _stored(dsn) >= n:
        return True
    await _send(legacy, samples)
    return False


def test_bad_options_are_named_and_nothing_is_written(tmp_path):
    out = tmp_path / "bridge.conf"
    cases = [
        (["--legacy-url", "http://legacy", "--dialect", "traccar-osmand"], "--legacy-url"),
        (["--legacy-url", "mqtt://u:p@legacy", "--dialect", "flat-json"], "no credentials"),
        (["--legacy-url", "mqtt://legacy", "--dialect", "nonesuch.toml"], "nonesuch.toml"),
        (
            ["--legacy-url", "mqtt://legacy", "--dialect", "flat-json", "--password", "x"],
            "--password without --username",
        ),
        (
            ["--legacy-url", "mqtt://legacy", "--dialect", "flat-json", "--cafile", "no.pem"],
            "no.pem",
        ),
    ]
    for args, why in cases:
        result = run_fleetgate("migrate", "bridge-config", *args, "--out", str(out))
        assert result.exit_code == 2 and why in result.output, (args, result.output)
        assert not out.exists()


def test_credentials_and_tls_are_written_and_the_client_id_is_stable(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here; Mosquitto reads it")
    args = ("--username", "bridge", "--password", "s3cret", "--cafile", str(ca))
    legacy = Mosquitto(datadir=tmp_path, host="legacy.example", port=8883)
    first = _bridge_text(tmp_path, legacy, *args)
    second = _bridge_text(tmp_path, legacy, *args)
    assert first == second
    lines = first.splitlines()
    assert "address legacy.example:8883" in lines
    assert "remote_username bridge" in lines and "remote_password s3cret" in lines
    assert f"bridge_cafile {ca.resolve()}" in lines
    assert "cleansession false" in lines and "try_private true" in lines
    assert any(line.startswith("remote_clientid fleetgate-bridge-legacy-") for line in lines)
    assert (tmp_path / "bridge.conf").stat().st_mode & 0o077 == 0


def test_sim_speaks_a_dialect_and_refuses_a_bad_one(mosquitto, tmp_path):
    """`fleetgate sim --dialect`: the simulated devices publish in the dialect on its topics (a
    watcher on the broker sees them); a bad dialect file ends it before it connects."""
    env = {k: None for k in os.environ if k.startswith("FLEETGATE_")}
    bad = tmp_path / "bad.toml"
    bad.write_text("[dialect]\nname = 'x'\n")
    refused = run_fleetgate("sim", "--samples", "1", "--dialect", str(bad), env=env)
    assert refused.exit_code == 2 and f"{bad}: dialect.topic" in refused.output

    # paho's threaded client watches: the sim installs signal handlers, so it runs in this
    # (the main) thread, as the command does.
    seen: list = []
    subscribed = threading.Event()
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="sim-watcher")
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.on_message = lambda client, userdata, m: seen.append((m.topic, m.payload))
    watcher.connect(mosquitto.host, mosquitto.port)
    watcher.subscribe("traccar/+/osmand", qos=1)
    watcher.loop_start()
    try:
        assert subscribed.wait(10)
        env.update(FLEETGATE_MQTT_URL=mosquitto.url, FLEETGATE_MQTT_TOPIC_ROOT="fgtest-sim/v1")
        result = run_fleetgate(
            "sim",
            "--vehicles",
            "2",
            "--samples",
            "3",
            "--fast",
            "--dialect",
            "traccar-osmand",
            env=env,
        )
        assert result.exit_code == 0, result.output
        deadline = time.monotonic() + 10
        while len(seen) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.loop_stop()
        watcher.disconnect()
    assert {topic for topic, _ in seen} == {"traccar/ebike-0001/osmand", "traccar/car-0002/osmand"}
    assert all(set(orjson.loads(p)) >= {"timestamp", "speed", "batt"} for _, p in seen)


def test_bridge_config_joins_a_migrate_group_that_is_already_mounted():
    """Issue 18's `migrate` group and this command are mounted apart; whichever lands first,
    `fleetgate migrate` holds both."""
    from fleetgate.cli import migrate_bridge

    root, group = typer.Typer(), typer.Typer()
    group.command("analyse")(lambda: None)
    root.add_typer(group, name="migrate")
    migrate_bridge.mount(root)
    assert [g.name for g in root.registered_groups] == ["migrate"]
    assert {c.name for c in group.registered_commands} == {"analyse", "bridge-config"}
    alone = typer.Typer()
    migrate_bridge.mount(alone)
    assert [g.typer_instance for g in alone.registered_groups] == [migrate_bridge.app]
