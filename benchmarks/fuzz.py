"""Fuzz campaign: adversarial MQTT payloads and CoAP datagrams through the running gateway, with
valid traffic mixed in; counts what was sent, stored, rejected by reason and quarantined.

On this machine, loopback only: a private Mosquitto with the project's configuration, a fresh
database on the local PostgreSQL (FLEETGATE_BENCH_PG_DSN), registered and provisioned devices,
and `fleetgate run` as a child process (CoAP on a free UDP port, no HTTP API). The MQTT messages
(benchmarks/_fuzz_payloads.py: structure-aware mutations of valid JSON, CBOR and SenML samples,
events, statuses, byte damage, wrong content types and topics, sizes around 256 KiB, batches
around 1,000 samples) go out QoS 1 on several connections, MQTT 5 and 3.1.1, as fast as the
gateway takes them (at most --max-backlog ahead of it); the CoAP requests and datagrams
(benchmarks/_fuzz_coap.py) go out alongside from several UDP sockets. Everything follows from
--seed.

Checked, and printed as one JSON document (exit 1 if a check fails):
  - every valid sample and event (known device and t) is stored exactly once;
  - the gateway's counters equal its own decoder's judgement of every message, made here before
    the message is sent (benchmarks/_fuzz_oracle.py): messages by transport and kind, rejections
    by reason, samples received, stored + duplicate = accepted;
  - no stall: /readyz answers 200 throughout (polled twice a second), the pending count returns
    to 0, the process is alive at the end and stops cleanly on SIGTERM;
  - nothing in fleetgate_pipeline_errors_total or quarantined_messages, no message the decoder
    raises on or spends half a second on; any is a bug found, listed with its payload.

Usage:  .venv/bin/python -m benchmarks.fuzz [--messages 1000000] [--coap 10000] [--help]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._fuzz_coap import CoapFuzzer, CoapOutcome, CoapPeer, CoapRequest
from benchmarks._fuzz_oracle import Decodable, Oracle
from benchmarks._fuzz_payloads import Devices, FuzzMessage, PayloadFuzzer
from benchmarks._runner import bench_parser, cpu_seconds, progress, run_benchmark, until
from benchmarks._services import BenchServices, answers_ok, gateway_process
from fleetgate.embedded import free_port
from gateway.mqtt import ConnectOptions, MqttClient
from telemetry.store import DeviceCredentials, TelemetryStore, VehicleRegistration, migrate

ROOT = "fg/v1"
# One message holding the decoder this long fails the run: the gateway decodes on its event
# loop. (An event whose CBOR shared references expand beyond the detail budget costs ~0.1 s by
# design, as a 256 KiB detail does: the budget is walked; docs/protocol.md, "Device events".)
STALLING_DECODE_MS = 500.0
KINDS = ("telemetry", "event", "status")
REJECTED = {
    "telemetry": "fleetgate_samples_rejected_total",
    "event": "fleetgate_device_events_rejected_total",
    "status": "fleetgate_status_rejected_total",
}


# --- what the gateway says about itself --------------------------------------------------------


def scrape(port: int, timeout: float = 5.0) -> dict[tuple, float]:
    """Every fleetgate_* sample of /metrics: (name, sorted label items) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("fleetgate_")
    }


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
    """Polls /readyz and /metrics twice a second from a thread of its own (this process's event
    loop is busy publishing): readiness failures and latency, the longest time the gateway held
    messages without counting a new one, the latest counters."""

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
        self.received_mqtt = 0.0
        self._progress_at = time.monotonic()
        self._last_done = -1.0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        self.polls += 1
        self._readiness()
        try:
            m = scrape(self.port)
        except OSError:
            return
        self.received_mqtt = total(m, "fleetgate_messages_received_total", transport="mqtt")
        pending = total(m, "fleetgate_pipeline_pending_messages")
        self.max_pending = max(self.max_pending, int(pending))
        done = total(m, "fleetgate_messages_received_total")
        now = time.monotonic()
        if done != self._last_done or pending == 0:
            self._last_done, self._progress_at = done, now
        self.longest_no_progress_s = max(self.longest_no_progress_s, now - self._progress_at)

    def _readiness(self) -> None:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=10) as r:
                status, body = r.status, r.read()[:200]
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()[:200]
        except OSError as exc:
            status, body = 0, str(exc).encode()
        self.max_readyz_ms = max(self.max_readyz_ms, (time.monotonic() - started) * 1000)
        if status != 200:
            self.not_ready_count += 1
            if len(self.not_ready) < 10:
                text = body.decode("utf-8", "replace")
                self.not_ready.append({"at": round(time.time(), 1), "status": status, "body": text})


