"""The JSON log format: one object per line, with the structured fields of access lines and auth events."""

import json
import logging

from proxy.config import LoggingConfig
from proxy.logs import JsonFormatter, configure_logging


def record(message: str, **fields) -> logging.LogRecord:
    rec = logging.LogRecord("authproxy.access", logging.INFO, __file__, 1, message, None, None)
    if fields:
        rec.fields = fields
    return rec


def test_json_line_has_time_level_logger_message_and_fields():
    line = JsonFormatter().format(record("GET /x 200", event="request", request_id="r1", status=200, user="alice"))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "GET /x 200" and entry["level"] == "info" and entry["logger"] == "authproxy.access"
    assert entry["event"] == "request" and entry["request_id"] == "r1" and entry["status"] == 200
    assert entry["time"].endswith("Z")


def test_exceptions_stay_on_one_json_line():
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "ValueError" in json.loads(line)["exception"]


def test_configure_logging_picks_the_format_and_level():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging(LoggingConfig(level="warning", format="json"))
        assert isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.WARNING
        configure_logging(LoggingConfig(level="debug", format="text"))
        assert not isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.DEBUG
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
