"""`fleetgate migrate failover-drill` against real processes: two `fleetgate run` gateways on the
test Mosquitto and a test database, a simulated TCU answering commands. The drill stops the one
running the command dispatcher (SIGTERM through --stop-command, as an operator's `systemctl stop`
would), the other takes over, and a `locate` succeeds within 30 s; the timings are evidence, and
`migrate gate` then finds the drill and both processes' readiness (and later the one left)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim import Fleet, FleetOptions
from firmware_sim.tcu import CommandBehaviour
from fleetgate.embedded import free_port
from telemetry.store import TelemetryStore
from tests.cli_runner import run_fleetgate
from tests.harness import GatewayProcess, eventually, register

pytestmark = pytest.mark.integration


async def api_key(dsn: str) -> str:
    async with await TelemetryStore.open(dsn) as store:
        _key, secret = await store.create_api_key("drill", ["commands:write", "fleet:read"])
    return secret


async def dispatcher_of(processes: list[GatewayProcess]) -> GatewayProcess | None:
    for p in processes:
        try:
            text = (await p.get("/metrics")).text
        except Exception:  # noqa: BLE001 - not answering: not the dispatcher
            continue
        if re.search(r"(?m)^fleetgate_commands_dispatcher_active 1(\.0)?$", text):
            return p
    return None


async def is_ready(gw: GatewayProcess) -> bool:
    try:
        return (await gw.get("/readyz")).status_code == 200
    except Exception:  # noqa: BLE001 - not answering yet
        return False


def distinct_ports(n: int) -> list[int]:
    """n free ports, all different: free_port() may hand out a port again until it is bound,
    and these are bound only once the processes start."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class Deployment:
    vehicle: str
    key: str
    holder: GatewayProcess
    other: GatewayProcess
    gateways: list[GatewayProcess]
    stop_command: str


@contextlib.asynccontextmanager
async def deployment(mosquitto, pg_dsn, topic_root, tmp_path):
    """Two `fleetgate run` processes with their operator's ports and APIs, one dispatching, and
    a simulated TCU answering commands; stopped afterwards."""
    fleet = Fleet(
        FleetOptions(
            vehicles=1,
            rate_hz=1.0,
            seed=5,
            topic_root=topic_root,
            host=mosquitto.host,
            port=mosquitto.port,
            commands=CommandBehaviour(delay_ms=(20.0, 60.0), acknowledge=True),
            session_expiry_s=60,
            track_keys=False,
        )
    )
    ((_device, vehicle, _kind),) = fleet.registrations()
    await register(pg_dsn, fleet.registrations())
    key = await api_key(pg_dsn)
    ports = distinct_ports(4)
    gateways = [
        GatewayProcess(
            pg_dsn,
            mosquitto,
            topic_root,
            f"{name}-{topic_root[7:13]}",
            tmp_path / f"{name}.log",
            metrics_port=ports[2 * k],
            FLEETGATE_API_PORT=ports[2 * k + 1],
            FLEETGATE_MQTT_SHARED_GROUP="fleetgate",
        )
        for k, name in enumerate(("gw-a", "gw-b"))
    ]
    stop = asyncio.Event()
    driving = None
    try:
        for gw in gateways:
            gw.start()
            await gw.wait_subscribed()
        for gw in gateways:  # a drill runs on a settled deployment: every process ready
            await eventually(lambda gw=gw: is_ready(gw), timeout=60, what=f"{gw.ops_url} ready")
        await eventually(
            lambda: dispatcher_of(gateways), timeout=30, what="a process dispatching commands"
        )
        holder = await dispatcher_of(gateways)
        other = gateways[1 - gateways.index(holder)]
        await fleet.start()
        driving = asyncio.create_task(fleet.run(stop))
        # The stop command an operator would give (`ssh {host} systemctl stop ...`): here the
        # process behind the operator's port, found by its port.
        for gw in gateways:
            (tmp_path / f"{gw.metrics_port}.pid").write_text(str(gw.proc.pid))
        stop_command = f"kill -TERM $(cat {tmp_path}/{{port}}.pid)"
        yield Deployment(vehicle, key, holder, other, gateways, stop_command)
    finally:
        stop.set()
        if driving is not None:
            await driving
            await fleet.stop(flush=False)
        for gw in gateways:
            gw.stop()


def api_of(gw: GatewayProcess) -> str:
    return f"http://127.0.0.1:{gw.env['FLEETGATE_API_PORT']}"