class Gateway:
    """`fleetgate run` as a child process, with CoAP on a free UDP port and no HTTP API."""

    def __init__(self, services: BenchServices) -> None:
        self.metrics_port = free_port()
        self.coap_port = _free_udp_port()
        self.log = Path(tempfile.gettempdir()) / f"fgfuzz-gateway-{secrets.token_hex(4)}.log"
        env = {
            "FLEETGATE_DATABASE_URL": services.dsn,
            "FLEETGATE_MQTT_URL": services.broker.url,
            "FLEETGATE_MQTT_TOPIC_ROOT": ROOT,
            "FLEETGATE_MQTT_CLIENT_ID": "fgfuzz-gw",
            "FLEETGATE_API_PORT": "0",
            "FLEETGATE_COAP_ENABLED": "true",
            "FLEETGATE_COAP_HOST": "127.0.0.1",
            "FLEETGATE_COAP_PORT": str(self.coap_port),
            "FLEETGATE_METRICS_PORT": str(self.metrics_port),
            "FLEETGATE_LOG_FORMAT": "json",
        }
        self.proc = gateway_process(env, self.log)

    async def ready(self) -> None:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        await until(lambda: asyncio.to_thread(answers_ok, url), 60, f"the gateway ({self.log})")

    def cpu_s(self) -> float:
        with contextlib.suppress(OSError, IndexError, ValueError):
            return cpu_seconds(self.proc.pid)
        return 0.0

    def stop(self, timeout: float = 120.0) -> int | None:
        """SIGTERM, and the exit code (None: it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def error_log_lines(self) -> dict[str, int]:
        """Error and critical log lines by event name."""
        out: Counter = Counter()
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            for line in f:
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    out["(not JSON) " + line[:80].decode("utf-8", "replace").strip()] += 1
                    continue
                if isinstance(rec, dict) and rec.get("level") in ("error", "critical"):
                    out[f"{rec.get('level')}: {rec.get('event')}"] += 1
        return dict(out)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the campaign ------------------------------------------------------------------------------


class Campaign:
    def __init__(self, args: argparse.Namespace, oracle: Oracle) -> None:
        self.args = args
        self.oracle = oracle
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

    async def publish(self, fuzzer: PayloadFuzzer, broker, monitor: Monitor, deadline: float):
        """--messages MQTT messages, made and judged --chunk at a time, QoS 1, round robin over
        the MQTT 5 connections (the MQTT 3.1.1 one takes those meant for it)."""
        args = self.args
        run = secrets.token_hex(3)
        v5 = [
            MqttClient(ConnectOptions(broker.host, broker.port, f"fgfuzz-{run}-{i}", protocol=5))
            for i in range(args.connections)
        ]
        v3 = MqttClient(ConnectOptions(broker.host, broker.port, f"fgfuzz-{run}-v3", protocol=4))
        for client in (*v5, v3):
            await client.connect()
        started = time.monotonic()
        window: list[list] = []
        try:
            while self.mqtt_done < args.messages and time.monotonic() < deadline:
                chunk = [
                    fuzzer.next() for _ in range(min(args.chunk, args.messages - self.mqtt_done))
                ]
                self.oracle.judge("mqtt", (m for m in chunk if m.subscribed))
                window.append(
                    [
                        (m, self._send(m, v3 if m.protocol == 4 else v5[k % len(v5)]))
                        for k, m in enumerate(chunk)
                    ]
                )
                self.mqtt_done += len(chunk)
                if len(window) > 2:
                    await _published(window.pop(0))
                # Bounded: never more than --max-backlog messages ahead of the gateway.
                while sum(self.sent_kind.values()) - monitor.received_mqtt > args.max_backlog:
                    await asyncio.sleep(0.05)
            for futures in window:
                await _published(futures)
        finally:
            self.mqtt_seconds = time.monotonic() - started
            self.mqtt_finished = True
            for client in (*v5, v3):
                with contextlib.suppress(Exception):
                    await client.disconnect()

    def _send(self, m: FuzzMessage, client: MqttClient) -> asyncio.Future:
        self.sent[m.family] += 1
        self.sent_bytes += len(m.payload)
        if m.subscribed:
            self.sent_kind[m.kind] += 1
        else:
            self.unsubscribed += 1
        self.valid_samples.update(m.valid_samples)
        self.valid_events.update(m.valid_events)
        content_type = m.content_type if m.protocol == 5 else None
        topic = f"{ROOT}/{m.device_id}/{m.kind}"
        return client.publish(topic, m.payload, qos=1, retain=m.retain, content_type=content_type)

    async def send_coap(self, fuzzer: CoapFuzzer, port: int) -> None:
        """--coap requests from --coap-peers sockets, kept in step with the MQTT traffic so that
        both run side by side from start to end."""
        args = self.args
        rng = random.Random(args.seed + 2)
        queue = [fuzzer.next() for _ in range(args.coap)]
        queue.reverse()
        started = time.monotonic()

        def open_peer() -> Awaitable[CoapPeer]:
            return CoapPeer.open("127.0.0.1", port, random.Random(rng.random()), self.coap)

        peers = [await open_peer() for _ in range(args.coap_peers)]
        # Datagrams sent without an exchange go out from sockets of their own: the server
        # remembers message ids per endpoint, and a random one could make it answer a later
        # request of the same socket from that memory.
        garbage = [await open_peer() for _ in range(2)]
        try:
            await asyncio.gather(
                *(self._coap_worker(queue, p, garbage[i % 2]) for i, p in enumerate(peers))
            )
        finally:
            self.coap_seconds = time.monotonic() - started
            await asyncio.sleep(1)  # late replies (to retransmissions, not_coap datagrams)
            for peer in (*peers, *garbage):
                peer.close()

    async def _coap_worker(self, queue: list, peer: CoapPeer, garbage: CoapPeer) -> None:
        args = self.args
        while queue:
            req = queue.pop()
            # In step: at most 2 % ahead of the MQTT traffic's progress.
            while (args.coap - len(queue)) / args.coap > (
                self.mqtt_done / args.messages + 0.02
            ) and not self.mqtt_finished:
                await asyncio.sleep(0.1)
            code, submissions = await (garbage if req.raw is not None else peer).send(req)
            self._coap_outcome(req, code, submissions)

    def _coap_outcome(self, req: CoapRequest, code: str, submissions: int) -> None:
        out = self.coap
        out.codes[(req.family, code)] += 1
        if req.expect and code not in req.expect:
            out.unexpected[(req.family, code)] += 1
            out.examples.setdefault(f"{req.family} -> {code}", req.describe())
        if req.valid_samples:
            if code == "2.04":
                self.coap_valid_samples.update(req.valid_samples)
            else:
                out.not_answered_valid += 1
        if req.decode is not None and submissions:
            kind, device, payload, media = req.decode
            got = Decodable(f"coap {req.family}", kind, device, payload, media)
            self.oracle.judge("coap", [got] * submissions)
        self.oracle.coap_refusal(req, code, ROOT)


async def _published(futures: list) -> None:
    for m, fut in futures:
        try:
            await fut
        except Exception as exc:  # the broker refused it: the gateway never sees it
            raise RuntimeError(
                f"the broker refused a {m.family} message ({exc}); the counts would not add up"
            ) from exc


async def _setup_devices(dsn: str, args: argparse.Namespace) -> tuple[Devices, dict, dict]:
    """Register the devices (valid traffic, fuzz, CoAP) and provision the CoAP ones."""
    valid = [f"fz-ok-{i:04d}" for i in range(args.devices // 5)]
    fuzz = [f"fz-fz-{i:04d}" for i in range(args.devices)]
    coap_valid = [f"fz-coap-{i:04d}" for i in range(20)]
    coap_fuzz = [f"fz-coapfz-{i:04d}" for i in range(10)]
    cars = {d for i, d in enumerate(valid + fuzz) if i % 2}
    regs = [
        VehicleRegistration(f"veh-{d}", d, "car" if d in cars else "ebike")
        for d in (*valid, *fuzz, *coap_valid, *coap_fuzz)
    ]
    store = await TelemetryStore.open(dsn)
    try:
        registry = await store.register_vehicles(regs)
        issued = await DeviceCredentials(store).provision_many(coap_valid + coap_fuzz)
    finally:
        await store.close()
    devices = Devices(
        valid=valid,
        fuzz=fuzz,
        cars=cars,
        unknown=[f"fz-ghost-{i:04d}" for i in range(50)],
        coap_valid=coap_valid,
        coap_fuzz=coap_fuzz,
    )
    return devices, registry, {i.device_id: i.secret for i in issued}


async def _stored(dsn: str, devices: list[str]) -> dict:
    """What the database holds: the valid devices' samples and events, all positions, and
    the quarantined messages."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT v.device_id, (extract(epoch FROM p.time) * 1000)::bigint FROM positions p "
            "JOIN vehicles v ON v.id = p.vehicle WHERE v.device_id = ANY(%s)",
            (devices,),
        )
        samples = {(d, int(t)) for d, t in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT v.device_id, (extract(epoch FROM e.time) * 1000)::bigint, e.type FROM events e "
            "JOIN vehicles v ON v.id = e.vehicle WHERE e.source = 'device' "
            "AND v.device_id = ANY(%s)",
            (devices,),
        )
        events = {(d, int(t), ty) for d, t, ty in await cur.fetchall()}
        positions = (await (await conn.execute("SELECT count(*) FROM positions")).fetchone())[0]
        cur = await conn.execute(
            "SELECT transport, kind, device_id, content_type, length(payload), "
            "substring(payload FROM 1 FOR 96), error FROM quarantined_messages ORDER BY id"
        )
        quarantined = _quarantined(await cur.fetchall())
    return {
        "samples": samples,
        "events": events,
        "positions": positions,
        "quarantined": quarantined,
    }


