"""Many device sessions: a connect storm of persistent MQTT sessions with last wills, a sample
every --interval-s from each (1 s by default), presence checked for every device, then a forced
disconnect of some.

Everything runs on this machine in one run: a private Mosquitto with the project's configuration
(its descriptor limit raised to the hard limit first, see docs/deployment.md), a fresh database,
`fleetgate run` as a child process (so that its CPU and memory are its own), and the devices in
--processes child processes. A device here is a lean asyncio connection with its MQTT 5 frames
written out by hand (benchmarks/_loadgen.py's framing, plus the will): CONNECT with clean start 0,
a session expiry and the last will `{"online": false}` (retained, QoS 1) on
{root}/{device}/status; after CONNACK its retained `{"online": true, "t": ...}`; then a sample
every --interval-s (QoS 1, the simulated fleet's own payloads), the devices' turns spread evenly.

Phases, each with the gateway's and the broker's CPU and memory:
- storm:  every child connects its devices at once (at most --connect-concurrency connects in
          flight per child); the time until every CONNACK, and until the database shows every
          device online.
- steady: --steady-s seconds of a sample per device every --interval-s: samples acknowledged
          by the broker, stored by the gateway, where a batch's time goes (the gateway's
          metrics), and the backlog (published but not stored) at the end.
- kill:   --kill devices lose their sockets without DISCONNECT (the broker publishes their
          wills); the time until the database shows exactly them offline, every other device
          still online, while the rest keep sending.

Prints one JSON document; the exit code is 1 when presence was wrong or ingest fell behind.
Usage:  .venv/bin/python -m benchmarks.sessions [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg

from benchmarks._loadgen import _DISCONNECT, DeviceConnection, _utf8, _varint, publish_frame
from benchmarks._runner import (
    bench_parser,
    cpu_seconds,
    emit,
    loadavg,
    progress,
    run_benchmark,
    start_child,
    until,
)
from benchmarks._services import BenchServices, answers_ok, gateway_process

ROOT = "bench-sess/v1"
_PUBLISH_QOS1_RETAIN = 0x33


# --- the devices, in child processes ------------------------------------------------------------


def device_pattern(child: int) -> str:
    return f"s{child}-{{type}}-{{n:05d}}"


def roster(child: int, count: int):
    from firmware_sim.roster import Roster

    pattern = device_pattern(child)
    return Roster.build(count, 0.3, pattern, pattern.replace("{type}", "veh"))


def connect_with_will(
    client_id: str, keepalive_s: int, session_expiry_s: int, will_topic: str, will: bytes
) -> bytes:
    """CONNECT, MQTT 5: clean start 0, a session expiry, and a retained QoS 1 will (no will
    properties: the will goes out as soon as the connection is lost)."""
    props = b"\x11" + struct.pack("!I", session_expiry_s)
    flags = 0x04 | (1 << 3) | 0x20  # will, will QoS 1, will retain; clean start 0
    body = (
        _utf8("MQTT")
        + b"\x05"
        + bytes((flags,))
        + struct.pack("!H", keepalive_s)
        + _varint(len(props))
        + props
        + _utf8(client_id)
        + b"\x00"  # will properties: none
        + _utf8(will_topic)
        + struct.pack("!H", len(will))
        + will
    )
    return b"\x10" + _varint(len(body)) + body


def retained_frame(topic: bytes, mid: int, payload: bytes) -> bytes:
    frame = bytearray(publish_frame(topic, mid, payload))
    frame[0] = _PUBLISH_QOS1_RETAIN
    return bytes(frame)


class Telemetry:
    """The simulated fleet's samples of one child's devices, encoded one step (second) at a time."""

    def __init__(self, child: int, count: int, root: str, seed: int, interval_s: float) -> None:
        from firmware_sim.model import FleetModel
        from firmware_sim.payloads import CBOR, JSON
        from firmware_sim.protocol import DeviceTopics
        from firmware_sim.roster import spread

        r = roster(child, count)
        self.interval_ms = int(round(interval_s * 1000))
        self.device_ids = r.device_ids
        self._model = lambda start_ms: FleetModel(r.kinds, seed=seed + child, start_ms=start_ms)
        self.start_ms = 0
        self.model = None
        self.encodings = np.where(spread(count, 0.5), CBOR, JSON)
        topics = [DeviceTopics.of(root, d) for d in self.device_ids]
        self.telemetry = [t.telemetry.encode() for t in topics]
        self.status = [t.status for t in topics]

    def begin(self) -> None:
        """The simulated clock starts now (the samples' times follow the wall clock)."""
        self.start_ms = int(time.time() * 1000)
        self.model = self._model(self.start_ms)

    def step(self, k: int) -> list[bytes]:
        from firmware_sim.payloads import encode_samples

        t = self.start_ms + (k + 1) * self.interval_ms
        payloads = encode_samples(self.model.step_ms(t - self.model.t_ms), self.encodings)
        mid = k % 65000 + 2  # 1 is the presence message's
        return [publish_frame(topic, mid, p) for topic, p in zip(self.telemetry, payloads)]


async def _devices_child(args: argparse.Namespace) -> None:
    """One device process: told by its parent on stdin when to connect, kill and stop; reports
    each step as a line of JSON on stdout."""
    tel = Telemetry(args.child, args.count, args.topic_root, args.seed, args.interval_s)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    emit({"event": "ready"})
    assert (await stdin.readline()).strip() == b"connect"
    sessions = await _connect_all(tel, args)
    stop = asyncio.Event()
    killed: set[int] = set()
    sender = asyncio.create_task(_send(tel, sessions, killed, stop))
    while True:
        line = (await stdin.readline()).strip()
        if line == b"kill":
            for i in range(args.kill):
                killed.add(i)
                sessions[i].transport.abort()  # no DISCONNECT: the broker sends the will
            emit({"event": "killed", "devices": args.kill})
        elif line in (b"stop", b""):
            break
    stop.set()
    steps = await sender
    alive = [s for i, s in enumerate(sessions) if i not in killed]
    deadline = time.monotonic() + 30
    while sum(s.acked + s.refused for s in alive) < sum(s.sent for s in alive):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    emit(
        {
            "event": "done",
            "steps": steps,
            "sent": sum(s.sent for s in sessions),
            "acked": sum(s.acked for s in sessions),
            "refused": sum(s.refused for s in sessions),
            "sent_by_alive": sum(s.sent for s in alive),
            "acked_by_alive": sum(s.acked for s in alive),
            "connections_lost": sum(1 for s in alive if s.closed.done()),
        }
    )
    for s in alive:
        if not s.transport.is_closing():
            s.transport.write(_DISCONNECT)
            s.transport.close()


async def _connect_all(tel: Telemetry, args: argparse.Namespace) -> list[DeviceConnection]:
    """Every device at once (at most connect_concurrency connecting): CONNECT with its will,
    CONNACK, its retained presence."""
    loop = asyncio.get_running_loop()
    sessions: list[DeviceConnection] = [None] * args.count  # type: ignore[list-item]
    gate = asyncio.Semaphore(args.connect_concurrency)
    t0 = time.monotonic()
    connack_s = np.zeros(args.count)

    async def connect(i: int) -> None:
        async with gate:
            device = tel.device_ids[i]
            _, s = await loop.create_connection(DeviceConnection, args.host, args.port)
            s.transport.write(
                connect_with_will(device, 60, 600, tel.status[i], b'{"online": false}')
            )
            code = await asyncio.wait_for(s.connack, 60)
            if code:
                raise ConnectionError(f"{device}: CONNACK reason code {code}")
            connack_s[i] = time.monotonic() - t0
            online = orjson.dumps({"online": True, "t": int(time.time() * 1000)})
            s.transport.write(retained_frame(tel.status[i].encode(), 1, online))
            s.sent += 1
            sessions[i] = s

    await asyncio.gather(*(connect(i) for i in range(args.count)))
    emit(
        {
            "event": "connected",
            "seconds": round(time.monotonic() - t0, 3),
            "connack_p50_s": round(float(np.percentile(connack_s, 50)), 3),
            "connack_p99_s": round(float(np.percentile(connack_s, 99)), 3),
        }
    )
    return sessions


async def _send(tel: Telemetry, sessions: list[DeviceConnection], killed: set[int], stop) -> int:
    """One sample per device a second, the devices' turns spread evenly over the second."""
    loop = asyncio.get_running_loop()
    n = len(sessions)
    tel.begin()
    wall0 = loop.time()
    k, done_in_step, frames = 0, 0, tel.step(0)
    while not stop.is_set():
        elapsed = (loop.time() - wall0) * 1000 / tel.interval_ms  # in steps
        step = int(elapsed)
        if step > k:  # finish the step that is over (a late turn), then the next one's frames
            upto = n
        else:
            upto = min(n, int((elapsed - k) * n) + 1)
        for i in range(done_in_step, upto):
            if i not in killed:
                s = sessions[i]
                s.transport.write(frames[i])
                s.sent += 1
        done_in_step = upto
        if done_in_step == n:
            k += 1
            done_in_step = 0
            frames = tel.step(k)
        await asyncio.sleep(0.01)
    return k


# --- the parent -----------------------------------------------------------------------------------


class Devices:
    def __init__(self, args: argparse.Namespace, broker) -> None:
        self.args, self.broker = args, broker
        self.counts = [
            len(part) for part in np.array_split(np.arange(args.devices), args.processes)
        ]
        self.kills = [len(part) for part in np.array_split(np.arange(args.kill), args.processes)]
        self.procs: list[asyncio.subprocess.Process] = []

    def registrations(self) -> list[tuple[str, str, str]]:
        return [reg for c, n in enumerate(self.counts) for reg in roster(c, n).registrations()]

    def killed_ids(self) -> set[str]:
        return {
            d for c, n in enumerate(self.counts) for d in roster(c, n).device_ids[: self.kills[c]]
        }

    async def start(self) -> None:
        for c, n in enumerate(self.counts):
            self.procs.append(
                await start_child(
                    __spec__.name,
                    "devices",
                    stdin=subprocess.PIPE,
                    host=self.broker.host,
                    port=self.broker.port,
                    topic_root=ROOT,
                    child=c,
                    count=n,
                    kill=self.kills[c],
                    seed=self.args.seed,
                    interval_s=self.args.interval_s,
                    connect_concurrency=self.args.connect_concurrency,
                )
            )
        await self.expect("ready", 120)

    async def tell(self, word: str) -> None:
        for p in self.procs:
            p.stdin.write(word.encode() + b"\n")
            await p.stdin.drain()

    async def expect(self, event: str, timeout: float) -> list[dict]:
        out = []
        for p in self.procs:
            line = await asyncio.wait_for(p.stdout.readline(), timeout)
            if not line:
                err = (await p.stderr.read()).decode()[-3000:]
                raise RuntimeError(f"device process failed before {event!r}:\n{err}")
            got = orjson.loads(line)
            if got["event"] != event:
                raise RuntimeError(f"device process: {got} instead of {event!r}")
            out.append(got)
        return out

    def kill_all(self) -> None:
        for p in self.procs:
            if p.returncode is None:
                p.kill()


class Usage:
    """CPU and resident memory of a process over the phases."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0, self.t0 = cpu_seconds(pid), time.monotonic()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def lap(self) -> dict:
        cpu, t = cpu_seconds(self.pid), time.monotonic()
        out = {
            "cpu_s": round(cpu - self.cpu0, 2),
            "cpu_share_of_one_core": round((cpu - self.cpu0) / max(t - self.t0, 1e-9), 3),
            "rss_mib": self.rss_mib(),
        }
        self.cpu0, self.t0 = cpu, t
        return out


async def presence(dsn: str) -> dict[str, bool]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT v.device_id, coalesce(s.online, false) FROM vehicles v "
            "LEFT JOIN vehicle_state s ON s.vehicle = v.id"
        )
        return dict(await cur.fetchall())


async def online_count(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM vehicle_state WHERE online")
        return (await cur.fetchone())[0]


async def metrics(port: int) -> dict[str, float]:
    """The gateway's metrics, each sample name (with its core label, for the cores) summed over
    its other labels; read in a thread: a busy gateway may take a while to answer."""

    def scrape() -> dict[str, float]:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    continue
                name = sample.name
                if "core" in sample.labels:
                    name += ":" + sample.labels["core"]
                out[name] = out.get(name, 0.0) + sample.value
        return out

    return await asyncio.to_thread(scrape)


async def stored(port: int) -> float:
    return (await metrics(port)).get("fleetgate_samples_stored_total", 0.0)


def batches(before: dict[str, float], after: dict[str, float]) -> dict:
    """What the gateway's batches were like between two scrapes: size, commit time, the
    hand-over check and the cores' time per batch (where a batch's time goes)."""

    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    n = max(d("fleetgate_batch_commit_seconds_count"), 1.0)
    cores = {
        k.split(":", 1)[1]: round(1000 * d(k) / n, 2)
        for k in after
        if k.startswith("fleetgate_core_seconds_sum:")
    }
    return {
        "batches": int(d("fleetgate_batch_commit_seconds_count")),
        "mean_samples": round(d("fleetgate_batch_samples_sum") / n),
        "mean_commit_ms": round(1000 * d("fleetgate_batch_commit_seconds_sum") / n, 1),
        "mean_handover_check_ms": round(
            1000
            * d("fleetgate_handover_check_seconds_sum")
            / max(d("fleetgate_handover_check_seconds_count"), 1.0),
            1,
        ),
        "mean_core_ms": cores,
        "queued_messages_at_end": after.get("fleetgate_pipeline_queued_messages", 0.0),
    }


def raise_fd_limit() -> tuple[int, int]:
    """The soft descriptor limit up to the hard one, for this process and what it starts (the
    broker holds one descriptor per session)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


