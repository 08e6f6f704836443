"""How a long-running command stops on SIGTERM/SIGINT: the first signal starts the graceful stop;
a second signal, or the grace period running out, ends the process at once.

A forced exit is as safe as a crash (nothing is acknowledged before it is durable: the broker
sends again what was not), so it may skip whatever the graceful stop still waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

FORCED_EXIT_STATUS = 1


class StopSignals:
    """SIGTERM and SIGINT handlers for the running event loop (install() from inside it).

    Args:
        stop: starts the graceful stop (called once, on the first signal).
        grace_s: how long the graceful stop may take before the process exits anyway;
            None: as long as it takes (a second signal still forces the exit).
        on_forced_exit: last words before a forced exit (e.g. stop the embedded broker); it
            must not block for long.
    """

    def __init__(
        self,
        stop: Callable[[], None],
        grace_s: float | None = None,
        on_forced_exit: Callable[[], None] | None = None,
    ) -> None:
        self._stop = stop
        self.grace_s = grace_s
        self._on_forced_exit = on_forced_exit
        self.stopping = False

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._signalled, sig)

    def _signalled(self, sig: signal.Signals) -> None:
        if self.stopping:
            self.force_exit(f"second {sig.name} during the graceful stop")
            return
        self.stopping = True
        log.info("shutdown_started", extra={"signal": sig.name, "grace_s": self.grace_s})
        if self.grace_s is not None:
            asyncio.get_running_loop().call_later(
                self.grace_s,
                self.force_exit,
                f"the graceful stop took longer than "
                f"{self.grace_s:g} s (FLEETGATE_SHUTDOWN_GRACE_S)",
            )
        self._stop()

    def force_exit(self, reason: str) -> None:
        """End the process now: no awaiting, no cleanup but on_forced_exit, exit status 1.

        os._exit, because an exception or a cancellation would run through every `finally` of
        the graceful stop, which is exactly what may hang (a commit to an unreachable database).
        """
        log.warning("shutdown_forced", extra={"reason": reason, "exit_status": FORCED_EXIT_STATUS})
        if self._on_forced_exit is not None:
            try:
                self._on_forced_exit()
            except Exception:
                log.exception("shutdown_cleanup_failed")
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(FORCED_EXIT_STATUS)
