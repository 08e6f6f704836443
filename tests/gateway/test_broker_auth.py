"""Device identity: secrets stored hashed, provisioning and rotation, the broker's password and
ACL files generated from the registry, and impersonation attempts against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import replace

import httpx
import orjson
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from commands import CommandRequest
from firmware_sim import Fleet, FleetOptions
from fleetgate.cli.run import serve_api
from fleetgate.embedded import Mosquitto, free_port
from fleetgate.settings import Settings
from gateway.broker_auth import (
    BrokerAccess,
    acl_file,
    authorize,
    generate,
    password_file,
    write_files,
)
from gateway.commands import command_client_id
from gateway.metrics import GatewayMetrics
from gateway.mqtt import ConnectOptions, MqttClient, MqttError
from gateway.mqtt_ingress import MqttIngress, read_presence
from telemetry.store import AlreadyProvisioned, TelemetryStore, UnknownDevice
from telemetry.store._credentials import check_mosquitto_hash, mosquitto_hash
from telemetry.topics import gateway_presence_topic
from tests.device_credentials import DEVICES, credentials
from tests.harness import eventually, gateway_config, metric, register, running_gateway, stored_keys

ROOT = "fg/v1"


# --- hashes ---------------------------------------------------------------------------------------


def test_mosquitto_hash_has_the_format_mosquitto_passwd_writes():
    hashed = mosquitto_hash("s3cret")
    assert re.fullmatch(r"\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==", hashed)
    assert check_mosquitto_hash("s3cret", hashed)
    assert not check_mosquitto_hash("s3cret!", hashed)
    assert not check_mosquitto_hash("s3cret", "$6$nope$nope")
    assert mosquitto_hash("s3cret") != hashed, "a fresh salt every time"


def test_a_hash_written_by_mosquitto_passwd_checks_out(tmp_path):
    binary = shutil.which("mosquitto_passwd")
    if binary is None:
        pytest.skip("mosquitto_passwd is not installed (Debian: mosquitto)")
    path = tmp_path / "passwd"
    subprocess.run([binary, "-c", "-b", str(path), "dev-1", "pa55word"], check=True)
    user, hashed = path.read_text().strip().split(":", 1)
    assert user == "dev-1" and check_mosquitto_hash("pa55word", hashed)
    assert not check_mosquitto_hash("pa55word2", hashed)


# --- the rules as functions (EMQX's HTTP hooks) ------------------------------------------------

# Who may subscribe to what: authorize() (EMQX's hook) and Mosquitto's plugin must agree.
SUBSCRIPTIONS = [
    ("lock-a", "fg/v1/lock-a/cmd", True),
    ("lock-a", "fg/v1/lock-b/cmd", False),
    ("lock-a", "fg/v1/+/cmd", False),  # wildcards reach others' topics
    ("lock-a", "fg/v1/lock-a/#", False),
    ("lock-a", "#", False),
    ("lock-a", "fg/v1/+/telemetry", False),
    ("lock-a", "$share/fleetgate/fg/v1/+/telemetry", False),  # the gateway's own group
    ("lock-a", "$share/x/fg/v1/lock-a/cmd", False),
    ("lock-a", "$SYS/#", False),
    ("gw-1", "$share/fleetgate/fg/v1/+/telemetry", True),
    ("gw-1", "fg/v1/+/telemetry", True),
    ("gw-1", "fg/v1/+/status", True),
    ("gw-1", "fg/v1/+/cmd/result", True),
    ("gw-1", "fg/v1/$gateway/gw-1/presence", True),
    ("gw-1", "$share/g2/fg/v1/#", True),
    ("gw-1", "$share/g2/other/#", False),
    ("gw-1", "$SYS/#", False),
]


@pytest.mark.parametrize(
    ("user", "action", "topic", "allowed"),
    [
        *((user, "subscribe", topic, allowed) for user, topic, allowed in SUBSCRIPTIONS),
        ("lock-a", "subscribe", "fg/v1/lock-b/telemetry", False),  # as EMQX passes a $share filter
        ("gw-1", "subscribe", "fg/v1/+/event", True),
        ("lock-a", "publish", "fg/v1/lock-a/telemetry", True),
        ("lock-a", "publish", "fg/v1/lock-a/event", True),
        ("lock-a", "publish", "fg/v1/lock-a/status", True),
        ("lock-a", "publish", "fg/v1/lock-a/cmd/result", True),
        ("lock-a", "subscribe", "fg/v1/lock-a/cmd", True),
        ("lock-a", "publish", "fg/v1/lock-b/telemetry", False),  # another device's topic
        ("lock-a", "publish", "fg/v1/lock-a/cmd", False),  # commands come from the gateway
        ("lock-a", "publish", "fg/v2/lock-a/telemetry", False),
        ("lock-a", "delete", "fg/v1/lock-a/telemetry", False),
        ("lock+a", "publish", "fg/v1/lock+a/telemetry", False),  # not a device id
        ("lock-a\n", "publish", "fg/v1/lock-a\n/telemetry", False),  # nor is this one
        ("gw-1", "publish", "fg/v1/lock-a/cmd", True),
        ("gw-1", "publish", "fg/v1/$gateway/gw-1/presence", True),
        ("gw-1", "publish", "other/topic", False),
        (None, "publish", "fg/v1/lock-a/telemetry", False),
    ],
)
def test_authorize_lets_a_device_use_only_its_own_topics(user, action, topic, allowed):
    assert authorize(user, action, topic, topic_root=ROOT, gateway_users={"gw-1"}) is allowed


async def test_authenticate_checks_gateways_against_their_hash_and_devices_against_the_store():
    secrets = {"lock-a": "secret-a"}

    async def verify(device_id: str, secret: str) -> bool:
        return secrets.get(device_id) == secret

    access = BrokerAccess(ROOT, verify, {"gw-1": mosquitto_hash("gw-pass")})
    assert await access.authenticate("gw-1", "gw-pass", "gw-1-ingest")
    assert not await access.authenticate("gw-1", "nope")
    assert await access.authenticate("lock-a", "secret-a", "lock-a")
    assert await access.authenticate("lock-a", "secret-a")
    assert not await access.authenticate("lock-a", "secret-a", "lock-b"), (
        "a device's client id is its device id"
    )
    assert not await access.authenticate("lock-b", "secret-a", "lock-b")
    assert not await access.authenticate("lock-a", None)
    assert not await access.authenticate(None, "secret-a")
    assert access.authorize("lock-a", "publish", "fg/v1/lock-a/telemetry")


def test_generated_files_are_what_mosquitto_reads():
    acl = acl_file(ROOT, ["gw-1"])
    assert "user gw-1\ntopic readwrite fg/v1/#\n" in acl
    assert "pattern write fg/v1/%u/telemetry" in acl and "pattern read fg/v1/%u/cmd" in acl
    assert "pattern read fg/v1/%u/cmd/result" not in acl
    assert password_file([("a", "$7$1$x$y")]) == "a:$7$1$x$y\n"
    with pytest.raises(ValueError):
        password_file([("a:b", "$7$1$x$y")])


# --- the store -----------------------------------------------------------------------------------


async def test_a_secret_is_issued_once_stored_only_hashed_and_works_for_its_device_only(pg_dsn):
    await register(pg_dsn, DEVICES)
    async with credentials(pg_dsn) as creds:
        a = await creds.provision("lock-a")
        b = await creds.provision("lock-b")
        assert len(a.secret) >= 32 and a.secret != b.secret
        assert await creds.verify("lock-a", a.secret)
        assert not await creds.verify("lock-b", a.secret), "A's secret is not B's"
        assert not await creds.verify("lock-a", a.secret + "x")
        assert not await creds.verify("ghost", a.secret)
        with pytest.raises(AlreadyProvisioned):
            await creds.provision("lock-a")
        with pytest.raises(UnknownDevice):
            await creds.provision("ghost")
        assert [
            i.device_id
            for i in await creds.provision_many(["lock-a", "lock-c"], skip_provisioned=True)
        ] == ["lock-c"]
        listed = {i.device_id: i.valid for i in await creds.list()}
        assert listed == {"lock-a": 1, "lock-b": 1, "lock-c": 1}
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        dump = str(await (await conn.execute("SELECT * FROM device_credentials")).fetchall())
    assert a.secret not in dump and b.secret not in dump


async def test_rotation_keeps_the_old_secret_for_the_grace_period_or_revokes_it(pg_dsn):
    await register(pg_dsn, DEVICES)
    async with credentials(pg_dsn) as creds:
        old = await creds.provision("lock-a")
        new = await creds.rotate("lock-a", grace_s=3600)
        assert new.previous_valid_until is not None
        assert await creds.verify("lock-a", old.secret) and await creds.verify("lock-a", new.secret)
        assert [i.valid for i in await creds.list() if i.device_id == "lock-a"] == [2]
        users = dict(await creds.broker_users())
        assert check_mosquitto_hash(new.secret, users["lock-a"]), (
            "the broker's file holds the newest secret (one hash per user)"
        )

        newest = await creds.rotate("lock-a", grace_s=0)  # compromised: revoke now
        assert await creds.verify("lock-a", newest.secret)
        assert not await creds.verify("lock-a", new.secret)
        assert not await creds.verify("lock-a", old.secret)


async def test_a_swapped_out_tcu_no_longer_authenticates(pg_dsn):
    await register(pg_dsn, DEVICES[:1])
    async with credentials(pg_dsn) as creds:
        old = await creds.provision("lock-a")
        await register(pg_dsn, [("lock-new", "bike-a", "ebike")])  # bike-a gets a new TCU
        assert not await creds.verify("lock-a", old.secret)
        assert await creds.broker_users() == []


# --- a real Mosquitto with the generated files -------------------------------------------------


@contextlib.asynccontextmanager
async def secured_broker(dsn: str, tmp_path, topic_root: str, gateway_users: dict[str, str]):
    """A private Mosquitto with the files `fleetgate broker-config` generates: the project's
    listener for the gateway, a devices' listener with use_username_as_clientid."""
    conf_dir = tmp_path / "broker-auth"
    async with credentials(dsn) as creds:
        files = await generate(
            creds, topic_root=topic_root, gateway_users=gateway_users, directory=conf_dir
        )
    write_files(files, conf_dir)
    device_port = free_port()
    broker = Mosquitto(
        datadir=tmp_path / "mosquitto",
        extra_config=(
            files.conf + f"listener {device_port} 127.0.0.1\nuse_username_as_clientid true\n"
        ),
    )
    broker.start()
    try:
        yield broker, device_port, conf_dir
    finally:
        broker.stop(kill=True)