async def test_the_dispatcher_fails_over_and_a_command_succeeds_within_30_s(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    async with deployment(mosquitto, pg_dsn, topic_root, tmp_path) as dep:
        holder, other, gateways, vehicle, key = (
            dep.holder, dep.other, dep.gateways, dep.vehicle, dep.key
        )  # fmt: skip
        stop_command = dep.stop_command
        env = {"FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_DRILL_API_KEY": key}
        args = ["migrate", "failover-drill", "--vehicle", vehicle]
        for gw in gateways:
            args += [
                "--process",
                gw.ops_url,
                "--api",
                f"http://127.0.0.1:{gw.env['FLEETGATE_API_PORT']}",
            ]
        result = await asyncio.to_thread(
            run_fleetgate, *args, "--stop-command", stop_command, env=env
        )
        assert result.exit_code == 0, result.output + holder.log_path.read_text()[-2000:]
        assert f"{holder.ops_url} runs the command dispatcher; standing by: {other.ops_url}" in (
            result.output
        )
        assert "locate before the stop: succeeded in" in result.output
        assert holder.proc.wait(30) == 0, "stopped gracefully by the stop command"
        line = result.output.splitlines()[-1]
        assert re.fullmatch(
            rf"PASS  failover drill: {re.escape(holder.ops_url)} stopped; "
            rf"{re.escape(other.ops_url)} took over after [\d.]+ s; locate succeeded "
            r"[\d.]+ s after the stop \(evidence \d+\)",
            line,
        ), line
        async with await TelemetryStore.open(pg_dsn) as store:
            (drill,) = await store.migration_evidence("failover_drill")
        d = drill.detail
        assert drill.passed and drill.batch is None
        assert d["stopped"] == holder.ops_url and d["took_over"] == other.ops_url
        assert d["command_state"] == "succeeded" and d["stop"] == "command"
        assert 0 < d["takeover_s"] <= 30 and 0 < d["command_s"] <= 30
        assert d["command_accepted_by"] == f"http://127.0.0.1:{other.env['FLEETGATE_API_PORT']}"

        # The gate: the drill counts; the process left is ready, the stopped one is not.
        ready = [
            "--ready-url",
            f"{other.ops_url}/readyz",
            "--ready-url",
            f"{holder.ops_url}/readyz",
        ]
        result = await asyncio.to_thread(
            run_fleetgate, "migrate", "gate", "--batch", "berlin-1", "--json", *ready, env=env
        )
        assert result.exit_code == 2, "no run or evidence of batch berlin-1 yet"
        async with await TelemetryStore.open(pg_dsn) as store:
            await store.record_migration_evidence(
                "signoff", batch="berlin-1", passed=True, detail={"percent": 12.0, "by": "Ada"},
                recorded_at=datetime.now(UTC) - timedelta(hours=1),
            )  # fmt: skip
        result = await asyncio.to_thread(
            run_fleetgate, "migrate", "gate", "--batch", "berlin-1", "--json", *ready, env=env
        )
        assert result.exit_code == 1
        criteria = {c["name"]: c for c in json.loads(result.output)["criteria"]}
        assert criteria["failover_drill"]["met"] and criteria["failover_drill"]["evidence"] == (
            drill.id
        )
        assert criteria["signoff"]["met"]
        assert not criteria["processes_ready"]["met"]
        assert criteria["processes_ready"]["detail"].startswith(
            f"not ready: {holder.ops_url}/readyz (no answer: ConnectError"
        )


async def test_a_drill_whose_command_cannot_reach_the_new_dispatcher_fails_and_is_recorded(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    """Only the stopped process's API named: the locate after the stop finds no API to take it
    (the takeover happens all the same); exit 1, the failed drill recorded with why."""
    async with deployment(mosquitto, pg_dsn, topic_root, tmp_path) as dep:
        env = {"FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_DRILL_API_KEY": dep.key}
        args = ["migrate", "failover-drill", "--vehicle", dep.vehicle, "--within", "10",
                "--api", api_of(dep.holder), "--stop-command", dep.stop_command]  # fmt: skip
        for gw in dep.gateways:
            args += ["--process", gw.ops_url]
        result = await asyncio.to_thread(run_fleetgate, *args, env=env)
        assert result.exit_code == 1, result.output
        assert f"FAIL  failover drill: {dep.holder.ops_url} stopped; " in result.output
        assert "locate unanswered" in result.output
        async with await TelemetryStore.open(pg_dsn) as store:
            (drill,) = await store.migration_evidence("failover_drill")
        assert not drill.passed
        assert drill.detail["reason"].startswith(
            "the locate after the stop ended unanswered within 10 s (no --api accepted it"
        )
        assert drill.detail["took_over"] == dep.other.ops_url, "the takeover itself happened"


async def test_a_drill_that_cannot_run_says_why_and_records_nothing(
    mosquitto, pg_dsn, topic_root, tmp_path
):
    gw = GatewayProcess(
        pg_dsn, mosquitto, topic_root, f"gw-{topic_root[7:13]}", tmp_path / "gw.log",
        metrics_port=free_port(),
    )  # fmt: skip
    env = {"FLEETGATE_DATABASE_URL": pg_dsn, "FLEETGATE_DRILL_API_KEY": "fgk_x_y"}
    try:
        gw.start()
        await gw.wait_subscribed()
        silent = f"http://127.0.0.1:{free_port()}"
        args = ("migrate", "failover-drill", "--vehicle", "veh-0001", "--api", silent)
        result = await asyncio.to_thread(run_fleetgate, *args, "--process", gw.ops_url, env=env)
        assert result.exit_code == 2
        assert "name at least two gateway processes (--process)" in result.output
        result = await asyncio.to_thread(
            run_fleetgate, *args, "--process", gw.ops_url, "--process", silent, env=env
        )
        assert result.exit_code == 2
        assert f"the drill could not run: no metrics from {silent}" in result.output
        assert "nothing recorded" in result.output
        result = await asyncio.to_thread(
            run_fleetgate, *args, "--process", gw.ops_url, "--process", silent,
            env={"FLEETGATE_DATABASE_URL": pg_dsn},
        )  # fmt: skip
        assert result.exit_code == 2 and "FLEETGATE_DRILL_API_KEY must hold" in result.output
        async with await TelemetryStore.open(pg_dsn) as store:
            assert await store.migration_evidence() == []
    finally:
        gw.stop()
