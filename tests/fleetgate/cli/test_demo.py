"""`fleetgate demo`, which scripts/demo runs: it says what it listens on, each port can be moved,
a taken port stops it before it starts anything, and every run starts with exactly the fleet it
was asked for, without deleting anything from a database the user configured."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx
import pytest

from fleetgate.embedded import free_port
from telemetry.store import TelemetryStore, VehicleRegistration
from tests import REPO
from tests.cli_runner import run_fleetgate
from tests.fixtures_db import run_async

pytestmark = pytest.mark.integration


class Demo:
    """`fleetgate demo` as a child process, its output in a file."""

    def __init__(self, tmp_path: Path, *args: str, **env: str) -> None:
        self.ports = {"api": free_port(), "metrics": free_port(), "coap": free_port()}
        self.out = tmp_path / f"demo-{time.monotonic_ns()}.txt"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")},
            "FLEETGATE_DATA_DIR": str(tmp_path / ".fleetgate"),
            **env,
        }
        self.args = [
            "--api-port",
            str(self.ports["api"]),
            "--metrics-port",
            str(self.ports["metrics"]),
            "--coap-port",
            str(self.ports["coap"]),
            "--report-every",
            "1",
            *args,
        ]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Self:
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetgate.cli", "demo", *self.args],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop_embedded_postgres()

    @property
    def output(self) -> str:
        return self.out.read_text()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.output)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"demo never printed {pattern!r} (exit code "
                    f"{self.proc.poll()}):\n{self.output[-3000:]}"
                )
            time.sleep(0.2)
        return found

    def vehicles_on_the_map(self) -> list[str]:
        """The vehicles the live map shows: GET /v1/vehicles with the demo's own key."""
        key = self.wait_for(r"/map/#key=(\S+)").group(1)
        response = httpx.get(
            f"http://127.0.0.1:{self.ports['api']}/v1/vehicles",
            headers={"X-API-Key": key},
            timeout=10.0,
        )
        return sorted(v["vehicle_ref"] for v in response.json()["items"])

    def interrupt(self) -> int:
        """Ctrl-C: the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)

    def stop_embedded_postgres(self) -> None:
        """A demo that was killed leaves its embedded server running: stop it by its pid."""
        pidfile = Path(self.env["FLEETGATE_DATA_DIR"]) / "postgres" / "pgdata" / "postmaster.pid"
        if pidfile.exists() and self.proc.returncode != 0:
            pid = int(pidfile.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
            except ProcessLookupError:
                pass


def test_each_run_on_the_embedded_services_has_exactly_its_fleet_and_says_what_it_binds(tmp_path):
    with Demo(tmp_path, "--vehicles", "3") as first:
        first.wait_for(r"vehicles connected 3/3")
        for name, variable in (
            ("api", "FLEETGATE_API_PORT"),
            ("metrics", "FLEETGATE_METRICS_PORT"),
            ("coap", "FLEETGATE_COAP_PORT"),
        ):
            assert re.search(rf"127\.0\.0\.1:{first.ports[name]} .*{variable}", first.output), (
                first.output
            )
        assert first.vehicles_on_the_map() == ["veh-0001", "veh-0002", "veh-0003"]
        assert first.interrupt() == 0, first.output
        last = [line for line in first.output.splitlines() if "unacknowledged" in line][-1]
        assert last.endswith("unacknowledged 0"), "the last line comes after the graceful stop"

    with Demo(tmp_path, "--vehicles", "2") as second:  # same data folder: a second run
        second.wait_for(r"vehicles connected 2/2")
        assert second.vehicles_on_the_map() == ["veh-0001", "veh-0002"]
        assert second.interrupt() == 0, second.output


async def _register_and_list(dsn: str, registrations: list[VehicleRegistration]) -> list[str]:
    store = await TelemetryStore.open(dsn)
    try:
        await store.register_vehicles(registrations)
        return sorted(d.vehicle_ref for d in (await store.load_registry()).values())
    finally:
        await store.close()


def test_a_configured_database_keeps_every_vehicle_it_had(tmp_path, pg_dsn, mosquitto, topic_root):
    own = VehicleRegistration("my-own-bike", "my-own-tcu", "ebike")
    run_async(_register_and_list(pg_dsn, [own]))
    with Demo(
        tmp_path,
        "--vehicles",
        "2",
        FLEETGATE_DATABASE_URL=pg_dsn,
        FLEETGATE_MQTT_URL=f"mqtt://{mosquitto.host}:{mosquitto.port}",
        FLEETGATE_MQTT_TOPIC_ROOT=topic_root,
        FLEETGATE_MQTT_CLIENT_ID="demo-configured",
    ) as demo:
        demo.wait_for(r"vehicles connected 2/2")
        assert "holds 1 more vehicles" in demo.output and "deletes nothing" in demo.output
        assert demo.vehicles_on_the_map() == ["my-own-bike", "veh-0001", "veh-0002"]
        assert demo.interrupt() == 0, demo.output
    assert run_async(_register_and_list(pg_dsn, [])) == ["my-own-bike", "veh-0001", "veh-0002"]


def test_a_taken_port_stops_the_demo_before_it_starts_anything(tmp_path):
    data_dir = tmp_path / ".fleetgate"
    with socket.socket() as api, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as coap:
        api.bind(("127.0.0.1", 0))
        api.listen()
        coap.bind(("127.0.0.1", 0))
        api_port, coap_port = api.getsockname()[1], coap.getsockname()[1]
        result = run_fleetgate(
            "demo",
            "--api-port",
            str(api_port),
            "--metrics-port",
            "0",
            "--coap-port",
            str(coap_port),
            env={
                **{k: None for k in os.environ if k.startswith("FLEETGATE_")},
                "FLEETGATE_DATA_DIR": str(data_dir),
            },
        )
    assert result.exit_code == 2, result.output
    assert f"HTTP API port {api_port} on 127.0.0.1 is not free" in result.output
    assert "--api-port or FLEETGATE_API_PORT" in result.output
    assert f"CoAP (UDP) port {coap_port} on 127.0.0.1 is not free" in result.output
    assert not data_dir.exists()  # no embedded database or broker was started


def test_on_a_configured_broker_the_demo_never_takes_a_real_gateways_session(
    tmp_path, pg_dsn, mosquitto, topic_root
):
    """It used `fleetgate run`'s default client id: pointed at a production broker it took the
    running gateway's persistent session over and acknowledged what that session held."""
    from gateway.mqtt import ConnectOptions
    from gateway.mqtt_ingress import read_presence

    def presence(client_id: str):
        probe = ConnectOptions(mosquitto.host, mosquitto.port, client_id)
        return run_async(read_presence(probe, topic_root))

    with Demo(
        tmp_path,
        "--vehicles",
        "1",
        FLEETGATE_DATABASE_URL=pg_dsn,
        FLEETGATE_MQTT_URL=f"mqtt://{mosquitto.host}:{mosquitto.port}",
        FLEETGATE_MQTT_TOPIC_ROOT=topic_root,
    ) as demo:
        demo.wait_for(r"vehicles connected 1/1")
        assert presence("fleetgate-demo")["state"] == "online"
        assert presence("fleetgate-gw-1") is None
        assert demo.interrupt() == 0, demo.output
