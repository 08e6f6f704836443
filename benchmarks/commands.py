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
Usage:  .venv/bin/python -m benchmarks.commands [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import orjson
import psycopg

from benchmarks._runner import (
    bench_parser,
    cpu_seconds,
    emit,
    loadavg,
    percentiles,
    run_benchmark,
    start_child,
    until,
)
from benchmarks._services import BenchServices, running_gateway

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
    emit({"event": "running"})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told
    stop.set()
    await asyncio.gather(*runs)
    await asyncio.gather(main.stop(flush=False), floor.stop(flush=False))
    s = main.stats
    emit(
        {
            "event": "done",
            "commands_received": s.commands_received,
            "executions": sum(s.command_executions.values()),
            "max_executions_per_id": max(s.command_executions.values(), default=0),
        }
    )


class SimProcess:
    """Both fleets in a child process (_sim_child), from connected until the block ends; then
    `done` holds what the devices counted."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.options = {
            name: getattr(args, name)
            for name in ("host", "port", "vehicles", "floor_devices", "rate_hz", "seed")
        }
        self.proc: asyncio.subprocess.Process | None = None
        self.done: dict | None = None

    async def __aenter__(self) -> SimProcess:
        self.proc = await start_child(__spec__.name, "sim", stdin=subprocess.PIPE, **self.options)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 180)
        if not line:
            raise RuntimeError("simulator failed:\n" + (await self.proc.stderr.read()).decode())
        assert orjson.loads(line)["event"] == "running"
        return self

    async def __aexit__(self, failed: type[BaseException] | None, *_: object) -> None:
        try:
            await self._stop()
        except Exception:
            if failed is None:
                raise  # else the benchmark's own failure is the one to report
        finally:
            if self.proc.returncode is None:
                self.proc.kill()

    async def _stop(self) -> None:
        if self.proc.returncode is not None:
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


def delays_ms(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000.0
    return {"n": len(ms), **percentiles(ms, (50, 90, 99), digits=2)}


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


RETRIED: list[int] = [0]  # commands delivered more than once (the device took them once)


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
    if done.state is not CommandState.SUCCEEDED:
        raise RuntimeError(
            f"{ctype} to {device_id}: {done.state.value} ({done.reason}), attempts {done.attempts}"
        )
    # On a loaded machine an answer can come after the delivery's retry time: the command goes
    # out again with the same id and the device answers from its log (device_side counts what
    # it executed). Counted, not a failure: the round trip still measures submit -> succeeded.
    RETRIED[0] += done.attempts > 1
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


class ProcessCpu:
    """CPU seconds of every process a command passes through: this one (the gateway, the
    command service and the callers), the simulator child, the broker, and PostgreSQL's
    backends of the benchmark database by application (`fleetgate`: ingest and the trips'
    measurer; `fleetgate-commands`: the command store)."""

    def __init__(self, sim_pid: int, broker_pid: int, dsn: str, dbname: str) -> None:
        self.pids = {"simulator": sim_pid, "mosquitto": broker_pid}
        self.dsn, self.dbname = dsn, dbname

    def sample(self) -> dict[str, float]:
        out = {"gateway": cpu_seconds(), **{k: cpu_seconds(p) for k, p in self.pids.items()}}
        with psycopg.connect(self.dsn, dbname="postgres") as conn:
            backends = conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE datname = %s",
                (self.dbname,),
            ).fetchall()
        for key in ("pg:fleetgate", "pg:fleetgate-commands", "pg:other"):
            out[key] = 0.0
        for pid, app in backends:
            key = f"pg:{app}" if f"pg:{app}" in out else "pg:other"
            try:
                out[key] += cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # it ended meanwhile
        return out


class CpuWindow:
    """Each process's CPU per command in a phase, less what it spends anyway in that time (the
    fleet's telemetry: its rate measured while no command runs)."""

    def __init__(self, cpu: ProcessCpu, idle_rate: dict[str, float]) -> None:
        self.cpu, self.idle_rate = cpu, idle_rate

    def __enter__(self) -> CpuWindow:
        self.t0, self.c0 = time.perf_counter(), self.cpu.sample()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        c1 = self.cpu.sample()
        self.spent = {k: c1[k] - self.c0[k] for k in c1}

    def per_command_ms(self, n: int) -> dict[str, float]:
        out = {
            k: round((v - self.idle_rate[k] * self.seconds) / n * 1000, 3)
            for k, v in self.spent.items()
        }
        out["postgres"] = round(sum(v for k, v in out.items() if k.startswith("pg:")), 3)
        out["total"] = round(sum(v for k, v in out.items() if k != "postgres"), 3)
        return out


async def idle_cpu_rate(cpu: ProcessCpu, seconds: float) -> dict[str, float]:
    """Each process's CPU seconds per second while the fleet sends telemetry and no command."""
    t0, c0 = time.perf_counter(), cpu.sample()
    await asyncio.sleep(seconds)
    elapsed, c1 = time.perf_counter() - t0, cpu.sample()
    return {k: (c1[k] - c0[k]) / elapsed for k in c1}


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
        "round_trip_ms": delays_ms(cmd_s),
        "floor_ms": delays_ms(floor_s),
        "durable_commit_ms": delays_ms(commit_s),
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
        "round_trip_ms": delays_ms(cmd_s),
        "floor_ms": delays_ms(floor_s),
    }


