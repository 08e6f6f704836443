"""The one logging setup: JSON lines (or plain text) with a stable `event` name per record.

The rooms log with the standard library alone: `log.info("batch_committed", extra={"rows": n})`.
The message is the event name and never carries data; the `extra` keys are the record's fields,
so operators can alert on the name and filter on the fields.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

# What every LogRecord has; anything else on a record came in through `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
# Extras that libraries add for their own formatters (uvicorn's coloured copy of the message).
_FOREIGN_EXTRAS = frozenset({"color_message"})


def record_fields(record: logging.LogRecord) -> dict:
    """The fields a call site passed with `extra=`."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RECORD_ATTRIBUTES and k not in _FOREIGN_EXTRAS and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(record_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
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