async def regenerate(dsn: str, broker: Mosquitto, conf_dir, topic_root, gateway_users) -> None:
    async with credentials(dsn) as creds:
        files = await generate(
            creds, topic_root=topic_root, gateway_users=gateway_users, directory=conf_dir
        )
    write_files(files, conf_dir)
    broker.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.5)


async def connect(
    host: str,
    port: int,
    user: str | None,
    password: str | None,
    client_id: str | None = None,
    protocol: int = 5,
    **kw,
) -> MqttClient:
    client = MqttClient(
        ConnectOptions(
            host,
            port,
            client_id or user or "anon",
            username=user,
            password=password,
            protocol=protocol,
        ),
        **kw,
    )
    await client.connect()
    return client


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [5, 4])
async def test_a_device_cannot_publish_as_another_or_read_its_commands(
    pg_dsn, tmp_path, topic_root, protocol
):
    await register(pg_dsn, DEVICES)
    async with credentials(pg_dsn) as creds:
        secrets = {i.device_id: i.secret for i in await creds.provision_many(["lock-a", "lock-b"])}
    gw_user = f"gw-{protocol}"
    gateways = {gw_user: "gw-password"}
    async with secured_broker(pg_dsn, tmp_path, topic_root, gateways) as (broker, port, _):
        cfg = gateway_config(
            pg_dsn,
            broker,
            topic_root,
            mqtt_username=gw_user,
            mqtt_password="gw-password",
            mqtt_client_id=gw_user,
        )
        async with running_gateway(cfg) as (gw, reg):
            seen: list[tuple[str, bytes]] = []  # everything a gateway-side subscriber gets
            spy = await connect(
                broker.host,
                broker.port,
                gw_user,
                "gw-password",
                client_id=f"{gw_user}-spy",
                on_messages=lambda ms: seen.extend((m.topic, m.payload) for m in ms),
            )
            await spy.subscribe([(f"{topic_root}/#", 1)])
            t = int(time.time() * 1000) - 60_000
            a = await connect(broker.host, port, "lock-a", secrets["lock-a"], protocol=protocol)
            await a.publish(
                f"{topic_root}/lock-a/telemetry", orjson.dumps({"t": t, "soc_pct": 50.0}), qos=1
            )
            forged = orjson.dumps({"t": t + 1, "soc_pct": 1.0})
            with contextlib.suppress(MqttError):  # MQTT 5: "not authorized"; 3.1.1: a PUBACK
                await a.publish(f"{topic_root}/lock-b/telemetry", forged, qos=1)
            await eventually(lambda: metric(reg, "fleetgate_samples_stored_total") == 1)

            # A reads B's commands: the subscription plugin refuses the SUBSCRIBE.
            stolen: list = []
            b_got: list = []
            b = await connect(
                broker.host,
                port,
                "lock-b",
                secrets["lock-b"],
                protocol=protocol,
                on_messages=lambda ms: b_got.extend(ms),
            )
            await b.subscribe([(f"{topic_root}/lock-b/cmd", 1)])
            # A also tries B's client id (to take over B's session): the broker makes it A's.
            a2 = await connect(
                broker.host,
                port,
                "lock-a",
                secrets["lock-a"],
                client_id="lock-b",
                protocol=protocol,
                on_messages=lambda ms: stolen.extend(ms),
            )
            with pytest.raises(MqttError, match="not authori|refused"):
                await a2.subscribe(
                    [(f"{topic_root}/lock-b/cmd", 1), (f"{topic_root}/+/cmd", 1), ("#", 1)]
                )
            await spy.publish(f"{topic_root}/lock-b/cmd", b'{"id": "c1", "type": "unlock"}', qos=1)
            await eventually(lambda: len(b_got) == 1, what="B gets its command")
            await asyncio.sleep(0.5)
            assert stolen == [], "A never reads B's commands"
            assert b.connected, "A using B's client id did not take over B's session"

            for user, password in [
                ("lock-a", "wrong"),
                ("lock-c", "anything"),  # unprovisioned
                ("lock-b", secrets["lock-a"]),
                (None, None),
            ]:
                with pytest.raises(MqttError):
                    await connect(broker.host, port, user, password, protocol=protocol)
            for c in (spy, b, a2):
                with contextlib.suppress(Exception):
                    await c.disconnect()
            with contextlib.suppress(Exception):
                await a.disconnect()
    assert await stored_keys(pg_dsn) == [("lock-a", t)], "nothing stored under B's name"
    assert all(topic != f"{topic_root}/lock-b/telemetry" for topic, _ in seen), (
        "the forged message reached no subscriber"
    )