async def bench(args: argparse.Namespace) -> dict:
    from fleetgate.embedded import free_port
    from telemetry.store import TelemetryStore, VehicleRegistration, migrate

    soft, hard = raise_fd_limit()
    if hard < args.devices + 1000:
        raise SystemExit(f"the descriptor hard limit {hard} is below {args.devices} sessions")
    report: dict = {"benchmark": "sessions", "date": time.strftime("%Y-%m-%d")}
    with BenchServices("fgbench_sess") as services:
        await migrate(services.dsn, storage="native")
        devices = Devices(args, services.broker)
        store = await TelemetryStore.open(services.dsn)
        await store.register_vehicles(
            [
                VehicleRegistration(vehicle_ref=r, device_id=d, vehicle_type=t)
                for d, r, t in devices.registrations()
            ]
        )
        await store.close()
        port = free_port()
        env = {
            "FLEETGATE_DATABASE_URL": services.dsn,
            "FLEETGATE_MQTT_URL": services.broker.url,
            "FLEETGATE_MQTT_TOPIC_ROOT": ROOT,
            "FLEETGATE_API_PORT": "0",
            "FLEETGATE_COAP_ENABLED": "false",
            "FLEETGATE_LOG_LEVEL": "WARNING",
            "FLEETGATE_MQTT_CLIENT_ID": "bench-sessions-gw",
            "FLEETGATE_METRICS_PORT": str(port),
        }
        gw = gateway_process(env, Path(tempfile.gettempdir()) / "fgbench-sessions-gw.log")
        try:
            await until(lambda: answers_ok(f"http://127.0.0.1:{port}/readyz"), 60, "gateway ready")
            report["machine"] = services.machine()
            report["fd_limit"] = {"soft_before": soft, "raised_to": hard}
            await devices.start()
            report.update(
                await phases(args, services.dsn, devices, gw.pid, services.broker.proc.pid, port)
            )
        finally:
            devices.kill_all()
            gw.terminate()
            try:
                gw.wait(30)
            except subprocess.TimeoutExpired:
                gw.kill()
    return report


