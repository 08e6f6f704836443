"""`fleetgate devices provision|rotate|list`, `fleetgate broker-config` and `fleetgate sim`'s
devices against a real database and a real Mosquitto reloading the files it writes."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from pathlib import Path

import orjson
import pytest

from fleetgate.cli.devices import parse_duration
from fleetgate.embedded import Mosquitto, free_port
from gateway.mqtt import ConnectOptions, MqttClient, MqttError
from tests import REPO
from tests.cli_runner import run_fleetgate
from tests.device_credentials import DEVICES, credentials
from tests.fixtures_db import run_async
from tests.harness import register

pytestmark = pytest.mark.integration


def secrets_of(output: str) -> dict[str, str]:
    return dict(line.split("\t") for line in output.splitlines() if "\t" in line)


async def can_connect(broker: Mosquitto, user: str, password: str) -> bool:
    client = MqttClient(
        ConnectOptions(broker.host, broker.port, user, username=user, password=password)
    )
    try:
        await client.connect()
    except MqttError:
        return False
    await client.disconnect()
    return True


def test_provision_rotate_list_and_a_broker_that_reloads_the_generated_files(pg_dsn, tmp_path):
    # Synchronous like the command line (which runs its own event loop); async checks go
    # through run_async.
    run_async(register(pg_dsn, DEVICES))
    env = {
        "FLEETGATE_DATABASE_URL": pg_dsn,
        "FLEETGATE_MQTT_PASSWORD": "gw-secret",
        "FLEETGATE_MQTT_TOPIC_ROOT": "fg/v1",
    }

    issued = run_fleetgate("devices", "provision", "lock-a", "lock-b", env=env)
    assert issued.exit_code == 0, issued.output
    secrets = secrets_of(issued.stdout)
    assert sorted(secrets) == ["lock-a", "lock-b"] and "shown only now" in issued.stderr
    again = run_fleetgate("devices", "provision", "lock-a", env=env)
    assert again.exit_code == 2 and "already provisioned: lock-a" in again.stderr
    unknown = run_fleetgate("devices", "provision", "ghost", env=env)
    assert unknown.exit_code == 2 and "not in the registry: ghost" in unknown.stderr
    rest = run_fleetgate("devices", "provision", "--missing", "--json", env=env)
    assert [d["device_id"] for d in orjson.loads(rest.stdout)] == ["lock-c"]

    out = tmp_path / "broker"
    made = run_fleetgate("broker-config", "--out", str(out), "--gateway-user", "gw-1", env=env)
    assert made.exit_code == 0 and "3 devices, 1 gateway users" in made.stdout, made.output
    passwd = (out / "passwd").read_text()
    assert sorted(line.split(":")[0] for line in passwd.splitlines()) == [
        "gw-1",
        "lock-a",
        "lock-b",
        "lock-c",
    ]
    assert all(s not in passwd for s in secrets.values())
    assert (out / "passwd").stat().st_mode & 0o777 == 0o640
    broker = Mosquitto(
        datadir=tmp_path / "mosquitto", extra_config=(out / "fleetgate.conf").read_text()
    ).start()
    try:
        assert run_async(can_connect(broker, "lock-a", secrets["lock-a"]))
        assert run_async(can_connect(broker, "gw-1", "gw-secret"))
        assert not run_async(can_connect(broker, "lock-a", secrets["lock-b"]))

        rotated = run_fleetgate("devices", "rotate", "lock-a", "--grace", "0", env=env)
        assert rotated.exit_code == 0, rotated.output
        new = secrets_of(rotated.stdout)["lock-a"]
        reloaded = run_fleetgate(
            "broker-config",
            "--out",
            str(out),
            "--gateway-user",
            "gw-1",
            "--reload-pidfile",
            str(tmp_path / "mosquitto" / "mosquitto.pid"),
            env=env,
        )
        assert reloaded.exit_code == 0 and "sent SIGHUP" in reloaded.stdout
        time.sleep(0.5)
        assert run_async(can_connect(broker, "lock-a", new))
        assert not run_async(can_connect(broker, "lock-a", secrets["lock-a"]))
    finally:
        broker.stop(kill=True)

    listed = orjson.loads(run_fleetgate("devices", "list", "--json", env=env).stdout)
    assert {d["device_id"]: d["valid"] for d in listed} == {"lock-a": 1, "lock-b": 1, "lock-c": 1}
    table = run_fleetgate("devices", "list", env=env).stdout
    assert "lock-a" in table and new not in table

    async def verify() -> bool:
        async with credentials(pg_dsn) as creds:
            return await creds.verify("lock-a", new)

    assert run_async(verify())


def test_broker_config_needs_the_gateway_users_password(pg_dsn, tmp_path):
    result = run_fleetgate(
        "broker-config",
        "--out",
        str(tmp_path),
        "--gateway-user",
        "gw-1",
        env={"FLEETGATE_DATABASE_URL": pg_dsn},
    )
    assert result.exit_code == 2 and "FLEETGATE_MQTT_PASSWORD" in result.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("1.5h", 5400),
    ],
)
def test_grace_periods_read_like_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_broker_config_says_which_settings_the_gateway_account_needs(pg_dsn, tmp_path):
    """Issue 16, item 7: the README set no FLEETGATE_MQTT_USERNAME and the command only said
    "no gateway user". It names both settings, and works with them alone."""
    run_async(register(pg_dsn, DEVICES[:1]))
    env = {"FLEETGATE_DATABASE_URL": pg_dsn}
    bare = run_fleetgate("broker-config", "--out", str(tmp_path / "a"), env=env)
    assert bare.exit_code == 2
    assert "FLEETGATE_MQTT_USERNAME" in bare.stderr and "FLEETGATE_MQTT_PASSWORD" in bare.stderr
    no_password = run_fleetgate(
        "broker-config",
        "--out",
        str(tmp_path / "b"),
        env={**env, "FLEETGATE_MQTT_USERNAME": "fleetgate-gw"},
    )
    assert no_password.exit_code == 2 and "FLEETGATE_MQTT_PASSWORD" in no_password.stderr
    made = run_fleetgate(
        "broker-config",
        "--out",
        str(tmp_path / "c"),
        env={
            **env,
            "FLEETGATE_MQTT_USERNAME": "fleetgate-gw",
            "FLEETGATE_MQTT_PASSWORD": "gw-secret",
        },
    )
    assert made.exit_code == 0 and "1 gateway users" in made.stdout, made.output
    assert (tmp_path / "c" / "gateway-users").read_text() == "fleetgate-gw\n"


def test_broker_config_without_a_compiler_says_what_to_install_or_takes_a_built_plugin(
    pg_dsn, tmp_path
):
    env = {
        "FLEETGATE_DATABASE_URL": pg_dsn,
        "FLEETGATE_MQTT_USERNAME": "fleetgate-gw",
        "FLEETGATE_MQTT_PASSWORD": "gw-secret",
        "CC": "no-such-cc",
    }
    failed = run_fleetgate("broker-config", "--out", str(tmp_path / "a"), env=env)
    assert (
        failed.exit_code == 2 and "mosquitto-dev" in failed.stderr and "--plugin" in failed.stderr
    )
    built = tmp_path / "elsewhere" / "fleetgate_subscribe_acl.so"
    made = run_fleetgate(
        "broker-config", "--out", str(tmp_path / "b"), "--plugin", str(built), env=env
    )
    assert made.exit_code == 0, made.output
    assert f"plugin {built}\n" in (tmp_path / "b" / "fleetgate.conf").read_text()
    assert not (tmp_path / "b" / "fleetgate_subscribe_acl.so").exists()


DOCS = REPO / "docs" / "device-identity.md"


def docs_broker_lines(generated: Path, devices_port: int) -> list[str]:
    """The lines docs/device-identity.md adds at the end of deploy/mosquitto.conf, for this
    test: the devices' listener on a free loopback port without TLS, the generated folder."""
    blocks = re.findall(r"^```\w*\n(.*?)^```", DOCS.read_text(), flags=re.DOTALL | re.MULTILINE)
    block = next(b for b in blocks if "include_dir /etc/mosquitto/fleetgate" in b)
    assert block.startswith("# /etc/mosquitto/mosquitto.conf: deploy/mosquitto.conf, then")
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("certfile", "keyfile"))]
    assert lines[-1] == "include_dir /etc/mosquitto/fleetgate", "the include comes last"
    return [
        line.replace("listener 8883", f"listener {devices_port} 127.0.0.1").replace(
            "/etc/mosquitto/fleetgate", str(generated)
        )
        for line in lines
    ]