@pytest.mark.integration
async def test_after_rotation_and_a_reload_the_broker_takes_only_the_new_secret(
    pg_dsn, tmp_path, topic_root
):
    await register(pg_dsn, DEVICES[:1])
    async with credentials(pg_dsn) as creds:
        old = await creds.provision("lock-a")
    gateways = {"gw-r": "gw-password"}
    async with secured_broker(pg_dsn, tmp_path, topic_root, gateways) as (broker, port, conf_dir):
        await (await connect(broker.host, port, "lock-a", old.secret)).disconnect()
        async with credentials(pg_dsn) as creds:
            new = await creds.rotate("lock-a", grace_s=3600)
        await regenerate(pg_dsn, broker, conf_dir, topic_root, gateways)
        await (await connect(broker.host, port, "lock-a", new.secret)).disconnect()
        with pytest.raises(MqttError):
            await connect(broker.host, port, "lock-a", old.secret)


@pytest.mark.integration
async def test_mosquitto_refuses_exactly_the_subscriptions_authorize_refuses(pg_dsn, tmp_path):
    """The subscription plugin (Mosquitto) and authorize() (EMQX's hook) are one rule twice."""
    await register(pg_dsn, DEVICES[:2])
    async with credentials(pg_dsn) as creds:
        secret = (await creds.provision("lock-a")).secret
    async with secured_broker(pg_dsn, tmp_path, ROOT, {"gw-1": "gw-password"}) as (broker, port, _):
        for user, topic, allowed in SUBSCRIPTIONS:
            if user == "gw-1":
                client = await connect(
                    broker.host,
                    broker.port,
                    user,
                    "gw-password",
                    client_id=f"gw-1-{uuid.uuid4().hex[:6]}",
                )
            else:
                client = await connect(broker.host, port, user, secret)
            try:
                await client.subscribe([(topic, 1)])
                granted = True
            except MqttError:
                granted = False
            await client.disconnect()
            assert granted is allowed, f"{user} subscribing to {topic}"
            assert (
                authorize(user, "subscribe", topic, topic_root=ROOT, gateway_users={"gw-1"})
                is allowed
            )


