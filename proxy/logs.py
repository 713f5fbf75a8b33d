"""Log output: plain text for people, or one JSON object per line for log collectors.

Access lines and auth events carry structured ``fields`` (``extra={"fields": {...}}``); the text
format shows the message, the JSON format shows the message and the fields. Nothing logged anywhere
in authproxy carries a token, a code, a cookie value or a secret: log the ``sub`` and the request id.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from .config import LoggingConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(config: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    # aiohttp's own access log is replaced by ours (one line per request, without query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
