"""Fault injection under load: count what a simulated fleet sent, what the broker acknowledged,
what was stored, lost and stored twice while the gateway, the broker or the database fail.

Scenarios (each with a fleet of its own, publishing QoS 1 one sample per message throughout):
  gateway-kill   SIGKILL the gateway, start it again after --down-s (×--repeat)
  gateway-term   SIGTERM the gateway (graceful stop), start it again
  broker-term    SIGTERM the broker, start it again
  broker-kill    SIGKILL the broker, start it again
  db-outage      the database away for --db-down-s, then back
  db-hang        the database stops answering for --db-down-s (connections stay open, nothing
                 moves, as a server stopped by SIGSTOP or stuck in I/O), then resumes
  broker-hang    SIGSTOP the broker for --broker-hang-s, then SIGCONT (longer than the gateway's
                 1.5 MQTT keepalive intervals, 45 s by default: a silent broker is noticed by
                 the PINGRESP that does not come)

Locally (the default) the script starts everything itself: a private Mosquitto with the
project's configuration, a fresh database on the local PostgreSQL (FLEETGATE_BENCH_PG_DSN), a TCP
proxy in front of it for the outage, and `fleetgate run` as a child process. The kill -9 of the
broker comes after one clean restart, so the broker has saved the gateway's session as any broker
does that ran longer than its autosave_interval.

Against your own deployment, give the broker and database and a shell command per fault:
  --broker-url mqtt://broker:1883 --database-url postgresql://... --readyz http://gw:9108/readyz
  --gateway-kill 'systemctl kill -s KILL fleetgate' --gateway-term 'systemctl stop fleetgate'
  --gateway-start 'systemctl start fleetgate' --broker-term 'systemctl stop mosquitto'
  --broker-kill 'systemctl kill -s KILL mosquitto' --broker-start 'systemctl start mosquitto'
  --db-stop '...' --db-start '...'
Scenarios whose commands are missing are skipped. The simulated devices register under the
prefix fault-<scenario>-<run id> and connect with --device-username/--device-password (or
anonymously): run it against a staging deployment, or a listener that lets them in.

Prints one JSON document and exits 1 on any loss, or when a hang did not show on /readyz.
Usage:  .venv/bin/python -m benchmarks.faults [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from benchmarks._runner import bench_parser, progress, run_benchmark, until
from benchmarks._services import BenchServices, answers_ok, gateway_process
from firmware_sim import Fleet, FleetOptions
from fleetgate.embedded import free_port
from telemetry.store import TelemetryStore, VehicleRegistration, migrate
from tests.netproxy import TcpProxy

# scenario: (the fault, the recovery), each an action of a deployment (see act)
FAULTS = {
    "gateway-kill": ("gateway_kill", "gateway_start"),
    "gateway-term": ("gateway_term", "gateway_start"),
    "broker-term": ("broker_term", "broker_start"),
    "broker-kill": ("broker_kill", "broker_start"),
    "db-outage": ("db_stop", "db_start"),
    "db-hang": ("db_freeze", "db_thaw"),
    "broker-hang": ("broker_freeze", "broker_thaw"),
}
# Faults that leave the process running but silent: the gateway must notice by its own deadlines
# and say so on /readyz while it lasts.
HANGS = {"db-hang", "broker-hang"}
SCENARIOS = tuple(FAULTS)
ACTIONS = tuple(dict.fromkeys(action for pair in FAULTS.values() for action in pair))


async def _ready(url: str) -> bool:
    # In a thread: the database proxy runs in this event loop, and the gateway's readiness
    # check goes through it.
    return await asyncio.to_thread(answers_ok, url)


async def _until_ready(url: str, timeout: float, what: str) -> None:
    await until(lambda: _ready(url), timeout, what, interval=0.2)


class LocalDeployment:
    """Broker, database (behind a proxy that can cut it) and gateway, started here."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.services = BenchServices("fgfaults")
        self.broker = self.services.broker
        self.topic_root = "fg/v1"
        self.proxy: TcpProxy | None = None
        self.gateway: subprocess.Popen | None = None
        self.metrics_port = free_port()
        self.log_path = Path(tempfile.gettempdir()) / f"fgfaults-gateway-{os.getpid()}.log"
        self.notes: list[str] = []

    @property
    def broker_host_port(self) -> tuple[str, int]:
        return self.broker.host, self.broker.port

    @property
    def dsn(self) -> str:
        return self.services.dsn

    @property
    def readyz(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/readyz"

    async def setup(self) -> None:
        await migrate(self.dsn)
        self.proxy = await TcpProxy.start_for(self.dsn)
        await self.gateway_start()
        await _until_ready(self.readyz, 60, "the gateway ready")
        # A broker saves its state every autosave_interval and on a clean stop; only what it
        # saved survives a kill -9. Let it save the gateway's session once, as any broker that
        # ran longer than autosave_interval has.
        self.broker.restart()
        await _until_ready(self.readyz, 60, "the gateway subscribed again")
        self.notes.append(
            "the broker was restarted cleanly once after the gateway subscribed, "
            "so it has saved the gateway's session before any fault"
        )

    async def act(self, action: str) -> None:
        """One of ACTIONS, done to the services this deployment started."""
        await getattr(self, action)()

    async def gateway_start(self) -> None:
        env = {
            "FLEETGATE_DATABASE_URL": self.proxy.dsn(self.dsn),
            "FLEETGATE_MQTT_URL": self.broker.url,
            "FLEETGATE_MQTT_TOPIC_ROOT": self.topic_root,
            "FLEETGATE_MQTT_CLIENT_ID": "fgfaults-gw",
            "FLEETGATE_API_PORT": "0",
            "FLEETGATE_COAP_ENABLED": "false",
            "FLEETGATE_METRICS_PORT": str(self.metrics_port),
            "FLEETGATE_LOG_FORMAT": "json",
        }
        self.gateway = gateway_process(env, self.log_path)

    async def gateway_kill(self) -> None:
        self.gateway.send_signal(signal.SIGKILL)
        self.gateway.wait(30)

    async def gateway_term(self) -> None:
        self.gateway.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.gateway.wait, 120)
        if code != 0:
            raise RuntimeError(f"the gateway exited with {code} on SIGTERM (see {self.log_path})")

    async def broker_term(self) -> None:
        self.broker.stop()

    async def broker_kill(self) -> None:
        self.broker.stop(kill=True)

    async def broker_start(self) -> None:
        self.broker.start()

    async def db_stop(self) -> None:
        await self.proxy.cut()

    async def db_start(self) -> None:
        await self.proxy.restore()

    async def db_freeze(self) -> None:
        self.proxy.freeze()

    async def db_thaw(self) -> None:
        self.proxy.thaw()

    async def broker_freeze(self) -> None:
        self.broker.proc.send_signal(signal.SIGSTOP)

    async def broker_thaw(self) -> None:
        self.broker.proc.send_signal(signal.SIGCONT)

    def available(self, scenario: str) -> bool:
        return True

    async def close(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.gateway.wait, 60)
            if self.gateway.poll() is None:
                self.gateway.kill()
        if self.proxy is not None:
            await self.proxy.close()
        self.services.close()