def _quarantined(rows: list) -> dict:
    errors: Counter = Counter()
    examples = []
    for transport, kind, device, content_type, size, head, error in rows:
        key = f"{transport} {kind}: {error[:120]}"
        errors[key] += 1
        if errors[key] <= 2:
            examples.append(
                {
                    "transport": transport,
                    "kind": kind,
                    "device_id": device,
                    "content_type": content_type,
                    "payload_bytes": size,
                    "payload_head_hex": bytes(head).hex(),
                    "error": error[:300],
                }
            )
    return {"count": len(rows), "by_error": dict(errors.most_common(20)), "examples": examples[:20]}


async def bench(args: argparse.Namespace) -> dict:
    with BenchServices("fgfuzz") as services:
        await migrate(services.dsn)
        devices, registry, tokens = await _setup_devices(services.dsn, args)
        now_ms = int(time.time() * 1000)
        oracle = Oracle(registry)
        campaign = Campaign(args, oracle)
        mqtt_fuzzer = PayloadFuzzer(args.seed, devices, now_ms, valid_share=args.valid_share)
        coap_fuzzer = CoapFuzzer(
            args.seed + 1,
            ROOT,
            tokens,
            devices,
            PayloadFuzzer(args.seed + 3, devices, now_ms),
            now_ms,
        )
        gateway = Gateway(services)
        monitor = Monitor(gateway.metrics_port)
        try:
            await gateway.ready()
            monitor.start()
            run = await _run(campaign, gateway, monitor, mqtt_fuzzer, coap_fuzzer, services)
        finally:
            monitor.stop_event.set()
            gateway.stop(30)
        stored = await _stored(services.dsn, devices.valid + devices.coap_valid)
        report = {
            "benchmark": "fuzz",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": services.machine(),
            "seed": args.seed,
        }
    report.update(_report(args, campaign, oracle, monitor, stored, run))
    return report


