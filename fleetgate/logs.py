"""The one logging setup: JSON lines (or plain text) with a stable `event` name per record.

Call sites log `log.info("batch_committed", extra={"fields": {...}})`; the event name is the
message and never carries data, so operators can alert on it.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} "
            f"{record.name}: {record.getMessage()} {extra}".rstrip()
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The pool warns on every reconnect attempt during an outage; the gateway already reports
    # the outage once per retry as database_unavailable (and in fleetgate_database_up).
    logging.getLogger("psycopg.pool").setLevel(max(logging.ERROR, root.level))


def fields(**kw) -> dict:
    """`extra=` argument carrying structured fields: log.info("event", extra=fields(a=1))."""
    return {"fields": kw}