async def bench(args: argparse.Namespace) -> dict:
    from telemetry.store import migrate

    with BenchServices("fgbench_cmd") as services:
        args.host, args.port = services.broker.host, services.broker.port
        report = await migrate(services.dsn, storage="native")
        main, floor_fleet = fleets(args)
        await register(services.dsn, main)
        machine = services.machine()
        # The production wiring: the gateway runs the command service and feeds it every commit.
        async with (
            running_gateway(
                services.dsn,
                services.broker,
                ROOT,
                "bench-cmd-gateway",
                mqtt_session_expiry_s=120,
            ) as gateway,
            SimProcess(args) as sim,
        ):
            floor = Floor(services.broker.host, services.broker.port)
            await floor.start()
            await until(
                lambda: vehicles_online(services.dsn, args.vehicles),
                120,
                f"{args.vehicles} vehicles online",
                interval=0.5,
            )
            cpu = ProcessCpu(sim.proc.pid, services.broker.proc.pid, services.dsn, services.dbname)
            load0, seq, conc = await phases(
                gateway.commands, floor, main, floor_fleet, services.dsn, args, cpu
            )
            await floor.client.disconnect()
    return {
        "benchmark": "commands",
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine,
        "loadavg_at_measurement": load0,
        "storage": report.storage,
        "vehicles_connected": args.vehicles,
        "floor_devices": args.floor_devices,
        "telemetry_per_vehicle_hz": args.rate_hz,
        "device_answer_delay_ms": 0,
        "commands": "unlock/lock alternating per vehicle, submit -> succeeded",
        "sequential": seq,
        "concurrent": conc,
        "device_side": sim.done,
        "commands_delivered_again": RETRIED[0],
        "targets": {
            "p99_under_50ms": seq["round_trip_ms"]["p99"] < 50.0,
            "p99_within_3x_floor": seq["ratio_p99"] <= 3.0,
            "p50_within_3x_floor": seq["ratio_p50"] <= 3.0,
            # issue 23
            "p99_within_2x_floor": seq["ratio_p99"] <= 2.0,
            "concurrent_at_least_1000_per_s": conc["commands_per_s"] >= 1000,
            "concurrent_p99_under_50ms": conc["round_trip_ms"]["p99"] < 50.0,
            "every_command_executed_once": bool(sim.done)
            and sim.done["executions"] == args.warmup + 2 * args.commands
            and sim.done["max_executions_per_id"] == 1,
        },
    }


async def register(dsn: str, fleet) -> None:
    from telemetry.store import TelemetryStore, VehicleRegistration

    store = await TelemetryStore.open(dsn)
    await store.register_vehicles(
        [
            VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t)
            for d, r, t in fleet.registrations()
        ]
    )
    await store.close()


async def vehicles_online(dsn: str, vehicles: int) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM vehicle_state WHERE online "
            "AND time > now() - interval '30 seconds'"
        )
        return (await cur.fetchone())[0] >= vehicles


async def phases(
    service, floor: Floor, main, floor_fleet, dsn: str, args, cpu: ProcessCpu
) -> tuple:
    """Warm-up, the sequential phase (with the commit probe), the concurrent phase: the load
    average before measuring and each phase's figures beside the floor's, with each process's
    CPU per command (the floor's round trips included: they are a small share of the phase)."""
    targets = Targets(main.device_ids)
    floor_ids = floor_fleet.device_ids
    probe = CommitProbe(dsn)
    await probe.start()
    await sequential(service, floor, targets, floor_ids, args.warmup, probe)
    idle = await idle_cpu_rate(cpu, args.idle_s)
    load0 = loadavg()[0]
    with CpuWindow(cpu, idle) as seq_cpu:
        seq = await sequential(service, floor, targets, floor_ids, args.commands, probe)
    seq["cpu_per_command_ms"] = seq_cpu.per_command_ms(args.commands)
    # The least a durable command can cost: the bare round trip plus its two commits.
    seq["floor_plus_two_commits_p50_ms"] = round(
        seq["floor_ms"]["p50"] + 2 * seq["durable_commit_ms"]["p50"], 2
    )
    await probe.conn.close()
    with CpuWindow(cpu, idle) as conc_cpu:
        conc = await concurrent(service, floor, targets, floor_ids, args.commands, args.concurrency)
    conc["cpu_per_command_ms"] = conc_cpu.per_command_ms(args.commands)
    conc["idle_cpu_cores"] = {k: round(v, 3) for k, v in idle.items()}
    for phase in (seq, conc):
        phase["ratio_p50"] = round(phase["round_trip_ms"]["p50"] / phase["floor_ms"]["p50"], 2)
        phase["ratio_p99"] = round(phase["round_trip_ms"]["p99"] / phase["floor_ms"]["p99"], 2)
    return load0, seq, conc


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--vehicles", type=int, default=1000, help="connected simulated vehicles")
    p.add_argument("--floor-devices", type=int, default=20, help="devices of the floor")
    p.add_argument("--rate-hz", type=float, default=1.0, help="telemetry per vehicle")
    p.add_argument("--commands", type=int, default=2000, help="per phase")
    p.add_argument("--warmup", type=int, default=200, help="commands before measuring")
    p.add_argument("--concurrency", type=int, default=20, help="callers in the concurrent phase")
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    p.add_argument(
        "--idle-s", type=float, default=5.0, help="CPU measured with telemetry alone, before"
    )
    # the simulator child's (SimProcess)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv, children={"sim": _sim_child})


if __name__ == "__main__":
    main()