def suback_codes(output: list[str]) -> list[int]:
    """The reason codes of mosquitto_sub -d's SUBACK line, in the order of its -t options."""
    line = next(line for line in output if line.startswith("Subscribed (mid"))
    return [int(code) for code in line.split(":", 2)[2].split(",")]


async def read_lines(stream: asyncio.StreamReader, into: list[str]) -> None:
    async for line in stream:
        into.append(line.decode().rstrip("\n"))


@pytest.mark.integration
@pytest.mark.parametrize(
    ("mqtt_version", "shared_group"), [("5", "fleetgate"), ("311", "fleetgate"), ("5", "")]
)
async def test_a_device_subscribing_to_others_topics_gets_nothing_and_takes_nothing_away(
    pg_dsn, tmp_path, topic_root, mqtt_version, shared_group
):
    """Issue 16, item 12: with the generated files, a device subscribed to the gateway's shared
    subscription took every second sample of another device (acknowledged, never stored).
    mosquitto_sub, logged in as device lock-a, tries every filter form while simulated devices
    publish through the real gateway: Mosquitto refuses all but lock-a's own command topic,
    lock-a receives its own command and nothing else, and every sample is stored. The gateway's
    account still does all it needs: its shared (or plain) subscription, its presence, and a
    command round trip (published to cmd, answered on cmd/result)."""
    protocol = 5 if mqtt_version == "5" else 4
    options = FleetOptions(
        vehicles=2,
        rate_hz=10.0,
        seed=3,
        topic_root=topic_root,
        samples_per_vehicle=100,
        fast=True,
        protocol=protocol,
        session_expiry_s=60,
    )
    registrations = Fleet(options).registrations()
    devices = [d for d, _, _ in registrations]
    await register(pg_dsn, [*registrations, ("lock-a", "bike-a", "ebike")])
    async with credentials(pg_dsn) as creds:
        secrets = {i.device_id: i.secret for i in await creds.provision_many([*devices, "lock-a"])}
    gw_user = "gw-sec"
    async with secured_broker(pg_dsn, tmp_path, topic_root, {gw_user: "gw-password"}) as (
        broker,
        port,
        _,
    ):
        own = f"{topic_root}/lock-a/cmd"
        victim = devices[0]
        forbidden = [
            f"$share/fleetgate/{topic_root}/+/telemetry",
            f"$share/fleetgate/{topic_root}/+/event",
            f"$share/x/{topic_root}/+/telemetry",
            "#",
            "+/#",
            f"{topic_root}/#",
            f"{topic_root}/+/telemetry",
            f"{topic_root}/{victim}/telemetry",
            f"{topic_root}/{victim}/cmd",
            f"{topic_root}/+/cmd",
            f"{topic_root}/+/cmd/result",
            f"$share/fleetgate/{own}",
            "$SYS/#",
        ]
        # stdbuf: mosquitto_sub would hold its output back in a pipe until it exits.
        attacker = await asyncio.create_subprocess_exec(
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(port),
            "-V",
            mqtt_version,
            "-u",
            "lock-a",
            "-P",
            secrets["lock-a"],
            "-i",
            "lock-a",
            "-q",
            "1",
            "-v",
            "-d",
            *(arg for topic in [*forbidden, own] for arg in ("-t", topic)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        output: list[str] = []
        reader = asyncio.create_task(read_lines(attacker.stdout, output))
        try:
            await eventually(
                lambda: any(line.startswith("Subscribed (mid") for line in output),
                what="lock-a's SUBACK",
            )
            cfg = gateway_config(
                pg_dsn,
                broker,
                topic_root,
                mqtt_username=gw_user,
                mqtt_password="gw-password",
                mqtt_shared_group=shared_group,
            )
            async with running_gateway(cfg) as (gw, _):
                fleet = Fleet(replace(options, host=broker.host, port=port, credentials=secrets))
                await fleet.start()
                try:
                    await fleet.run()
                    await eventually(lambda: gw.commands is not None, what="command service")
                    answered = await gw.commands.submit(
                        CommandRequest(
                            device_id=victim,
                            type="locate",
                            idempotency_key=uuid.uuid4().hex,
                            requested_by="test",
                        )
                    )
                    done = await gw.commands.wait(answered.id, 15)
                    assert done.state.value == "succeeded", done.state
                finally:
                    await fleet.stop(flush=True)
                expected = fleet.expected_keys()
                await eventually(
                    lambda: async_superset(pg_dsn, expected),
                    timeout=15,
                    what="every acknowledged sample stored",
                )
                presence = await read_presence(
                    ConnectOptions(
                        broker.host,
                        broker.port,
                        cfg.mqtt_client_id,
                        username=gw_user,
                        password="gw-password",
                    ),
                    topic_root,
                )
                assert presence is not None and presence["state"] == "online"
                # lock-a's own command topic works (commands wait for a device to be online:
                # a gateway-side client publishes this one).
                sender = await connect(
                    broker.host, broker.port, gw_user, "gw-password", client_id=f"{gw_user}-sender"
                )
                await sender.publish(own, b'{"id": "c-lock-a", "type": "locate"}', qos=1)
                await sender.disconnect()
                await eventually(
                    lambda: any(line.startswith(f"{own} ") for line in output),
                    what="lock-a's command",
                )
                await asyncio.sleep(0.3)  # anything else would have come by now
        finally:
            attacker.terminate()
            await asyncio.wait_for(attacker.wait(), 10)
            await reader
    codes = suback_codes(output)
    assert all(code >= 0x80 for code in codes[:-1]), list(zip(forbidden, codes))
    assert codes[-1] == 1, "lock-a may subscribe to its own command topic"
    received = [line for line in output if not line.startswith(("Client ", "Subscribed"))]
    assert received == [f'{own} {{"id": "c-lock-a", "type": "locate"}}']


async def async_superset(dsn: str, expected: set) -> bool:
    return expected <= set(await stored_keys(dsn))


@pytest.mark.integration
async def test_a_gateway_user_added_later_may_join_the_shared_subscription_after_a_reload(
    pg_dsn, tmp_path, topic_root
):
    """The plugin reads its gateway users again on SIGHUP, with the password file: a device
    is refused the shared subscription, a gateway user added since the start is not."""
    await register(pg_dsn, DEVICES[:1])
    async with credentials(pg_dsn) as creds:
        secret = (await creds.provision("lock-a")).secret
    gateways = {"gw-old": "gw-password"}
    shared = f"$share/fleetgate/{topic_root}/+/telemetry"
    async with secured_broker(pg_dsn, tmp_path, topic_root, gateways) as (broker, port, conf_dir):
        device = await connect(broker.host, port, "lock-a", secret)
        with pytest.raises(MqttError, match="not authori"):
            await device.subscribe([(shared, 1)])
        await device.disconnect()
        gateways["gw-new"] = "gw-password"
        await regenerate(pg_dsn, broker, conf_dir, topic_root, gateways)
        gateway = await connect(
            broker.host, broker.port, "gw-new", "gw-password", client_id="gw-new-ingest"
        )
        assert await gateway.subscribe([(shared, 1)]) == [1]
        await gateway.disconnect()


# --- EMQX's HTTP hooks as `fleetgate api` serves them ------------------------------------------


@pytest.mark.integration
async def test_emqx_hooks_let_the_gateway_account_in_and_devices_only_to_their_topics(pg_dsn):
    """Issue 16, item 13: the hooks denied the gateway's own client ids and its shared
    subscription, so a gateway behind EMQX could neither connect nor subscribe. EMQX cannot run
    here: the requests are shaped like those of EMQX 5's HTTP authenticator and HTTP authorizer
    with the bodies docs/device-identity.md configures, sent over real HTTP to the API as
    `fleetgate api` wires it from its settings (FLEETGATE_MQTT_USERNAME / _PASSWORD). EMQX
    passes a shared subscription's filter without $share/{group}/ (emqx_channel checks the
    "real topic"); the whole filter is sent too, as other brokers may pass it."""
    await register(pg_dsn, DEVICES[:2])
    async with credentials(pg_dsn) as creds:
        secret = (await creds.provision("lock-a")).secret
    store = await TelemetryStore.open(pg_dsn)
    try:
        _, key = await store.create_api_key("emqx", ["broker:auth"])
    finally:
        await store.close()
    settings = Settings(
        database_url=pg_dsn,
        api_host="127.0.0.1",
        api_port=free_port(),
        mqtt_topic_root=ROOT,
        mqtt_username="gw-emqx",
        mqtt_password="gw-password",
        mqtt_client_id="fleetgate-gw-7",
    )
    stop = asyncio.Event()
    api = asyncio.create_task(serve_api(settings, pg_dsn, stop))
    url = f"http://127.0.0.1:{settings.api_port}"
    gw_id = settings.mqtt_client_id
    ingress = MqttIngress(
        None,
        ConnectOptions("-", 0, gw_id),
        topic_root=ROOT,
        shared_group="fleetgate",
        metrics=GatewayMetrics(CollectorRegistry()),
    )
    try:
        async with httpx.AsyncClient(
            base_url=url, timeout=10.0, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            await eventually(lambda: healthy(http), what="the API")

            async def connect_as(username, password, clientid) -> str:
                r = await http.post(
                    "/broker/authenticate",
                    json={"username": username, "password": password, "clientid": clientid},
                )
                assert r.status_code == 200 and r.headers["content-type"] == "application/json"
                return r.json()["result"]

            async def may(username, clientid, action, topic) -> bool:
                r = await http.post(
                    "/broker/authorize",
                    json={
                        "username": username,
                        "clientid": clientid,
                        "topic": topic,
                        "action": action,
                    },
                )
                assert r.status_code == 200
                return {"allow": True, "deny": False}[r.json()["result"]]

            for clientid in (gw_id, command_client_id(gw_id), "fleetgate-probe-1a2b3c"):
                assert await connect_as("gw-emqx", "gw-password", clientid) == "allow"
            assert await connect_as("gw-emqx", "wrong", gw_id) == "deny"
            assert await connect_as("lock-a", secret, "lock-a") == "allow"
            assert await connect_as("lock-a", secret, gw_id) == "deny"

            shared = [f for f, _ in ingress.subscriptions() if f.startswith("$share/")]
            assert shared, "a gateway with FLEETGATE_MQTT_SHARED_GROUP subscribes to shared filters"
            gateway_needs = [
                *(("subscribe", f) for f, _ in ingress.subscriptions()),
                *(("subscribe", f.split("/", 2)[2]) for f in shared),  # as EMQX passes them
                ("subscribe", f"{ROOT}/+/cmd/result"),  # the command link
                ("publish", f"{ROOT}/lock-a/cmd"),
                ("publish", gateway_presence_topic(ROOT, gw_id)),  # presence and will
                ("subscribe", gateway_presence_topic(ROOT, gw_id)),  # fleetgate drain's probe
                ("subscribe", f"{ROOT}/$drain/{gw_id}/marker"),
                ("publish", f"{ROOT}/$drain/{gw_id}/marker"),
            ]
            for action, topic in gateway_needs:
                assert await may("gw-emqx", gw_id, action, topic), (action, topic)
            assert not await may("gw-emqx", gw_id, "subscribe", "$SYS/#")

            assert await may("lock-a", "lock-a", "subscribe", f"{ROOT}/lock-a/cmd")
            assert await may("lock-a", "lock-a", "publish", f"{ROOT}/lock-a/telemetry")
            for action, topic in [*gateway_needs, ("publish", f"{ROOT}/lock-b/telemetry")]:
                assert not await may("lock-a", "lock-a", action, topic), (action, topic)
    finally:
        stop.set()
        await asyncio.wait_for(api, 30)


async def healthy(http) -> bool:
    try:
        return (await http.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False