async def phases(args, dsn: str, devices: Devices, gw_pid: int, broker_pid: int, port: int) -> dict:
    gw, broker = Usage(gw_pid), Usage(broker_pid)
    idle = {"gateway": gw.lap(), "broker": broker.lap()}
    n = args.devices
    load0 = loadavg()
    # storm
    t0 = time.monotonic()
    await devices.tell("connect")
    connected = await devices.expect("connected", 300)
    all_connack_s = time.monotonic() - t0
    progress(f"{n} sessions connected in {all_connack_s:.1f} s")
    await until(lambda: _reached(online_count(dsn), n), 300, f"{n} devices online", interval=0.5)
    all_online_s = time.monotonic() - t0
    seen = await presence(dsn)
    storm = {
        "sessions": n,
        "all_connack_s": round(all_connack_s, 2),
        "per_process": connected,
        "all_online_in_db_s": round(all_online_s, 2),
        "online_after_connect": sum(seen.values()),
        "presence_correct": all(seen.values()) and len(seen) == n,
        "gateway": gw.lap(),
        "broker": broker.lap(),
    }
    progress(f"all {n} online in {all_online_s:.1f} s; steady {args.steady_s} s")
    # steady
    m0 = await metrics(port)
    s0, t1 = m0.get("fleetgate_samples_stored_total", 0.0), time.monotonic()
    rates = []
    for _ in range(int(args.steady_s)):
        await asyncio.sleep(1.0)
        rates.append(await stored(port))
    m1 = await metrics(port)
    s1, t2 = m1.get("fleetgate_samples_stored_total", 0.0), time.monotonic()
    per_s = np.diff([s0, *rates])
    gw_steady = gw.lap()
    steady = {
        "seconds": round(t2 - t1, 2),
        "offered_per_s": round(n / args.interval_s, 1),
        "stored_per_s": round((s1 - s0) / (t2 - t1), 1),
        "stored_per_s_min_max": [float(per_s.min()), float(per_s.max())] if len(per_s) else [],
        "gateway": gw_steady,
        "gateway_cpu_us_per_sample": round(1e6 * gw_steady["cpu_s"] / max(s1 - s0, 1), 1),
        "gateway_batches": batches(m0, m1),
        "broker": broker.lap(),
        "loadavg": loadavg(),
    }
    # kill
    killed = devices.killed_ids()
    t3 = time.monotonic()
    await devices.tell("kill")
    await devices.expect("killed", 60)

    async def wills_seen() -> bool:
        return n - await online_count(dsn) >= len(killed)

    try:
        await until(wills_seen, args.wills_timeout_s, "the wills", interval=0.25)
        offline_s: float | None = round(time.monotonic() - t3, 2)
    except TimeoutError:
        offline_s = None  # not within the time: the report says how many were
    await asyncio.sleep(args.after_kill_s)
    seen = await presence(dsn)
    wrong = [d for d, online in seen.items() if online == (d in killed)]
    kill = {
        "killed": len(killed),
        "all_offline_in_db_s": offline_s,
        "offline": sum(1 for v in seen.values() if not v),
        "presence_wrong": len(wrong),
        "presence_wrong_examples": wrong[:5],
        "presence_correct": not wrong,
        "gateway": gw.lap(),
        "broker": broker.lap(),
    }
    # the end: every acknowledged sample stored?
    await devices.tell("stop")
    done = await devices.expect("done", 120)
    acked = sum(d["acked"] for d in done) - n  # the presence messages are not samples
    try:

        async def caught_up() -> bool:
            return await stored(port) >= acked

        await until(caught_up, args.catch_up_s, "every sample stored", interval=0.5)
    except TimeoutError:
        pass
    final = await stored(port)
    ok = storm["presence_correct"] and kill["presence_correct"] and final >= acked
    return {
        "loadavg_at_measurement": load0,
        "devices": n,
        "interval_s": args.interval_s,
        "processes": args.processes,
        "idle": idle,
        "storm": storm,
        "steady": steady,
        "kill": kill,
        "device_side": done,
        "samples_acked_by_broker": acked,
        "samples_stored": int(final),
        "targets": {
            "storm_within_60s": all_connack_s <= 60.0,
            "presence_correct": storm["presence_correct"] and kill["presence_correct"],
            "ingest_kept_up": final >= acked,
        },
        "passed": ok,
    }


