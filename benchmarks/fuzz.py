"""Fuzz campaign: adversarial MQTT payloads and CoAP datagrams through the running gateway, with
valid traffic mixed in; counts what was sent, stored, rejected by reason and quarantined.

On this machine, loopback only: a private Mosquitto with the project's configuration, a fresh
database on the local PostgreSQL (FLEETGATE_BENCH_PG_DSN), registered and provisioned devices,
and `fleetgate run` as a child process (CoAP on a free UDP port, no HTTP API). The MQTT messages
(benchmarks/_fuzz_payloads.py: structure-aware mutations of valid JSON, CBOR and SenML samples,
events, statuses, byte damage, wrong content types and topics, sizes around 256 KiB, batches
around 1,000 samples) go out QoS 1 on several connections, MQTT 5 and 3.1.1, as fast as the
gateway takes them (at most --max-backlog ahead of it); the CoAP datagrams
(benchmarks/_fuzz_coap.py) go out alongside, from several UDP sockets. Everything follows from
--seed.

What is checked, and printed as one JSON document (exit 1 if a check fails):
  - every valid sample and event (known device and t) is stored exactly once;
  - the gateway's counters agree with its own decoder run here on every message before it is
    sent (the decoder judges each message on its own, docs/protocol.md): messages by kind,
    rejections by reason, samples received, stored + duplicate = accepted, per transport;
  - no stall: /readyz answers 200 throughout (polled twice a second), the pending count returns
    to 0, the process is alive at the end and stops cleanly on SIGTERM;
  - fleetgate_pipeline_errors_total and quarantined_messages: any is a bug found, listed with its
    payload; so is a message the decoder here raised on or spent long on.

Usage:  .venv/bin/python benchmarks/fuzz.py [--messages 1000000] [--coap 10000] [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._fuzz_coap import CoapFuzzer, CoapOutcome, CoapPeer, CoapRequest  # noqa: E402
from benchmarks._fuzz_payloads import Devices, FuzzMessage, PayloadFuzzer  # noqa: E402
from benchmarks._services import BenchServices, machine  # noqa: E402
from fleetgate.embedded import free_port  # noqa: E402
from fleetgate.mqtt import MqttClient  # noqa: E402
from telemetry.decoder import decode_events, decode_status, decode_telemetry  # noqa: E402
from telemetry.store import (  # noqa: E402
    DeviceCredentials,
    TelemetryStore,
    VehicleRegistration,
    migrate,
)

ROOT = "fg/v1"
PROCESSING_FAILED = "processing_failed"
SLOW_DECODE_S = 0.05  # one message decoding longer than this is listed
# ... and one longer than this fails the run: the gateway decodes on its event loop. (An event
# whose CBOR shared references expand beyond the detail budget costs ~0.1 s, by design: the
# budget is walked, as for a 256 KiB detail; docs/protocol.md.)
STALLING_DECODE_S = 0.5


# --- what the gateway should count: its decoder, run here on each message before it is sent -----

class Oracle:
    """The gateway's counters as its decoder predicts them, per transport; messages the decoder
    raises on are findings (the gateway quarantines them as processing_failed)."""

    def __init__(self, registry: dict[str, int]) -> None:
        self.registry = registry
        self.messages: Counter = Counter()  # (transport, kind)
        self.rejected: Counter = Counter()  # (transport, reason)
        self.telemetry_rejected: Counter = Counter()  # transport -> telemetry rejections
        self.accepted: Counter = Counter()  # transport -> telemetry samples that pass
        self.events_accepted: Counter = Counter()
        self.by_family: dict[str, Counter] = defaultdict(Counter)
        self.crashes: list[dict] = []
        self.crash_count: Counter = Counter()
        self.slow: list[dict] = []
        self.slow_count: Counter = Counter()
        self.slowest_ms = 0.0
        self.seconds = 0.0

    def judge(self, transport: str, messages: list[FuzzMessage | tuple]) -> None:
        """Count a group of messages as the gateway will (each judged on its own)."""
        started = time.perf_counter()
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for m in messages:
            groups[(m.family, m.kind)].append(m)
        for (family, kind), group in groups.items():
            self.messages[(transport, kind)] += len(group)
            self._judge(transport, family, kind, group)
        self.seconds += time.perf_counter() - started

    def _judge(self, transport: str, family: str, kind: str, group: list) -> None:
        now = int(time.time() * 1000)
        if kind == "status":
            for m in group:
                if m.device_id not in self.registry:
                    self._reject(transport, family, "unknown_device", 1, False)
                elif decode_status(m.payload, _content_type(m)) is None:
                    self._reject(transport, family, "bad_structure", 1, False)
            return
        started = time.perf_counter()
        try:
            result = self._decode(kind, group, now)
        except Exception as exc:
            if len(group) == 1:
                self._crash(transport, family, kind, group[0], exc)
            else:
                half = len(group) // 2
                self._judge(transport, family, kind, group[:half])
                self._judge(transport, family, kind, group[half:])
            return
        elapsed = time.perf_counter() - started
        if elapsed > SLOW_DECODE_S * max(1, len(group) / 50):
            self._find_slow(family, kind, group, now)
        accepted, rejected = result
        telemetry = kind == "telemetry"
        for reason, count in rejected.items():
            self._reject(transport, family, reason, count, telemetry)
        if telemetry:
            self.accepted[transport] += accepted
        else:
            self.events_accepted[transport] += accepted
        self.by_family[family]["accepted_samples" if telemetry else "accepted_events"] += accepted

    def _decode(self, kind: str, group: list, now: int) -> tuple[int, dict[str, int]]:
        ids = [m.device_id for m in group]
        payloads = [m.payload for m in group]
        types = [_content_type(m) for m in group]
        if kind == "telemetry":
            r = decode_telemetry(ids, payloads, [now] * len(group), self.registry, now_ms=now,
                                 content_types=types)
            return len(r.batch), r.rejected
        events, rejected, _ = decode_events(ids, payloads, self.registry, now_ms=now,
                                            content_types=types)
        return len(events), rejected

    def _reject(self, transport: str, family: str, reason: str, count: int,
                telemetry: bool) -> None:
        self.rejected[(transport, reason)] += count
        self.by_family[family][reason] += count
        if telemetry:
            self.telemetry_rejected[transport] += count

    def _crash(self, transport: str, family: str, kind: str, m, exc: Exception) -> None:
        """What the gateway does with it: quarantined, counted as processing_failed."""
        self._reject(transport, family, PROCESSING_FAILED, 1, kind == "telemetry")
        key = (family, kind, type(exc).__name__, str(exc)[:60])
        self.crash_count[key] += 1
        if self.crash_count[key] <= 2:
            self.crashes.append(_finding(transport, family, kind, m, f"{type(exc).__name__}: "
                                                                    f"{str(exc)[:200]}"))

    def _find_slow(self, family: str, kind: str, group: list, now: int) -> None:
        for m in group:
            started = time.perf_counter()
            with contextlib.suppress(Exception):
                self._decode(kind, [m], now)
            elapsed = time.perf_counter() - started
            self.slowest_ms = max(self.slowest_ms, elapsed * 1000)
            if elapsed > SLOW_DECODE_S:
                key = (family, kind)
                self.slow_count[key] += 1
                if self.slow_count[key] <= 3:
                    self.slow.append({**_finding("", family, kind, m, ""),
                                      "decode_ms": round(elapsed * 1000, 1)})


def _content_type(m) -> str | None:
    return m.content_type if m.protocol == 5 else None


def _finding(transport: str, family: str, kind: str, m, error: str) -> dict:
    return {"transport": transport, "family": family, "kind": kind, "device_id": m.device_id,
            "content_type": _content_type(m), "payload_bytes": len(m.payload),
            "payload_head_hex": m.payload[:96].hex(), "error": error}


class _Decodable:
    """A CoAP request the pipeline got, in the shape the oracle judges."""

    __slots__ = ("content_type", "device_id", "family", "kind", "payload", "protocol")

    def __init__(self, family: str, kind: str, device_id: str, payload: bytes,
                 content_type: str | None) -> None:
        self.family, self.kind, self.device_id = family, kind, device_id
        self.payload, self.content_type, self.protocol = payload, content_type, 5


# --- the gateway as a child process and what it says about itself ------------------------------

def scrape(port: int, timeout: float = 5.0) -> dict[tuple, float]:
    """Every fleetgate_* sample of /metrics: (name, sorted label items) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("fleetgate_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(metrics: dict[tuple, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in metrics.items() if n == name and want <= set(lab))


def by_label(metrics: dict[tuple, float], name: str, label: str, **labels: str) -> dict[str, int]:
    want = set(labels.items())
    out: Counter = Counter()
    for (n, lab), v in metrics.items():
        if n == name and want <= set(lab) and v:
            out[dict(lab)[label]] += int(v)
    return dict(sorted(out.items()))


class Monitor(threading.Thread):
    """Polls /readyz and /metrics twice a second from a thread of its own (the event loop of
    this process is busy publishing): readiness failures, the longest time the gateway held
    messages without committing any, the latest counters."""

    def __init__(self, port: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True, name="monitor")
        self.port, self.interval = port, interval
        self.stop_event = threading.Event()
        self.polls = 0
        self.not_ready: list[dict] = []
        self.not_ready_count = 0
        self.max_readyz_ms = 0.0
        self.max_pending = 0
        self.longest_no_progress_s = 0.0
        self.latest: dict[tuple, float] = {}
        self.received_mqtt = 0.0
        self._progress_at = time.monotonic()
        self._last_done = -1.0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        self.polls += 1
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as r:
                status, body = r.status, r.read()[:200]
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()[:200]
        except OSError as exc:
            status, body = 0, str(exc).encode()
        latency = (time.monotonic() - started) * 1000
        self.max_readyz_ms = max(self.max_readyz_ms, latency)
        if status != 200:
            self.not_ready_count += 1
            if len(self.not_ready) < 10:
                self.not_ready.append({"at": round(time.time(), 1), "status": status,
                                       "body": body.decode("utf-8", "replace")})
        try:
            m = scrape(self.port)
        except OSError:
            return
        self.latest = m
        self.received_mqtt = total(m, "fleetgate_messages_received_total", transport="mqtt")
        pending = total(m, "fleetgate_pipeline_pending_messages")
        self.max_pending = max(self.max_pending, int(pending))
        done = total(m, "fleetgate_messages_received_total")
        now = time.monotonic()
        if done != self._last_done or pending == 0:
            self._last_done, self._progress_at = done, now
        self.longest_no_progress_s = max(self.longest_no_progress_s, now - self._progress_at)


class GatewayProcess:
    def __init__(self, dsn: str, broker_url: str, coap_port: int, metrics_port: int,
                 log_path: Path) -> None:
        self.env = {**os.environ, "FLEETGATE_DATABASE_URL": dsn, "FLEETGATE_MQTT_URL": broker_url,
                    "FLEETGATE_MQTT_TOPIC_ROOT": ROOT, "FLEETGATE_MQTT_CLIENT_ID": "fgfuzz-gw",
                    "FLEETGATE_API_PORT": "0", "FLEETGATE_COAP_ENABLED": "true",
                    "FLEETGATE_COAP_HOST": "127.0.0.1", "FLEETGATE_COAP_PORT": str(coap_port),
                    "FLEETGATE_METRICS_PORT": str(metrics_port), "FLEETGATE_LOG_FORMAT": "json"}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fleetgate.cli", "run", "--no-migrate"], cwd=REPO,
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def cpu_s(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def stop(self, timeout: float = 120.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def log_problems(self) -> dict[str, int]:
        """Error and critical log lines by event name."""
        out: Counter = Counter()
        with contextlib.suppress(OSError), open(self.log_path, "rb") as f:
            for line in f:
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    if line.strip():
                        out["(not json) " + line[:80].decode("utf-8", "replace").strip()] += 1
                    continue
                if isinstance(rec, dict) and rec.get("level") in ("error", "critical"):
                    out[f"{rec.get('level')}: {rec.get('event')}"] += 1
        return dict(out)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the campaign ---------------------------------------------------------------------------------

class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sent: Counter = Counter()  # MQTT messages by family
        self.sent_kind: Counter = Counter()  # MQTT messages the gateway subscribes to, by kind
        self.sent_bytes = 0
        self.unsubscribed = 0
        self.valid_samples: set[tuple[str, int]] = set()
        self.valid_events: set[tuple[str, int, str]] = set()
        self.coap_valid_samples: set[tuple[str, int]] = set()
        self.coap = CoapOutcome()
        self.mqtt_done = 0
        self.mqtt_finished = False
        self.mqtt_seconds = 0.0
        self.coap_seconds = 0.0
        self.publish_refused: list[str] = []

    async def publish(self, fuzzer: PayloadFuzzer, oracle: Oracle, host: str, port: int,
                      monitor: Monitor, deadline: float) -> None:
        args = self.args
        run = secrets.token_hex(3)
        v5 = [MqttClient(host, port, client_id=f"fgfuzz-{run}-{i}", protocol=5)
              for i in range(args.connections)]
        v3 = MqttClient(host, port, client_id=f"fgfuzz-{run}-v3", protocol=4)
        clients = [*v5, v3]
        for c in clients:
            await c.connect()
        started = time.monotonic()
        window: list[list] = []
        n = 0
        try:
            while n < args.messages and time.monotonic() < deadline:
                chunk = [fuzzer.next() for _ in range(min(args.chunk, args.messages - n))]
                subscribed = [m for m in chunk if m.subscribed]
                oracle.judge("mqtt", subscribed)
                futures = []
                for i, m in enumerate(chunk):
                    client = v3 if m.protocol == 4 else v5[(n + i) % len(v5)]
                    futures.append((m, client.publish(
                        f"{ROOT}/{m.device_id}/{m.kind}", m.payload, qos=1, retain=m.retain,
                        content_type=m.content_type if m.protocol == 5 else None)))
                    self.sent[m.family] += 1
                    self.sent_bytes += len(m.payload)
                    if m.subscribed:
                        self.sent_kind[m.kind] += 1
                    else:
                        self.unsubscribed += 1
                    self.valid_samples.update(m.valid_samples)
                    self.valid_events.update(m.valid_events)
                n += len(chunk)
                self.mqtt_done = n
                window.append(futures)
                if len(window) > 2:
                    await self._settle_publishes(window.pop(0))
                # Bounded: never more than --max-backlog messages ahead of the gateway.
                while sum(self.sent_kind.values()) - monitor.received_mqtt > args.max_backlog:
                    await asyncio.sleep(0.05)
            for futures in window:
                await self._settle_publishes(futures)
        finally:
            self.mqtt_seconds = time.monotonic() - started
            self.mqtt_finished = True
            for c in clients:
                with contextlib.suppress(Exception):
                    await c.disconnect()

    async def _settle_publishes(self, futures: list) -> None:
        for m, fut in futures:
            try:
                await fut
            except Exception as exc:  # the broker refused it: the gateway never sees it
                self.publish_refused.append(f"{m.family}: {exc}")
                raise RuntimeError(f"the broker refused a {m.family} message ({exc}); the "
                                   "counts would not add up") from exc

    async def send_coap(self, fuzzer: CoapFuzzer, oracle: Oracle, port: int) -> None:
        """--coap requests from --coap-peers sockets, kept in step with the MQTT traffic so
        that both run side by side from start to end."""
        args = self.args
        rng = random.Random(args.seed + 2)
        requests = [fuzzer.next() for _ in range(args.coap)]
        queue: asyncio.Queue[CoapRequest] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)
        done = 0
        started = time.monotonic()

        async def worker(peer: CoapPeer, garbage: CoapPeer) -> None:
            nonlocal done
            while not queue.empty():
                req = queue.get_nowait()
                # In step: at most 2 % ahead of the MQTT traffic's progress.
                while (done / max(args.coap, 1) > self.mqtt_done / max(args.messages, 1) + 0.02
                       and not self.mqtt_finished):
                    await asyncio.sleep(0.1)
                # Datagrams sent without an exchange go out from sockets of their own: the
                # server remembers message ids per endpoint, and a random one could make it
                # answer a later request of the same socket from that memory.
                code, submissions = await (garbage if req.raw is not None else peer).send(req)
                done += 1
                self._coap_outcome(req, code, submissions, oracle)

        def open_peer() -> Awaitable[CoapPeer]:
            return CoapPeer.open("127.0.0.1", port, random.Random(rng.random()), self.coap)

        peers = [await open_peer() for _ in range(args.coap_peers)]
        garbage = [await open_peer() for _ in range(2)]
        try:
            await asyncio.gather(*(worker(p, garbage[i % 2]) for i, p in enumerate(peers)))
        finally:
            self.coap_seconds = time.monotonic() - started
            await asyncio.sleep(1)  # late replies (to retransmissions, not_coap datagrams)
            for p in peers + garbage:
                p.close()

    def _coap_outcome(self, req: CoapRequest, code: str, submissions: int,
                      oracle: Oracle) -> None:
        out = self.coap
        out.codes[(req.family, code)] += 1
        if req.expect and code not in req.expect:
            out.unexpected[(req.family, code)] += 1
            out.examples.setdefault(f"{req.family} -> {code}", _describe_request(req))
        if req.valid_samples:
            if code == "2.04":
                out.stored_keys.update(req.valid_samples)
                self.coap_valid_samples.update(req.valid_samples)
            else:
                out.not_answered_valid += 1
        if req.decode is not None and submissions:
            kind, device, payload, media = req.decode
            oracle.judge("coap", [_Decodable(f"coap {req.family}", kind, device, payload,
                                             media)] * submissions)


def _describe_request(req: CoapRequest) -> dict:
    return {"options": [(n, v[:40].hex()) for n, v in req.options][:12],
            "payload_head_hex": req.payload[:64].hex(), "mtype": req.mtype, "code": req.code,
            "blocks": len(req.blocks), "raw_head_hex": (req.raw or b"")[:32].hex()}


async def _setup_devices(dsn: str, args: argparse.Namespace) -> tuple[Devices, dict, dict,
                                                                      list[str], list[str]]:
    valid = [f"fz-ok-{i:04d}" for i in range(args.devices // 5)]
    fuzz = [f"fz-fz-{i:04d}" for i in range(args.devices)]
    coap_valid = [f"fz-coap-{i:04d}" for i in range(20)]
    coap_fuzz = [f"fz-coapfz-{i:04d}" for i in range(10)]
    cars = {d for i, d in enumerate(valid + fuzz) if i % 2}
    regs = [VehicleRegistration(f"veh-{d}", d, "car" if d in cars else "ebike")
            for d in (*valid, *fuzz, *coap_valid, *coap_fuzz)]
    store = await TelemetryStore.open(dsn)
    try:
        registry = await store.register_vehicles(regs)
        issued = await DeviceCredentials(store).provision_many(coap_valid + coap_fuzz)
    finally:
        await store.close()
    tokens = {i.device_id: i.secret for i in issued}
    devices = Devices(valid=valid, fuzz=fuzz, cars=cars,
                      unknown=[f"fz-ghost-{i:04d}" for i in range(50)])
    return devices, registry, tokens, coap_valid, coap_fuzz


async def _until(check, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(interval)
    return False


async def _stored(dsn: str, devices: list[str]) -> tuple[set, set, int, dict]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT v.device_id, (extract(epoch FROM p.time) * 1000)::bigint FROM positions p "
            "JOIN vehicles v ON v.id = p.vehicle WHERE v.device_id = ANY(%s)", (devices,))
        samples = {(d, int(t)) for d, t in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT v.device_id, (extract(epoch FROM e.time) * 1000)::bigint, e.type FROM events e "
            "JOIN vehicles v ON v.id = e.vehicle WHERE e.source = 'device' "
            "AND v.device_id = ANY(%s)", (devices,))
        events = {(d, int(t), ty) for d, t, ty in await cur.fetchall()}
        positions = (await (await conn.execute("SELECT count(*) FROM positions")).fetchone())[0]
        cur = await conn.execute(
            "SELECT transport, kind, device_id, content_type, length(payload), "
            "substring(payload FROM 1 FOR 96), error FROM quarantined_messages ORDER BY id")
        rows = await cur.fetchall()
    errors: Counter = Counter()
    examples = []
    for transport, kind, device, ct, size, head, error in rows:
        key = f"{transport} {kind}: {error[:120]}"
        errors[key] += 1
        if errors[key] <= 2:
            examples.append({"transport": transport, "kind": kind, "device_id": device,
                             "content_type": ct, "payload_bytes": size,
                             "payload_head_hex": bytes(head).hex(), "error": error[:300]})
    quarantined = {"count": len(rows), "by_error": dict(errors.most_common(20)),
                   "examples": examples[:20]}
    return samples, events, positions, quarantined


async def main(args: argparse.Namespace) -> dict:
    services = BenchServices("fgfuzz")
    report: dict = {"benchmark": "fuzz",
                    "date": datetime.now(UTC).isoformat(timespec="seconds"),
                    "machine": machine(services.pg_version), "seed": args.seed}
    gateway: GatewayProcess | None = None
    monitor: Monitor | None = None
    try:
        await migrate(services.dsn)
        devices, registry, tokens, coap_valid, coap_fuzz = await _setup_devices(services.dsn, args)
        now_ms = int(time.time() * 1000)
        oracle = Oracle(registry)
        mqtt_fuzzer = PayloadFuzzer(args.seed, devices, now_ms, valid_share=args.valid_share)
        coap_fuzzer = CoapFuzzer(args.seed + 1, ROOT, tokens, coap_valid, coap_fuzz,
                                 PayloadFuzzer(args.seed + 3, devices, now_ms), now_ms)
        metrics_port, coap_port = free_port(), _free_udp_port()
        log_path = Path(tempfile.gettempdir()) / f"fgfuzz-gateway-{os.getpid()}.log"
        gateway = GatewayProcess(services.dsn, services.broker.url, coap_port, metrics_port,
                                 log_path)
        gateway.start()
        if not await _until(lambda: _ready(metrics_port), 60):
            raise RuntimeError(f"the gateway did not become ready (see {log_path})")
        monitor = Monitor(metrics_port)
        monitor.start()
        campaign = Campaign(args)
        started = time.monotonic()
        deadline = started + args.max_seconds
        cpu_before = gateway.cpu_s()
        tasks = [asyncio.create_task(campaign.publish(
                     mqtt_fuzzer, oracle, services.broker.host, services.broker.port, monitor,
                     deadline)),
                 asyncio.create_task(campaign.send_coap(coap_fuzzer, oracle, coap_port))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=30)
        sent_at = time.monotonic()
        expected = sum(campaign.sent_kind.values())

        def settled() -> bool:
            m = scrape(metrics_port)
            return (total(m, "fleetgate_messages_received_total", transport="mqtt") >= expected
                    and total(m, "fleetgate_pipeline_pending_messages") == 0)

        drained = await _until(settled, args.settle_s)
        drained_at = time.monotonic()
        await asyncio.sleep(1.0)  # a last poll after the last commit
        monitor.stop_event.set()
        monitor.join(15)
        monitor.poll()
        cpu_s = (gateway.cpu_s() or 0) - (cpu_before or 0)
        final = scrape(metrics_port)
        alive = gateway.proc.poll() is None
        stored_samples, stored_events, positions, quarantined = await _stored(
            services.dsn, devices.valid + coap_valid)
        exit_code = gateway.stop()
        report.update(_report(args, campaign, oracle, monitor, final, stored_samples,
                              stored_events, positions, quarantined, alive, exit_code, drained,
                              sent_at - started, drained_at - started, cpu_s,
                              gateway.log_problems(), log_path))
    finally:
        if monitor is not None:
            monitor.stop_event.set()
        if gateway is not None:
            gateway.stop(30)
        services.close()
    return report


def _report(args, campaign: Campaign, oracle: Oracle, monitor: Monitor, m: dict,
            stored_samples: set, stored_events: set, positions: int, quarantined: dict,
            alive: bool, exit_code: int | None, drained: bool, sending_s: float,
            drained_s: float, cpu_s: float, log_problems: dict, log_path: Path) -> dict:
    checks: dict[str, bool] = {}
    details: dict[str, object] = {}

    def check(name: str, ok: bool, **detail) -> None:
        checks[name] = bool(ok)
        if detail and not ok:
            details[name] = detail

    # Valid traffic, stored exactly once (positions are unique by (vehicle, t): once or never).
    missing = campaign.valid_samples - stored_samples
    coap_missing = campaign.coap_valid_samples - stored_samples
    extra = stored_samples - campaign.valid_samples - campaign.coap_valid_samples
    check("every valid MQTT sample stored", not missing, missing=len(missing),
          examples=sorted(missing)[:5])
    check("every valid CoAP sample answered 2.04 and stored",
          not coap_missing and not campaign.coap.not_answered_valid,
          missing=len(coap_missing), not_answered=campaign.coap.not_answered_valid)
    check("nothing else stored for the valid devices", not extra, extra=sorted(extra)[:5])
    missing_events = campaign.valid_events - stored_events
    check("every valid event stored", not missing_events, missing=len(missing_events))

    # The gateway's counters against its decoder's judgement of every message.
    for kind in ("telemetry", "event", "status"):
        got = total(m, "fleetgate_messages_received_total", transport="mqtt", kind=kind)
        want = campaign.sent_kind[kind]
        check(f"mqtt {kind} messages received = sent", got == want, got=got, sent=want)
    for kind in ("telemetry", "event"):
        got = total(m, "fleetgate_messages_received_total", transport="coap", kind=kind)
        want = oracle.messages[("coap", kind)]
        check(f"coap {kind} messages received = submitted", got == want, got=got,
              submitted=want)
    for transport in ("mqtt", "coap"):
        got = by_label(m, "fleetgate_samples_rejected_total", "reason", transport=transport)
        want = {r: c for (t, r), c in sorted(oracle.rejected.items()) if t == transport and c}
        diff = {r: {"gateway": got.get(r, 0), "expected": want.get(r, 0)}
                for r in sorted(set(got) | set(want)) if got.get(r, 0) != want.get(r, 0)}
        check(f"{transport} rejections by reason = expected", not diff, differences=diff)
        received = total(m, "fleetgate_samples_received_total", transport=transport)
        want_received = oracle.accepted[transport] + oracle.telemetry_rejected[transport]
        check(f"{transport} samples received = accepted + rejected", received == want_received,
              gateway=received, expected=want_received)
    # Stored and duplicate are exact in total; a batch of both transports with duplicates splits
    # them between the transports in proportion (gateway/metrics.py).
    stored_total = total(m, "fleetgate_samples_stored_total")
    duplicate_total = total(m, "fleetgate_samples_duplicate_total")
    accepted_total = sum(oracle.accepted.values())
    check("stored + duplicate = accepted", stored_total + duplicate_total == accepted_total,
          stored=stored_total, duplicate=duplicate_total, accepted=accepted_total)
    check("positions in the database = samples stored", positions == stored_total,
          positions=positions, stored=stored_total)

    # Nothing stalled, nothing failed.
    check("ready throughout", monitor.not_ready_count == 0, failures=monitor.not_ready)
    check("pending back to 0", drained and total(m, "fleetgate_pipeline_pending_messages") == 0)
    check("gateway alive at the end", alive)
    check("gateway stopped cleanly on SIGTERM", exit_code == 0, exit_code=exit_code)
    errors = by_label(m, "fleetgate_pipeline_errors_total", "where")
    check("no pipeline errors", not errors, errors=errors)
    check("nothing quarantined", not quarantined["count"])
    check("decoder raised on nothing", not oracle.crashes)
    check("no message holds the decoder for 0.5 s", oracle.slowest_ms < STALLING_DECODE_S * 1000,
          slowest_ms=round(oracle.slowest_ms, 1))
    unexpected = {f"{f} -> {c}": n for (f, c), n in sorted(campaign.coap.unexpected.items())}
    check("every CoAP request got an expected code", not unexpected)

    adversarial = sum(n for f, n in campaign.sent.items() if f != "valid")
    coap_codes: dict[str, Counter] = defaultdict(Counter)
    for (family, code), n in campaign.coap.codes.items():
        coap_codes[family][code] += n
    return {
        "ok": all(checks.values()),
        "checks": checks,
        "failed_checks": details,
        "mqtt": {
            "messages": sum(campaign.sent.values()), "adversarial": adversarial,
            "valid": campaign.sent["valid"], "by_family": dict(campaign.sent.most_common()),
            "subscribed_by_kind": dict(campaign.sent_kind), "not_subscribed": campaign.unsubscribed,
            "bytes": campaign.sent_bytes, "valid_samples": len(campaign.valid_samples),
            "valid_events": len(campaign.valid_events),
            "seconds": round(campaign.mqtt_seconds, 1),
            "messages_per_s": round(sum(campaign.sent.values()) / max(campaign.mqtt_seconds, 1e-9)),
        },
        "coap": {
            "requests": sum(campaign.coap.requests.values()),
            "datagrams": campaign.coap.datagrams,
            "by_family": dict(campaign.coap.requests.most_common()),
            "codes_by_family": {f: dict(c.most_common()) for f, c in sorted(coap_codes.items())},
            "unexpected": unexpected, "unexpected_examples": campaign.coap.examples,
            "valid_samples": len(campaign.coap_valid_samples),
            "retransmissions": campaign.coap.retransmissions,
            "resent_after_5_03": campaign.coap.resent_after_503,
            "stray_replies": dict(campaign.coap.stray_replies),
            "gateway_responses": {f"{dict(lab)['resource']} {dict(lab)['code']}": int(v)
                                  for (n, lab), v in sorted(m.items())
                                  if n == "fleetgate_coap_responses_total" and v},
            "seconds": round(campaign.coap_seconds, 1),
        },
        "gateway": {
            "messages_received": {f"{t} {k}": int(v) for (n, lab), v in sorted(m.items())
                                  if n == "fleetgate_messages_received_total" and v
                                  for t, k in [(dict(lab)["transport"], dict(lab)["kind"])]},
            "rejected_by_reason": {t: by_label(m, "fleetgate_samples_rejected_total", "reason",
                                               transport=t) for t in ("mqtt", "coap")},
            "samples_received": {t: int(total(m, "fleetgate_samples_received_total", transport=t))
                                 for t in ("mqtt", "coap")},
            "samples_stored": {t: int(total(m, "fleetgate_samples_stored_total", transport=t))
                               for t in ("mqtt", "coap")},
            "samples_duplicate": {t: int(total(m, "fleetgate_samples_duplicate_total",
                                               transport=t)) for t in ("mqtt", "coap")},
            "device_events_stored": int(total(m, "fleetgate_device_events_stored_total")),
            "pipeline_errors": errors, "quarantined": quarantined,
            "store_refused": {t: by_label(m, "fleetgate_samples_rejected_total", "reason",
                                          transport=t).get("store_refused", 0)
                              for t in ("mqtt", "coap")},
            "max_pending": monitor.max_pending,
            "longest_without_a_commit_while_holding_s": round(monitor.longest_no_progress_s, 1),
            "readyz_polls": monitor.polls, "readyz_failures": monitor.not_ready_count,
            "readyz_max_ms": round(monitor.max_readyz_ms, 1),
            "cpu_s": round(cpu_s, 1),
            "cpu_us_per_message": round(cpu_s * 1e6 / max(1, sum(campaign.sent.values())
                                                          + sum(campaign.coap.requests.values()))),
            "error_log_lines": log_problems, "log": str(log_path),
        },
        "expected": {
            "accepted_samples": dict(oracle.accepted),
            "accepted_events": dict(oracle.events_accepted),
            "rejected_by_family": {f: dict(c.most_common()) for f, c in
                                   sorted(oracle.by_family.items())},
            "decoder_seconds_here": round(oracle.seconds, 1),
        },
        "findings": {"decoder_raised": oracle.crashes,
                     "decoder_raised_count": {" / ".join(k): v for k, v in
                                              oracle.crash_count.items()},
                     "slow": oracle.slow, "slowest_decode_ms": round(oracle.slowest_ms, 1),
                     "slow_count": {" / ".join(k): v for k, v in oracle.slow_count.items()}},
        "seconds": {"sending": round(sending_s, 1), "until_drained": round(drained_s, 1)},
        "rates": {"mqtt_messages_per_s": round(sum(campaign.sent.values())
                                               / max(campaign.mqtt_seconds, 1e-9)),
                  "coap_requests_per_s": round(sum(campaign.coap.requests.values())
                                               / max(campaign.coap_seconds, 1e-9))},
        "load": {"messages": args.messages, "coap": args.coap, "connections": args.connections,
                 "coap_peers": args.coap_peers, "max_backlog": args.max_backlog,
                 "devices": args.devices, "valid_share": args.valid_share},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=1_000_000, help="MQTT messages in all")
    p.add_argument("--coap", type=int, default=10_000, help="CoAP requests and datagrams")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--valid-share", type=float, default=0.07,
                   help="share of the MQTT messages that are valid samples of known keys")
    p.add_argument("--devices", type=int, default=200, help="registered fuzz devices (and a "
                   "fifth as many for valid traffic)")
    p.add_argument("--connections", type=int, default=4, help="MQTT 5 publishing connections "
                   "(plus one MQTT 3.1.1)")
    p.add_argument("--coap-peers", type=int, default=16, help="UDP sockets sending CoAP")
    p.add_argument("--chunk", type=int, default=1000, help="messages made and judged at once")
    p.add_argument("--max-backlog", type=int, default=50_000,
                   help="messages published and not yet counted by the gateway, at most")
    p.add_argument("--max-seconds", type=float, default=3600.0,
                   help="stop sending after this long, whatever is left")
    p.add_argument("--settle-s", type=float, default=300.0,
                   help="wait at most this long for the gateway to take everything in")
    return p.parse_args(argv)


if __name__ == "__main__":
    result = asyncio.run(main(parse_args()))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    sys.exit(0 if result.get("ok") else 1)