async def _run(
    campaign: Campaign,
    gateway: Gateway,
    monitor: Monitor,
    mqtt_fuzzer,
    coap_fuzzer,
    services: BenchServices,
) -> dict:
    """Send everything, wait until the gateway has taken it in, and see how it stops."""
    args = campaign.args
    started = time.monotonic()
    cpu_before = gateway.cpu_s()
    tasks = [
        asyncio.create_task(
            campaign.publish(mqtt_fuzzer, services.broker, monitor, started + args.max_seconds)
        ),
        asyncio.create_task(campaign.send_coap(coap_fuzzer, gateway.coap_port)),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=30)
    sent_at = time.monotonic()
    progress(f"fuzz: sent in {sent_at - started:.0f} s; waiting for the gateway to take it in")
    expected = sum(campaign.sent_kind.values())

    def settled() -> bool:
        m = scrape(gateway.metrics_port)
        return (
            total(m, "fleetgate_messages_received_total", transport="mqtt") >= expected
            and total(m, "fleetgate_pipeline_pending_messages") == 0
        )

    drained = True
    try:
        await until(lambda: asyncio.to_thread(settled), args.settle_s, "the gateway", 0.5)
    except TimeoutError:
        drained = False
    await asyncio.sleep(1.0)  # a last poll after the last commit
    monitor.stop_event.set()
    monitor.join(15)
    monitor.poll()
    return {
        "metrics": scrape(gateway.metrics_port),
        "alive": gateway.proc.poll() is None,
        "cpu_s": gateway.cpu_s() - cpu_before,
        "exit_code": gateway.stop(),
        "drained": drained,
        "sending_s": sent_at - started,
        "until_drained_s": time.monotonic() - started,
        "error_log_lines": gateway.error_log_lines(),
        "log": str(gateway.log),
    }