class CommandDeployment:
    """An operator's own deployment, faulted through the shell commands given."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        url = urlsplit(args.broker_url)
        self.broker_host_port = (url.hostname or "127.0.0.1", url.port or 1883)
        self.dsn = args.database_url
        self.readyz = args.readyz
        self.topic_root = args.topic_root
        self.notes: list[str] = []

    async def setup(self) -> None:
        await _until_ready(self.readyz, 60, "the gateway ready")

    async def act(self, action: str) -> None:
        """One of ACTIONS: the shell command given for it (--gateway-kill for gateway_kill)."""
        command = getattr(self.args, action)
        done = await asyncio.to_thread(subprocess.run, command, shell=True)
        if done.returncode != 0:
            raise RuntimeError(f"{command!r} exited with {done.returncode}")

    def available(self, scenario: str) -> bool:
        return all(getattr(self.args, action) for action in FAULTS[scenario])

    async def close(self) -> None:
        pass


async def _fault(deployment, scenario: str, args: argparse.Namespace) -> bool:
    """One fault and the recovery from it; whether /readyz said not ready during the fault."""
    fault, recovery = FAULTS[scenario]
    await deployment.act(fault)
    down_s = {
        "db-outage": args.db_down_s,
        "db-hang": args.db_down_s,
        "broker-hang": args.broker_hang_s,
    }.get(scenario, args.down_s)
    deadline = time.monotonic() + down_s
    went_down = False
    while (left := deadline - time.monotonic()) > 0:
        probe = asyncio.ensure_future(_ready(deployment.readyz))
        done, _ = await asyncio.wait({probe}, timeout=left)
        went_down = went_down or (probe in done and not probe.result())
        await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    await deployment.act(recovery)
    await _until_ready(deployment.readyz, 120, f"the gateway ready after {scenario}")
    return went_down


async def _stored_keys(dsn: str, device_ids: list[str]) -> tuple[list[tuple[str, int]], int]:
    """(device_id, t) of every stored row of these devices, and the distinct count."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT v.device_id, (extract(epoch FROM p.time) * 1000)::bigint FROM positions p "
            "JOIN vehicles v ON v.id = p.vehicle WHERE v.device_id = ANY(%s)",
            (device_ids,),
        )
        rows = [(d, int(t)) for d, t in await cur.fetchall()]
    return rows, len(set(rows))