@contextlib.contextmanager
def broker_as_documented(tmp_path: Path, env: dict):
    """`fleetgate broker-config` writes the files, and a Mosquitto runs deploy/mosquitto.conf with
    the docs' lines at its end; yields the broker, the devices' port and the generated folder."""
    out = tmp_path / "broker"
    made = run_fleetgate("broker-config", "--out", str(out), env=env)
    assert made.exit_code == 0, made.output
    devices_port = free_port()
    broker = Mosquitto(
        datadir=tmp_path / "mosquitto",
        extra_config="\n".join(docs_broker_lines(out, devices_port)) + "\n",
    )
    broker.start()
    try:
        yield broker, devices_port, out
    finally:
        broker.stop(kill=True)


def publish(broker: Mosquitto, port: int, *login: str, topic: str = "fg/v1/x") -> tuple[int, str]:
    """mosquitto_pub once; its exit status and what it said."""
    args = ["-u", login[0], "-P", login[1], "-i", login[0]] if login else []
    done = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(port),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            "{}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.returncode, done.stderr


def test_the_generated_files_included_as_the_docs_show_refuse_anonymous_clients(pg_dsn, tmp_path):
    """Issue 16, item 7: included where the docs showed them (before deploy/mosquitto.conf's
    allow_anonymous true), the generated files let anonymous clients in: Mosquitto keeps an
    option's last value. The broker here is deploy/mosquitto.conf with the lines the docs add
    at its end (TLS left out); one with the include first shows why the order matters."""
    run_async(register(pg_dsn, DEVICES[:1]))
    env = {
        "FLEETGATE_DATABASE_URL": pg_dsn,
        "FLEETGATE_MQTT_USERNAME": "fleetgate-gw",
        "FLEETGATE_MQTT_PASSWORD": "gw-secret",
    }
    secret = secrets_of(run_fleetgate("devices", "provision", "lock-a", env=env).stdout)["lock-a"]
    with broker_as_documented(tmp_path, env) as (broker, devices_port, out):
        for port in (broker.port, devices_port):
            code, said = publish(broker, port)
            assert code != 0 and "not authorised" in said, f"anonymous on port {port}"
        assert publish(broker, broker.port, "fleetgate-gw", "gw-secret")[0] == 0
        assert (
            publish(broker, devices_port, "lock-a", secret, topic="fg/v1/lock-a/telemetry")[0] == 0
        )

    first = Mosquitto(datadir=tmp_path / "mosquitto-include-first")
    first.config = lambda: Mosquitto.config(first).replace(
        "per_listener_settings false\n", f"per_listener_settings false\ninclude_dir {out}\n"
    )
    first.start()
    try:
        assert publish(first, first.port)[0] == 0, "allow_anonymous true came later and won"
    finally:
        first.stop(kill=True)