# --- the report --------------------------------------------------------------------------------


class _Checks:
    def __init__(self) -> None:
        self.passed: dict[str, bool] = {}
        self.details: dict[str, object] = {}

    def __call__(self, name: str, ok: bool, **detail: object) -> None:
        self.passed[name] = bool(ok)
        if detail and not ok:
            self.details[name] = detail


def _check_valid_traffic(check: _Checks, campaign: Campaign, stored: dict) -> None:
    """Stored exactly once: positions are unique by (vehicle, t), so once or never."""
    samples = stored["samples"]
    missing = campaign.valid_samples - samples
    check(
        "every valid MQTT sample stored",
        not missing,
        missing=len(missing),
        examples=sorted(missing)[:5],
    )
    coap_missing = campaign.coap_valid_samples - samples
    check(
        "every valid CoAP sample answered 2.04 and stored",
        not coap_missing and not campaign.coap.not_answered_valid,
        missing=len(coap_missing),
        not_answered=campaign.coap.not_answered_valid,
    )
    extra = samples - campaign.valid_samples - campaign.coap_valid_samples
    check("nothing else stored for the valid devices", not extra, extra=sorted(extra)[:5])
    missing_events = campaign.valid_events - stored["events"]
    check("every valid event stored", not missing_events, missing=len(missing_events))


def _check_counters(
    check: _Checks, campaign: Campaign, oracle: Oracle, m: dict, positions: int
) -> None:
    """The gateway's counters against its decoder's judgement of every message."""
    for kind in KINDS:
        got = total(m, "fleetgate_messages_received_total", transport="mqtt", kind=kind)
        check(
            f"mqtt {kind} messages received = sent",
            got == campaign.sent_kind[kind],
            gateway=got,
            sent=campaign.sent_kind[kind],
        )
    for transport in ("mqtt", "coap"):
        for kind in KINDS:
            got = by_label(m, REJECTED[kind], "reason", transport=transport)
            want = {r: c for (t, k, r), c in oracle.rejected.items() if (t, k) == (transport, kind)}
            diff = {
                r: {"gateway": got.get(r, 0), "expected": want.get(r, 0)}
                for r in sorted(set(got) | set(want))
                if got.get(r, 0) != want.get(r, 0)
            }
            check(f"{transport} {kind} rejections by reason = expected", not diff, differences=diff)
        received = total(m, "fleetgate_samples_received_total", transport=transport)
        check(
            f"{transport} samples received = accepted + rejected",
            received == oracle.samples_received[transport],
            gateway=received,
            expected=oracle.samples_received[transport],
        )
        stored = total(m, "fleetgate_samples_stored_total", transport=transport)
        duplicate = total(m, "fleetgate_samples_duplicate_total", transport=transport)
        check(
            f"{transport} stored + duplicate = accepted",
            stored + duplicate == oracle.accepted[transport],
            stored=stored,
            duplicate=duplicate,
            accepted=oracle.accepted[transport],
        )
    for kind in ("telemetry", "event"):
        got = total(m, "fleetgate_messages_received_total", transport="coap", kind=kind)
        want = oracle.messages[("coap", kind)]
        check(f"coap {kind} messages received = expected", got == want, gateway=got, expected=want)
    stored_total = total(m, "fleetgate_samples_stored_total")
    check(
        "positions in the database = samples stored",
        positions == stored_total,
        positions=positions,
        stored=stored_total,
    )