async def run_scenario(deployment, scenario: str, args: argparse.Namespace, run_id: str) -> dict:
    host, port = deployment.broker_host_port
    fleet = Fleet(
        FleetOptions(
            vehicles=args.vehicles,
            rate_hz=args.rate_hz,
            seed=args.seed,
            topic_root=deployment.topic_root,
            host=host,
            port=port,
            username=args.device_username,
            password=args.device_password,
            device_id_pattern=f"fault-{scenario}-{run_id}-{{type}}-{{n:04d}}",
            vehicle_ref_pattern=f"fault-{scenario}-{run_id}-{{n:04d}}",
            track_keys=True,
            session_expiry_s=3600,
        )
    )
    store = await TelemetryStore.open(deployment.dsn)
    try:
        await store.register_vehicles(
            [VehicleRegistration(r, d, t) for d, r, t in fleet.registrations()]
        )
    finally:
        await store.close()
    started = time.monotonic()
    await fleet.start()
    stop = asyncio.Event()
    running = asyncio.create_task(fleet.run(stop))
    await asyncio.sleep(args.warmup_s)
    not_ready_seen = 0
    for _ in range(args.repeat):
        not_ready_seen += await _fault(deployment, scenario, args)
        await asyncio.sleep(args.between_s)
    stop.set()
    await running
    stats = await fleet.stop()  # every buffered sample uploaded until acknowledged
    acked = stats.acked_keys()
    device_ids = [d for d, _, _ in fleet.registrations()]

    async def settled() -> bool:
        rows, _ = await _stored_keys(deployment.dsn, device_ids)
        return acked <= set(rows)

    with contextlib.suppress(TimeoutError):
        await until(settled, args.settle_s, "every acknowledged sample stored", interval=1.0)
    rows, distinct = await _stored_keys(deployment.dsn, device_ids)
    stored = set(rows)
    return {
        "scenario": scenario,
        "faults": args.repeat,
        "sent": stats.samples_generated,
        "acknowledged": len(acked),
        "stored": len(stored & acked),
        "lost": len(acked - stored),
        "duplicated": len(rows) - distinct,
        "stored_not_acknowledged": len(stored - acked),
        "device_reconnects": stats.connection_losses,
        "faults_seen_on_readyz": not_ready_seen,
        "seconds": round(time.monotonic() - started, 1),
    }


async def bench(args: argparse.Namespace) -> dict:
    deployment = CommandDeployment(args) if args.broker_url else LocalDeployment(args)
    run_id = secrets.token_hex(3)
    results = []
    try:
        await deployment.setup()
        for scenario in args.scenarios:
            if not deployment.available(scenario):
                results.append({"scenario": scenario, "skipped": "no commands for this fault"})
                continue
            results.append(await run_scenario(deployment, scenario, args, run_id))
            progress(f"faults: {results[-1]}")
    finally:
        await deployment.close()
    report = {
        "benchmark": "faults",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load": {
            "vehicles": args.vehicles,
            "rate_hz": args.rate_hz,
            "messages_per_s": args.vehicles * args.rate_hz,
            "qos": 1,
            "samples_per_message": 1,
        },
        "notes": deployment.notes,
        "scenarios": results,
    }
    if isinstance(deployment, LocalDeployment):
        report["machine"] = deployment.services.machine()
    report["zero_loss"] = all(
        r.get("lost", 0) == 0 and r.get("duplicated", 0) == 0 for r in results
    )
    # A dependency that hangs for longer than the gateway's deadlines must show on /readyz.
    report["hangs_reported"] = all(
        r["faults_seen_on_readyz"] == r["faults"]
        for r in results
        if r["scenario"] in HANGS and "skipped" not in r
    )
    return report


def scenario_list(text: str) -> list[str]:
    """--scenarios: comma-separated names of SCENARIOS."""
    names = [x for x in text.split(",") if x]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return names


def own_deployment_complete(args: argparse.Namespace) -> str | None:
    if args.broker_url and not (args.database_url and args.readyz):
        return "--broker-url needs --database-url and --readyz"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        type=scenario_list,
        help="comma-separated names of the scenarios below",
    )
    p.add_argument("--vehicles", type=int, default=300, help="simulated vehicles per scenario")
    p.add_argument("--rate-hz", type=float, default=10.0, help="samples per vehicle per second")
    p.add_argument("--repeat", type=int, default=2, help="faults per scenario")
    p.add_argument("--warmup-s", type=float, default=5.0, help="load before the first fault")
    p.add_argument("--between-s", type=float, default=5.0, help="load after each recovery")
    p.add_argument("--down-s", type=float, default=2.0, help="how long a process stays down")
    p.add_argument(
        "--db-down-s", type=float, default=10.0, help="how long the database is away or hangs"
    )
    p.add_argument(
        "--broker-hang-s", type=float, default=60.0, help="how long the broker is stopped"
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=120.0,
        help="wait at most this long for the acknowledged samples to be stored",
    )
    p.add_argument("--seed", type=int, default=7, help="the simulated fleet's seed")
    p.add_argument("--broker-url", help="your broker (then the fault commands below apply)")
    p.add_argument("--database-url", help="your database (to count what was stored)")
    p.add_argument("--readyz", help="your gateway's /readyz on its operator's port")
    p.add_argument("--topic-root", default="fg/v1", help="your gateway's MQTT topic root")
    p.add_argument("--device-username", help="the simulated devices' broker account")
    p.add_argument("--device-password")
    for action in ACTIONS:
        p.add_argument(f"--{action.replace('_', '-')}", help="shell command (own deployment)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(
        bench,
        build_parser(),
        argv,
        check=own_deployment_complete,
        passed=lambda report: report["zero_loss"] and report["hangs_reported"],
    )


if __name__ == "__main__":
    main()
