"""Log output: plain text for people, or one JSON object per line for log collectors.

Access lines and auth events carry structured ``fields`` (``extra={"fields": {...}}``); the text
format shows the message, the JSON format shows the message and the fields. Nothing logged anywhere
in authproxy carries a token, a code, a cookie value or a secret: log the ``sub`` and the request id.

Log lines carry text clients choose (paths, methods, header values, a provider's ``sub``), so both
formats escape what could forge a line or fool a reader (``escape_controls``): C0 and C1 control
characters (``%0a``, ``%0d``, ``%00`` in a path), DEL, Unicode line separators and bidirectional
overrides become ``\\xNN``/``\\uNNNN``, and ``\\`` becomes ``\\\\`` so an escape is never ambiguous. It happens
in the formatters, once for every logger, so no call site can forget it. A traceback keeps its line
breaks but each of its lines starts with ``  | ``, so no line of it reads as a log record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .config import LoggingConfig


# C0 and C1 controls, DEL, line/paragraph separators, bidirectional marks and overrides, and "\\".
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Before every line of a traceback in the text format.
_TRACEBACK_MARGIN = "  | "


def escape_controls(text: str) -> str:
    """``text`` with every character that could forge or disguise a log line escaped (``\\n`` → ``\\x0a``)."""
    if not _UNSAFE.search(text):
        return text
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` with the message escaped, and tracebacks set off by a margin."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        lines = super().formatException(ei).split("\n")
        return "\n".join(_TRACEBACK_MARGIN + escape_controls(line) for line in lines)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update({name: escape_controls(value) if isinstance(value, str) else value
                          for name, value in fields.items()})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's own access log is replaced by ours (one line per request, without query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


class MalformedRequests(logging.Filter):
    """aiohttp logs each malformed request it refuses (a head too long, a bad request line) at ERROR with a
    15-line traceback: junk sent in a loop would fill the log with them (the soak's hostile burst did).
    Such a record becomes one INFO line naming the error, without its text (the client's bytes)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        record.msg = f"{record.getMessage()}: refused a malformed request ({type(exc).__name__}, {exc.code})"
        record.args, record.exc_info, record.exc_text = (), None, None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger().isEnabledFor(logging.INFO)