def _check_health(
    check: _Checks, campaign: Campaign, oracle: Oracle, monitor: Monitor, stored: dict, run: dict
) -> None:
    m = run["metrics"]
    check("ready throughout", monitor.not_ready_count == 0, failures=monitor.not_ready)
    check(
        "pending back to 0", run["drained"] and total(m, "fleetgate_pipeline_pending_messages") == 0
    )
    check("gateway alive at the end", run["alive"])
    check("gateway stopped cleanly on SIGTERM", run["exit_code"] == 0, exit_code=run["exit_code"])
    errors = by_label(m, "fleetgate_pipeline_errors_total", "where")
    check("no pipeline errors", not errors, errors=errors)
    check("nothing quarantined", not stored["quarantined"]["count"])
    check("no error in the gateway's log", not run["error_log_lines"], lines=run["error_log_lines"])
    check("decoder raised on nothing", not oracle.crashes)
    check(
        "no message holds the decoder for 0.5 s",
        oracle.slowest_ms < STALLING_DECODE_MS,
        slowest_ms=round(oracle.slowest_ms, 1),
    )
    check("every CoAP request got an expected code", not campaign.coap.unexpected)


def _report(
    args, campaign: Campaign, oracle: Oracle, monitor: Monitor, stored: dict, run: dict
) -> dict:
    check = _Checks()
    _check_valid_traffic(check, campaign, stored)
    _check_counters(check, campaign, oracle, run["metrics"], stored["positions"])
    _check_health(check, campaign, oracle, monitor, stored, run)
    return {
        "ok": all(check.passed.values()),
        "checks": check.passed,
        "failed_checks": check.details,
        "mqtt": _mqtt_summary(campaign),
        "coap": _coap_summary(campaign, run["metrics"]),
        "gateway": _gateway_summary(campaign, monitor, stored, run),
        "expected": {
            "accepted_samples": dict(oracle.accepted),
            "accepted_events": dict(oracle.events_accepted),
            "rejected_by_family": {
                f: dict(c.most_common()) for f, c in sorted(oracle.by_family.items())
            },
            "decoder_seconds_here": round(oracle.seconds, 1),
        },
        "findings": {
            "decoder_raised": oracle.crashes,
            "decoder_raised_count": {" / ".join(k): v for k, v in oracle.crash_count.items()},
            "slow": oracle.slow,
            "slow_count": {" / ".join(k): v for k, v in oracle.slow_count.items()},
            "slowest_decode_ms": round(oracle.slowest_ms, 1),
        },
        "seconds": {
            "sending": round(run["sending_s"], 1),
            "until_drained": round(run["until_drained_s"], 1),
        },
        "load": {
            k: getattr(args, k)
            for k in (
                "messages",
                "coap",
                "connections",
                "coap_peers",
                "max_backlog",
                "devices",
                "valid_share",
            )
        },
    }


def _mqtt_summary(campaign: Campaign) -> dict:
    sent = sum(campaign.sent.values())
    return {
        "messages": sent,
        "adversarial": sent - campaign.sent["valid"],
        "valid": campaign.sent["valid"],
        "by_family": dict(campaign.sent.most_common()),
        "subscribed_by_kind": dict(campaign.sent_kind),
        "not_subscribed": campaign.unsubscribed,
        "bytes": campaign.sent_bytes,
        "valid_samples": len(campaign.valid_samples),
        "valid_events": len(campaign.valid_events),
        "seconds": round(campaign.mqtt_seconds, 1),
        "messages_per_s": round(sent / max(campaign.mqtt_seconds, 1e-9)),
    }


