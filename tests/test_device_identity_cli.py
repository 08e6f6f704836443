"""`fleetgate devices provision|rotate|list` and `fleetgate broker-config` against a real database
and a real Mosquitto reloading the files it writes."""

from __future__ import annotations

import time

import orjson
import pytest
import typer
from typer.testing import CliRunner

from fleetgate.cli_devices import parse_duration, register_device_commands
from fleetgate.embedded import Mosquitto
from fleetgate.mqtt import MqttClient, MqttError
from tests.fixtures_db import run_async
from tests.harness import register
from tests.test_device_identity import DEVICES, credentials

pytestmark = pytest.mark.integration


def fleetgate() -> typer.Typer:
    """The devices commands mounted as fleetgate/cli.py mounts them."""
    app = typer.Typer()
    register_device_commands(app)

    @app.command()
    def version() -> None:  # a second command, so that typer keeps the sub-command names
        typer.echo("0")

    return app


def run(*args: str, env: dict):
    return CliRunner().invoke(fleetgate(), list(args), env=env, catch_exceptions=False)


def secrets_of(output: str) -> dict[str, str]:
    return dict(line.split("\t") for line in output.splitlines() if "\t" in line)


async def can_connect(broker: Mosquitto, user: str, password: str) -> bool:
    client = MqttClient(broker.host, broker.port, client_id=user, username=user,
                        password=password)
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
    env = {"FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_MQTT_PASSWORD": "gw-secret",
           "FLEETGATE_MQTT_TOPIC_ROOT": "fg/v1"}

    issued = run("devices", "provision", "lock-a", "lock-b", env=env)
    assert issued.exit_code == 0, issued.output
    secrets = secrets_of(issued.stdout)
    assert sorted(secrets) == ["lock-a", "lock-b"] and "shown only now" in issued.stderr
    again = run("devices", "provision", "lock-a", env=env)
    assert again.exit_code == 2 and "already provisioned: lock-a" in again.stderr
    unknown = run("devices", "provision", "ghost", env=env)
    assert unknown.exit_code == 2 and "not in the registry: ghost" in unknown.stderr
    rest = run("devices", "provision", "--missing", "--json", env=env)
    assert [d["device_id"] for d in orjson.loads(rest.stdout)] == ["lock-c"]

    out = tmp_path / "broker"
    made = run("broker-config", "--out", str(out), "--gateway-user", "gw-1", env=env)
    assert made.exit_code == 0 and "3 devices, 1 gateway users" in made.stdout, made.output
    passwd = (out / "passwd").read_text()
    assert sorted(line.split(":")[0] for line in passwd.splitlines()) == [
        "gw-1", "lock-a", "lock-b", "lock-c"]
    assert all(s not in passwd for s in secrets.values())
    assert (out / "passwd").stat().st_mode & 0o777 == 0o640
    broker = Mosquitto(datadir=tmp_path / "mosquitto",
                       extra_config=(out / "fleetgate.conf").read_text()).start()
    try:
        assert run_async(can_connect(broker, "lock-a", secrets["lock-a"]))
        assert run_async(can_connect(broker, "gw-1", "gw-secret"))
        assert not run_async(can_connect(broker, "lock-a", secrets["lock-b"]))

        rotated = run("devices", "rotate", "lock-a", "--grace", "0", env=env)
        assert rotated.exit_code == 0, rotated.output
        new = secrets_of(rotated.stdout)["lock-a"]
        reloaded = run("broker-config", "--out", str(out), "--gateway-user", "gw-1",
                       "--reload-pidfile", str(tmp_path / "mosquitto" / "mosquitto.pid"),
                       env=env)
        assert reloaded.exit_code == 0 and "sent SIGHUP" in reloaded.stdout
        time.sleep(0.5)
        assert run_async(can_connect(broker, "lock-a", new))
        assert not run_async(can_connect(broker, "lock-a", secrets["lock-a"]))
    finally:
        broker.stop(kill=True)

    listed = orjson.loads(run("devices", "list", "--json", env=env).stdout)
    assert {d["device_id"]: d["valid"] for d in listed} == {"lock-a": 1, "lock-b": 1,
                                                            "lock-c": 1}
    table = run("devices", "list", env=env).stdout
    assert "lock-a" in table and new not in table

    async def verify() -> bool:
        async with credentials(pg_dsn) as creds:
            return await creds.verify("lock-a", new)

    assert run_async(verify())


def test_broker_config_needs_the_gateway_users_password(pg_dsn, tmp_path):
    result = run("broker-config", "--out", str(tmp_path), "--gateway-user", "gw-1",
                 env={"FLEETGATE_DATABASE_URL": pg_dsn})
    assert result.exit_code == 2 and "FLEETGATE_MQTT_PASSWORD" in result.stderr


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("90", 90), ("90s", 90), ("15m", 900),
                                               ("24h", 86400), ("7d", 604800), ("1.5h", 5400)])
def test_grace_periods_read_like_durations(text, seconds):
    assert parse_duration(text) == seconds
