"""Remote-command round trip: API call to device result, against the bare MQTT floor.

Everything runs on this machine in one run: a private Mosquitto with the project's
configuration, a fresh database on the local PostgreSQL, and in a child process the simulator:
1,000 connected vehicles (telemetry at --rate-hz each, all parked so no interlock holds a
command back) plus a few floor devices on a topic root of their own. The simulated devices
answer with NO delay (CommandBehaviour(delay_ms=(0, 0))), so what is measured is the system, not
a modelled TCU. In this process: the ingest gateway (vehicle_state, which the interlocks read)
and the CommandService.

- command:  CommandService.submit() of unlock/lock (alternating per vehicle, so each one really
            goes to the device) -> wait() until succeeded; submit to terminal, per command.
- floor:    a bare MqttClient publishes the same payload to a floor device's cmd topic (QoS 1)
            and waits for its result on cmd/result: broker + simulated device + broker, the part
            of the round trip no command system can avoid. Measured interleaved with the
            commands, in the same run, so both see the same machine load.

A sequential phase (one command at a time) gives the latency; a concurrent phase (--concurrency
callers at once) shows it under load. Prints one JSON document.
Usage:  .venv/bin/python benchmarks/commands.py [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


ROOT, FLOOR_ROOT = "bench-cmd/v1", "bench-floor/v1"
NEVER_MS = np.iinfo(np.int64).max


def _fleet_options(args, root: str, vehicles: int, pattern: str):
    from firmware_sim import CommandBehaviour, FleetOptions

    return FleetOptions(
        vehicles=vehicles,
        rate_hz=args.rate_hz,
        seed=args.seed,
        topic_root=root,
        host=args.host,
        port=args.port,
        session_expiry_s=60,
        track_keys=False,
        device_id_pattern=pattern,
        vehicle_ref_pattern=pattern.replace("{type}", "veh"),
        commands=CommandBehaviour(delay_ms=(0.0, 0.0)),
    )


def fleets(args):
    from firmware_sim import Fleet

    out = []
    for root, n, pattern in (
        (ROOT, args.vehicles, "{type}-{n:05d}"),
        (FLOOR_ROOT, args.floor_devices, "floor-{type}-{n:03d}"),
    ):
        fleet = Fleet(_fleet_options(args, root, n, pattern))
        fleet.model.phase_end_ms[:] = NEVER_MS  # parked: locked, still, ignition off
        out.append(fleet)
    return out


# --- the simulator, in a child process ------------------------------------------------------------


async def _sim_child(args: argparse.Namespace) -> None:
    main, floor = fleets(args)
    await asyncio.gather(main.start(timeout=120), floor.start(timeout=120))
    stop = asyncio.Event()
    runs = [asyncio.create_task(f.run(stop)) for f in (main, floor)]
    print(orjson.dumps({"event": "running"}).decode(), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told
    stop.set()
    await asyncio.gather(*runs)
    await asyncio.gather(main.stop(flush=False), floor.stop(flush=False))
    s = main.stats
    print(
        orjson.dumps(
            {
                "event": "done",
                "commands_received": s.commands_received,
                "executions": sum(s.command_executions.values()),
                "max_executions_per_id": max(s.command_executions.values(), default=0),
            }
        ).decode(),
        flush=True,
    )


class SimProcess:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.proc: asyncio.subprocess.Process | None = None
        self.done: dict | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        line = await asyncio.wait_for(self.proc.stdout.readline(), 180)
        if not line:
            raise RuntimeError("simulator failed:\n" + (await self.proc.stderr.read()).decode())
        assert orjson.loads(line)["event"] == "running"

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        async for line in self.proc.stdout:
            event = orjson.loads(line)
            if event["event"] == "done":
                self.done = event
        await self.proc.wait()


# --- the floor: a bare MQTT round trip through the same broker ----------------------------------


class Floor:
    def __init__(self, host: str, port: int) -> None:
        from gateway.mqtt import ConnectOptions, MqttClient

        self.waiting: dict[str, asyncio.Future] = {}
        self.client = MqttClient(
            ConnectOptions(host, port, f"bench-floor-{os.getpid()}"), on_messages=self._on_messages
        )

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe([(f"{FLOOR_ROOT}/+/cmd/result", 1)])

    def _on_messages(self, messages) -> None:
        for m in messages:
            fut = self.waiting.pop(orjson.loads(m.payload)["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def round_trip(self, device_id: str, ctype: str) -> float:
        cid = str(uuid.uuid4())
        body = orjson.dumps(
            {"id": cid, "type": ctype, "params": {}, "deadline": int(time.time() * 1000) + 60_000}
        )
        fut = self.waiting[cid] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        self.client.publish(
            f"{FLOOR_ROOT}/{device_id}/cmd", body, qos=1, content_type="application/json"
        )
        await asyncio.wait_for(fut, 10)
        return time.perf_counter() - t0


# --- measuring ------------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000.0
    return {
        "n": len(ms),
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p90": round(float(np.percentile(ms, 90)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "max": round(float(ms.max()), 2),
    }


class Targets:
    """Alternating unlock/lock per vehicle, so that every command really goes to the device."""

    def __init__(self, device_ids: list[str]) -> None:
        self.device_ids = device_ids
        self.next_type = {d: "unlock" for d in device_ids}  # parked vehicles are locked
        self.k = 0

    def take(self) -> tuple[str, str]:
        d = self.device_ids[self.k % len(self.device_ids)]
        self.k += 1
        t = self.next_type[d]
        self.next_type[d] = "lock" if t == "unlock" else "unlock"
        return d, t


async def command_round_trip(service, device_id: str, ctype: str) -> float:
    from commands import CommandRequest, CommandState

    request = CommandRequest(
        device_id=device_id,
        type=ctype,
        idempotency_key=uuid.uuid4().hex,
        requested_by="benchmark",
        ttl_s=60,
    )
    t0 = time.perf_counter()
    cmd = await service.submit(request)
    done = await service.wait(cmd.id, 30)
    elapsed = time.perf_counter() - t0
    if done.state is not CommandState.SUCCEEDED or done.attempts != 1:
        raise RuntimeError(
            f"{ctype} to {device_id}: {done.state.value} ({done.reason}), attempts {done.attempts}"
        )
    return elapsed


class CommitProbe:
    """One durable single-row transaction through psycopg (what each of the command's two
    state changes costs at least): the database's share of the floor."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.k = 0

    async def start(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await self.conn.execute("CREATE TABLE bench_probe (k integer PRIMARY KEY)")

    async def once(self) -> float:
        self.k += 1
        t0 = time.perf_counter()
        async with self.conn.transaction():
            await self.conn.execute("INSERT INTO bench_probe VALUES (%s)", (self.k,))
        return time.perf_counter() - t0


async def sequential(
    service, floor: Floor, targets: Targets, floor_ids: list[str], n: int, probe: CommitProbe
) -> dict:
    cmd_s, floor_s, commit_s = [], [], []
    for k in range(n):
        d, t = targets.take()
        cmd_s.append(await command_round_trip(service, d, t))
        floor_s.append(
            await floor.round_trip(
                floor_ids[k % len(floor_ids)],
                "unlock" if (k // len(floor_ids)) % 2 == 0 else "lock",
            )
        )
        commit_s.append(await probe.once())
    return {
        "round_trip_ms": percentiles(cmd_s),
        "floor_ms": percentiles(floor_s),
        "durable_commit_ms": percentiles(commit_s),
    }


async def concurrent(
    service, floor: Floor, targets: Targets, floor_ids: list[str], n: int, concurrency: int
) -> dict:
    cmd_s, floor_s = [], []
    lock = asyncio.Lock()
    remaining = [n]

    async def caller(i: int) -> None:
        while True:
            async with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
                d, t = targets.take()
            cmd_s.append(await command_round_trip(service, d, t))

    async def floor_caller(i: int) -> None:
        k = 0
        while remaining[0] > 0:
            floor_s.append(
                await floor.round_trip(
                    floor_ids[i % len(floor_ids)], "unlock" if k % 2 == 0 else "lock"
                )
            )
            k += 1

    t0 = time.perf_counter()
    # Floor devices answer in parallel too, a few at a time, while the commands run.
    await asyncio.gather(
        *(caller(i) for i in range(concurrency)),
        *(floor_caller(i) for i in range(min(len(floor_ids), 4))),
    )
    elapsed = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "commands_per_s": round(n / elapsed, 1),
        "round_trip_ms": percentiles(cmd_s),
        "floor_ms": percentiles(floor_s),
    }


async def bench(args: argparse.Namespace) -> dict:
    from prometheus_client import CollectorRegistry

    from benchmarks._services import BenchServices, machine
    from gateway.service import Gateway, GatewayConfig
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    services = BenchServices("fgbench_cmd")
    dsn, broker, pg_version = services.dsn, services.broker, services.pg_version
    args.host, args.port = broker.host, broker.port
    sim = SimProcess(
        [
            sys.executable,
            __file__,
            "--role",
            "sim",
            "--host",
            broker.host,
            "--port",
            str(broker.port),
            "--vehicles",
            str(args.vehicles),
            "--floor-devices",
            str(args.floor_devices),
            "--rate-hz",
            str(args.rate_hz),
            "--seed",
            str(args.seed),
        ]
    )
    gateway = service = gw_task = None
    try:
        report = await migrate(dsn, storage="native")
        main, floor_fleet = fleets(args)
        store = await TelemetryStore.open(dsn)
        await store.register_vehicles(
            [
                VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t)
                for d, r, t in main.registrations()
            ]
        )
        await store.close()
        machine_info = machine(pg_version)

        gw_cfg = GatewayConfig(
            database_url=dsn,
            mqtt_host=broker.host,
            mqtt_port=broker.port,
            mqtt_topic_root=ROOT,
            mqtt_client_id="bench-cmd-gateway",
            mqtt_session_expiry_s=120,
        )
        # The production wiring: the gateway runs the command service and feeds it every commit.
        gateway = Gateway(gw_cfg, registry=CollectorRegistry())
        gw_task = asyncio.create_task(gateway.run())
        while not gateway.ready.is_set():
            if gw_task.done():
                gw_task.result()
            await asyncio.sleep(0.05)
        service = gateway.commands
        await sim.start()
        floor = Floor(broker.host, broker.port)
        await floor.start()

        async def online() -> int:
            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                cur = await conn.execute(
                    "SELECT count(*) FROM vehicle_state WHERE online "
                    "AND time > now() - interval '30 seconds'"
                )
                return (await cur.fetchone())[0]

        deadline = time.monotonic() + 120
        while await online() < args.vehicles:
            if time.monotonic() > deadline or gw_task.done():
                raise RuntimeError(f"only {await online()} of {args.vehicles} vehicles online")
            await asyncio.sleep(0.5)

        targets = Targets(main.device_ids)
        floor_ids = floor_fleet.device_ids
        probe = CommitProbe(dsn)
        await probe.start()
        await sequential(service, floor, targets, floor_ids, args.warmup, probe)
        load0 = os.getloadavg()[0]
        seq = await sequential(service, floor, targets, floor_ids, args.commands, probe)
        # The least a durable command can cost: the bare round trip plus its two commits.
        seq["floor_plus_two_commits_p50_ms"] = round(
            seq["floor_ms"]["p50"] + 2 * seq["durable_commit_ms"]["p50"], 2
        )
        await probe.conn.close()
        conc = await concurrent(service, floor, targets, floor_ids, args.commands, args.concurrency)
        for phase in (seq, conc):
            phase["ratio_p50"] = round(phase["round_trip_ms"]["p50"] / phase["floor_ms"]["p50"], 2)
            phase["ratio_p99"] = round(phase["round_trip_ms"]["p99"] / phase["floor_ms"]["p99"], 2)
        await floor.client.disconnect()
        await sim.stop()
        out = {
            "benchmark": "commands",
            "date": time.strftime("%Y-%m-%d"),
            "machine": machine_info,
            "loadavg_at_measurement": round(load0, 2),
            "storage": report.storage,
            "vehicles_connected": args.vehicles,
            "floor_devices": args.floor_devices,
            "telemetry_per_vehicle_hz": args.rate_hz,
            "device_answer_delay_ms": 0,
            "commands": "unlock/lock alternating per vehicle, submit -> succeeded",
            "sequential": seq,
            "concurrent": conc,
            "device_side": sim.done,
            "targets": {
                "p99_under_50ms": seq["round_trip_ms"]["p99"] < 50.0,
                "p99_within_3x_floor": seq["ratio_p99"] <= 3.0,
                "p50_within_3x_floor": seq["ratio_p50"] <= 3.0,
            },
        }
        return out
    finally:
        with contextlib.suppress(Exception):
            await sim.stop()
        if sim.proc is not None and sim.proc.returncode is None:
            sim.proc.kill()
        if gateway is not None:
            gateway.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gw_task, 30)
        services.close()  # the gateway stopped its command service


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["bench", "sim"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--vehicles", type=int, default=1000)
    p.add_argument("--floor-devices", type=int, default=20)
    p.add_argument("--rate-hz", type=float, default=1.0, help="telemetry per vehicle")
    p.add_argument("--commands", type=int, default=2000, help="per phase")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "sim":
        asyncio.run(_sim_child(args))
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    print(orjson.dumps(asyncio.run(bench(args)), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