def _coap_summary(campaign: Campaign, m: dict) -> dict:
    out = campaign.coap
    codes: dict[str, Counter] = defaultdict(Counter)
    for (family, code), n in out.codes.items():
        codes[family][code] += n
    requests = sum(out.requests.values())
    return {
        "requests": requests,
        "datagrams": out.datagrams,
        "by_family": dict(out.requests.most_common()),
        "codes_by_family": {f: dict(c.most_common()) for f, c in sorted(codes.items())},
        "unexpected": {f"{f} -> {c}": n for (f, c), n in sorted(out.unexpected.items())},
        "unexpected_examples": out.examples,
        "valid_samples": len(campaign.coap_valid_samples),
        "retransmissions": out.retransmissions,
        "resent_after_5_03": out.resent_after_503,
        "stray_replies": dict(out.stray_replies),
        "gateway_responses": {
            f"{dict(lab)['resource']} {dict(lab)['code']}": int(v)
            for (n, lab), v in sorted(m.items())
            if n == "fleetgate_coap_responses_total" and v
        },
        "seconds": round(campaign.coap_seconds, 1),
        "requests_per_s": round(requests / max(campaign.coap_seconds, 1e-9)),
    }


def _gateway_summary(campaign: Campaign, monitor: Monitor, stored: dict, run: dict) -> dict:
    m = run["metrics"]
    transports = ("mqtt", "coap")
    handled = sum(campaign.sent.values()) + sum(campaign.coap.requests.values())
    return {
        "messages_received": {
            f"{dict(lab)['transport']} {dict(lab)['kind']}": int(v)
            for (n, lab), v in sorted(m.items())
            if n == "fleetgate_messages_received_total" and v
        },
        "rejected_by_reason": {
            f"{t} {k}": by_label(m, REJECTED[k], "reason", transport=t)
            for t in transports
            for k in KINDS
        },
        **{
            f"samples_{what}": {
                t: int(total(m, f"fleetgate_samples_{what}_total", transport=t)) for t in transports
            }
            for what in ("received", "stored", "duplicate")
        },
        "device_events_stored": int(total(m, "fleetgate_device_events_stored_total")),
        "pipeline_errors": by_label(m, "fleetgate_pipeline_errors_total", "where"),
        "quarantined": stored["quarantined"],
        "max_pending": monitor.max_pending,
        "longest_without_progress_while_holding_s": round(monitor.longest_no_progress_s, 1),
        "readyz_polls": monitor.polls,
        "readyz_failures": monitor.not_ready_count,
        "readyz_max_ms": round(monitor.max_readyz_ms, 1),
        "cpu_s": round(run["cpu_s"], 1),
        "cpu_us_per_message": round(run["cpu_s"] * 1e6 / max(1, handled)),
        "alive_at_end": run["alive"],
        "exit_code": run["exit_code"],
        "error_log_lines": run["error_log_lines"],
        "log": run["log"],
    }


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser(__spec__.name, __doc__)
    p.add_argument("--messages", type=int, default=1_000_000, help="MQTT messages in all")
    p.add_argument("--coap", type=int, default=10_000, help="CoAP requests and datagrams")
    p.add_argument("--seed", type=int, default=16, help="everything follows from it")
    p.add_argument(
        "--valid-share",
        type=float,
        default=0.07,
        help="share of the MQTT messages that are valid, of known (device, t)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=200,
        help="registered fuzz devices (and a fifth as many for the valid traffic)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=4,
        help="MQTT 5 publishing connections (and one MQTT 3.1.1)",
    )
    p.add_argument("--coap-peers", type=int, default=16, help="UDP sockets sending CoAP")
    p.add_argument("--chunk", type=int, default=1000, help="messages made and judged at once")
    p.add_argument(
        "--max-backlog",
        type=int,
        default=50_000,
        help="messages published and not yet counted by the gateway, at most",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=3600.0,
        help="stop sending after this long, whatever is left",
    )
    p.add_argument(
        "--settle-s",
        type=float,
        default=300.0,
        help="wait at most this long for the gateway to take everything in",
    )
    return p


def _positive(args: argparse.Namespace) -> str | None:
    if args.messages < 1 or args.coap < 1:
        return "--messages and --coap must be at least 1"
    return None


def main(argv: list[str] | None = None) -> None:
    run_benchmark(bench, build_parser(), argv, check=_positive, passed=lambda r: r["ok"])


if __name__ == "__main__":
    main()