def test_the_simulator_logs_in_with_its_devices_own_secrets_or_says_what_to_do(pg_dsn, tmp_path):
    """Issue 16, item 7: `fleetgate sim --register` against a broker with the generated password
    file waited 60 s and printed a traceback. Its devices now log in with their own secrets
    (issued by --register / --register-only, kept in the data folder); until the broker knows
    them, it stops at once with one line saying what to run."""
    env = {
        "FLEETGATE_DATABASE_URL": pg_dsn,
        "FLEETGATE_MQTT_USERNAME": "fleetgate-gw",
        "FLEETGATE_MQTT_PASSWORD": "gw-secret",
    }
    simulate = ("sim", "--vehicles", "2", "--samples", "3", "--fast")
    with broker_as_documented(tmp_path, env) as (broker, devices_port, out):
        sim_env = {
            "FLEETGATE_DATABASE_URL": pg_dsn,
            "FLEETGATE_DATA_DIR": str(tmp_path / "data"),
            "FLEETGATE_MQTT_URL": f"mqtt://127.0.0.1:{devices_port}",
        }
        anonymous = run_fleetgate(*simulate, env=sim_env)
        assert anonymous.exit_code == 2 and "--register" in anonymous.stderr
        assert anonymous.stderr.count("\n") == 1, "one line, no traceback"

        registered = run_fleetgate("sim", "--vehicles", "2", "--register-only", env=sim_env)
        assert registered.exit_code == 0, registered.output
        kept = tmp_path / "data" / "sim-secrets.json"
        assert kept.stat().st_mode & 0o777 == 0o600
        assert sorted(orjson.loads(kept.read_bytes())) == ["car-0002", "ebike-0001"]

        unknown = run_fleetgate(*simulate, env=sim_env)
        assert unknown.exit_code == 2 and "broker-config" in unknown.stderr
        assert unknown.stderr.count("\n") == 1

        reloaded = run_fleetgate(
            "broker-config",
            "--out",
            str(out),
            "--reload-pidfile",
            str(tmp_path / "mosquitto" / "mosquitto.pid"),
            env=env,
        )
        assert reloaded.exit_code == 0 and "2 devices" in reloaded.stdout
        time.sleep(0.5)
        expected = {"fg/v1/ebike-0001/telemetry", "fg/v1/car-0002/telemetry"}
        with gateway_listener(broker, "fg/v1/+/telemetry") as lines:
            ran = run_fleetgate(*simulate, env=sim_env)
            assert ran.exit_code == 0, ran.output
            wait_until(lambda: expected <= {line.split(" ")[0] for line in lines})
        assert {
            line.split(" ")[0] for line in lines if not line.startswith(("Client ", "Subscribed"))
        } == expected


@contextlib.contextmanager
def gateway_listener(broker: Mosquitto, topic: str):
    """mosquitto_sub as the gateway's account, subscribed before the block runs; yields the
    lines it prints (stdbuf: it would hold them back in a pipe)."""
    proc = subprocess.Popen(
        [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-u",
            "fleetgate-gw",
            "-P",
            "gw-secret",
            "-q",
            "1",
            "-v",
            "-d",
            "-t",
            topic,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("Subscribed") for line in lines))
        yield lines
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)


def wait_until(check, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
