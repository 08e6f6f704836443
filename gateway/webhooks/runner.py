"""One webhook delivery worker per deployment: the process holding the webhook lease (a
PostgreSQL advisory lock on a session of its own, as gateway/dispatcher_lease.py for commands)
runs it; the others stand by and take over within check_s when it goes. A worker that fails is
logged, said by readiness (`webhooks`) until a new one has made progress, and started again."""

from __future__ import annotations

import asyncio
import logging

from gateway.dispatcher_lease import DispatcherLease
from gateway.webhooks.metrics import WebhookMetrics
from gateway.webhooks.worker import WebhookConfig, WebhookWorker
from telemetry.store import TelemetryStore

log = logging.getLogger(__name__)

LOCK_KEY = int.from_bytes(b"fg-hooks", "big")
RESTART_AFTER_S = 5.0


class WebhookRunner:
    def __init__(
        self,
        dsn: str,
        store: TelemetryStore,
        config: WebhookConfig,
        metrics: WebhookMetrics,
        *,
        check_s: float = 2.0,
    ) -> None:
        self.lease = DispatcherLease(dsn, check_s=check_s, lock_key=LOCK_KEY, name="webhooks")
        self._store = store
        self._config = config
        self._metrics = metrics
        self.worker: WebhookWorker | None = None
        self.failure: str | None = None  # why the last worker ended, until a new one progresses

    async def run(self) -> None:
        """Until cancelled: hold the lease when free, run the worker while it is held."""
        try:
            while True:
                if await self.lease.try_acquire():
                    log.info("webhook_worker_started")
                    await self._run_while_held()
                    await self.lease.release()
                    if self.failure is not None:
                        await asyncio.sleep(RESTART_AFTER_S)
                        continue
                await asyncio.sleep(self.lease.check_s)
        finally:
            await self.lease.release()
            self._metrics.worker_active.set(0)

    async def _run_while_held(self) -> None:
        worker = self.worker = WebhookWorker(self._store, self._config, self._metrics)
        self._metrics.worker_active.set(1)
        task = asyncio.create_task(worker.run(), name="webhook-worker")
        try:
            while self.lease.held and not task.done():
                await asyncio.wait({task}, timeout=self.lease.check_s)
                if self.failure is not None and worker.turns > 0:
                    self.failure = None  # the new worker works
            if task.done():
                error = task.exception()
                self.failure = f"the webhook worker ended: {type(error).__name__}: {error}"[:300]
                log.critical("webhook_worker_failed", exc_info=error)
            else:
                log.warning("webhook_worker_stopped", extra={"reason": "the lease was lost"})
        finally:
            task.cancel()
            # The worker's own end, not ours: a cancellation of this task while it waits must
            # go on (suppressing CancelledError here would swallow it).
            await asyncio.gather(task, return_exceptions=True)
            self._metrics.worker_active.set(0)
            self.worker = None

    async def check(self) -> str | None:
        """Readiness: None unless the worker failed and no new one has made progress since."""
        return self.failure