async def _reached(count, n: int) -> bool:
    return await count >= n


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--devices", type=int, default=10_000, help="device sessions")
    p.add_argument("--processes", type=int, default=2, help="device child processes")
    p.add_argument("--kill", type=int, default=1000, help="devices to disconnect by force")
    p.add_argument("--steady-s", type=float, default=30.0, help="seconds of telemetry")
    p.add_argument("--interval-s", type=float, default=1.0, help="between a device's samples")
    p.add_argument("--after-kill-s", type=float, default=3.0, help="sending on after the wills")
    p.add_argument("--wills-timeout-s", type=float, default=120.0, help="for the wills")
    p.add_argument("--catch-up-s", type=float, default=60.0, help="for the backlog at the end")
    p.add_argument("--connect-concurrency", type=int, default=200, help="connects in flight")
    p.add_argument("--seed", type=int, default=1, help="the simulated fleet's seed")
    # the device children's
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=1883, help=argparse.SUPPRESS)
    p.add_argument("--topic-root", default=ROOT, help=argparse.SUPPRESS)
    return p


def check(args: argparse.Namespace) -> str | None:
    if args.devices < 1 or args.processes < 1:
        return "--devices and --processes must be at least 1"
    if not 0.01 <= args.interval_s <= 3600:
        return "--interval-s must be between 0.01 and 3600"
    if not 0 <= args.kill <= args.devices:
        return "--kill must be between 0 and --devices"
    return None


def main(argv: list[str] | None = None) -> None:
    run_benchmark(
        bench,
        build_parser(),
        argv,
        children={"devices": _devices_child},
        check=check,
        passed=lambda r: r.get("passed", False),
    )


if __name__ == "__main__":
    main()
