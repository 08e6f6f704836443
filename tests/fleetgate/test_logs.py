"""The one logging setup: rooms log with the standard library, the roof's formatters turn the
record's `extra` into fields."""

from __future__ import annotations

import logging

import orjson

from fleetgate.logs import JsonFormatter, TextFormatter


def record(**extra) -> logging.LogRecord:
    logger = logging.getLogger("gateway.pipeline")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "batch_failed", (), None, extra=extra
    )


def test_the_json_line_has_the_event_name_and_every_extra_field():
    line = orjson.loads(JsonFormatter().format(record(messages=3, error="boom")))
    assert line["event"] == "batch_failed" and line["logger"] == "gateway.pipeline"
    assert line["messages"] == 3 and line["error"] == "boom" and line["level"] == "warning"


def test_what_a_library_adds_for_its_own_formatter_is_left_out():
    line = orjson.loads(JsonFormatter().format(record(color_message="\x1b[1mhi", port=8080)))
    assert "color_message" not in line and line["port"] == 8080


def test_the_text_line_shows_the_fields_after_the_event():
    text = TextFormatter().format(record(messages=3))
    assert text.endswith("gateway.pipeline: batch_failed messages=3")
