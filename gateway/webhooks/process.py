"""The delivery worker in an OS process of its own, so that ingestion never pays for delivering.

`fleetgate run` starts `fleetgate webhooks worker --supervised` as its child (WebhookProcess,
below): the child holds the webhook lease and delivers (serve_worker: the same WebhookRunner as
before, now alone in its process); the gateway process only commits the events. The child writes
a report line on its stdout every REPORT_S (whether it holds the lease, its database turns, why
its worker last failed, its metrics); the gateway mirrors the metrics on its operator's port and
says by readiness (`webhooks`) when the child exited, went silent or its worker failed. A child
that exits is logged (`webhook_process_exited`) and started again after RESTART_AFTER_S;
readiness recovers once the new one works. The child ends when its stdin closes: when the
gateway stops, and also when the gateway is killed (the pipe closes with it), so a child never
outlives its gateway for long (docs/webhooks.md, "The delivery worker").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence

import orjson
from prometheus_client import CollectorRegistry

from gateway.webhooks.metrics import WebhookMetrics
from gateway.webhooks.runner import WebhookRunner
from gateway.webhooks.worker import WebhookConfig

log = logging.getLogger(__name__)

REPORT_S = 0.5  # how often the child reports
SILENT_AFTER_S = 10.0  # no report for this long: readiness fails (the child hangs)
RESTART_AFTER_S = 2.0  # a child that exited is started again after this
STOP_WAIT_S = 10.0  # on stop: how long the child may take to release the lease and end
_OUTCOMES = ("delivered", "failed", "dead_lettered", "gone")


# --- the child ---------------------------------------------------------------------------------


async def serve_worker(
    dsn: str, config: WebhookConfig, *, supervised: bool, check_s: float = 2.0
) -> None:
    """The worker process: the lease and the worker (WebhookRunner) until cancelled, or, when
    supervised, until stdin closes; then it releases the lease and returns. Supervised, it
    reports on stdout every REPORT_S."""
    from telemetry.store import TelemetryStore

    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry)
    store = await TelemetryStore.open(dsn, pool_max=4)
    runner = WebhookRunner(dsn, store, config, metrics, check_s=check_s)
    running = asyncio.create_task(runner.run(), name="webhooks")
    waits = {running}
    if supervised:
        # Ctrl-C in a terminal reaches the whole process group: the gateway decides when we end.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        waits.add(asyncio.create_task(_until_stdin_closes(), name="stdin"))
        waits.add(asyncio.create_task(_report(runner, registry), name="report"))
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # the runner does not end by itself: if it did, say why
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await store.close()


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


async def _report(runner: WebhookRunner, registry: CollectorRegistry) -> None:
    out = sys.stdout.buffer

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    while True:
        worker = runner.worker
        line = {
            "held": runner.lease.held,
            "turns": worker.turns if worker is not None else 0,
            "failure": runner.failure,
            "deliveries": {
                o: value("fleetgate_webhook_deliveries_total", outcome=o) for o in _OUTCOMES
            },
            "lag_seconds": value("fleetgate_webhook_lag_seconds"),
            "dead_letters": value("fleetgate_webhook_dead_letters"),
            "active": value("fleetgate_webhook_worker_active"),
        }
        out.write(orjson.dumps(line) + b"\n")
        out.flush()
        await asyncio.sleep(REPORT_S)


# --- the gateway's side ------------------------------------------------------------------------


class WebhookProcess:
    """Runs the worker's command as a child process until cancelled, starting it again when it
    exits; its reports drive readiness (check) and the gateway's webhook metrics."""

    def __init__(
        self,
        command: Sequence[str],
        metrics: WebhookMetrics,
        *,
        env: dict[str, str] | None = None,
        restart_after_s: float = RESTART_AFTER_S,
    ) -> None:
        self.command = list(command)
        self._metrics = metrics
        self._env = env
        self._restart_after_s = restart_after_s
        self.proc: asyncio.subprocess.Process | None = None
        self.failure: str | None = "the webhook worker process has not reported yet"
        self.starts = 0
        self._last_report = 0.0
        self._counted: dict[str, float] = {}

    async def run(self) -> None:
        try:
            while True:
                code = await self._run_one()
                self.failure = f"the webhook worker process exited with {code}; restarting"
                log.critical("webhook_process_exited", extra={"returncode": code})
                self._metrics.worker_active.set(0)
                await asyncio.sleep(self._restart_after_s)
        finally:
            await self._stop_child()
            self._metrics.worker_active.set(0)

    async def _run_one(self) -> int:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self._env,
        )
        self.starts += 1
        self._counted = {}
        self._last_report = time.monotonic()
        log.info("webhook_process_started", extra={"pid": self.proc.pid})
        while line := await self.proc.stdout.readline():
            self._take(line)
        return await self.proc.wait()

    def _take(self, line: bytes) -> None:
        try:
            report = orjson.loads(line)
            deliveries = {o: float(report["deliveries"][o]) for o in _OUTCOMES}
            gauges = [float(report[k]) for k in ("lag_seconds", "dead_letters", "active")]
            held, turns, failure = bool(report["held"]), int(report["turns"]), report["failure"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            # Not a report (something else wrote to its stdout): said, not taken for one.
            log.warning("webhook_process_said", extra={"line": line[:300].decode(errors="replace")})
            return
        self._last_report = time.monotonic()
        m = self._metrics
        for outcome, value in deliveries.items():
            delta = value - self._counted.get(outcome, 0.0)
            if delta > 0:
                m.deliveries.labels(outcome=outcome).inc(delta)
            self._counted[outcome] = value
        m.lag_seconds.set(gauges[0])
        m.dead_letters.set(gauges[1])
        m.worker_active.set(gauges[2])
        if failure is not None:
            self.failure = str(failure)
        elif not held or turns > 0:
            self.failure = None  # standing by, or working

    async def check(self) -> str | None:
        """Readiness: None while the child reports and its worker (if it holds the lease) works."""
        if self.failure is None and time.monotonic() - self._last_report > SILENT_AFTER_S:
            return f"the webhook worker process has not reported for {SILENT_AFTER_S:g} s"
        return self.failure

    async def _stop_child(self) -> None:
        """Close its stdin (it releases the lease and ends), kill it if it takes too long."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
        except BaseException:  # too slow, or we are cancelled while waiting: no orphan
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            if not isinstance(sys.exception(), TimeoutError):
                raise
            await proc.wait()
