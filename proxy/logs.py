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

import asyncio
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from .config import LoggingConfig


# C0 and C1 controls, DEL, line/paragraph separators, bidirectional marks and overrides, and "\\".
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Before every line of a traceback in the text format.
_TRACEBACK_MARGIN = "  | "


def escape_controls(text: str) -> str:
    """``text`` with every character that could forge or disguise a log line escaped (``\\n`` → ``\\x0a``).

    Every character ``_UNSAFE`` matches but ``\\`` is unprintable (C0/C1 controls are category Cc, the
    separators Zl/Zp, the marks and overrides Cf), so a printable text without a backslash is returned as it is
    without running the regex: most lines, and a third cheaper than a search."""
    if (text.isprintable() and "\\" not in text) or not _UNSAFE.search(text):
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


# -- the access log's own writer -----------------------------------------------------------------------

# Seconds an access line may wait in memory before it is written: a batch per interval instead of a write
# (and a lock, a LogRecord, a formatter pass) per request. The writing thread wakes at most once per
# interval (or per FLUSH_BYTES), never per line.
FLUSH_INTERVAL = 0.05
# Bytes of lines beyond which the batch goes to the thread at once, without waiting for the timer: a burst
# writes in pieces of this size instead of holding (and joining) one large batch.
FLUSH_BYTES = 64 << 10
# Bytes handed to the writing thread and not yet written beyond which the next batch is dropped (its lines
# counted), rather than letting a stalled stderr grow the process or block it. Checked per batch, not per line.
BUFFER_LIMIT = 4 << 20
# json.dumps(entry, default=str) without building an encoder per call (dumps does, given any option).
_JSON = json.JSONEncoder(default=str)
_ACCESS_MESSAGE = "%s %s %d %sms user=%s rid=%s%s"
# A request's duration in milliseconds with one decimal, for durations under 100 ms (most): "0.0" … "99.9".
_TENTHS = tuple(f"{tenths // 10}.{tenths % 10}" for tenths in range(1000))
# Methods whose names need no escaping (a request line's method is otherwise checked with the rest).
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
_wall = time.time                      # one global lookup per line, not two
# A request's line is counted towards FLUSH_BYTES before it is made: its path, user, request id and suffix,
# plus this for the rest of a text line (time, level, logger, method, status, duration). An estimate: escaping
# (up to 6 bytes a character) and the JSON format (path and user twice, the other fields) make some lines a few
# times longer, so a batch held in memory is FLUSH_BYTES of estimate — a few hundred KiB at worst, not more.
_LINE_SIZE = 70


def duration_text(elapsed: float) -> str:
    """``elapsed`` seconds as milliseconds with one decimal, rounded half up (as far as the float's binary value
    says: 0.00015 s is a hair under 0.15 ms, so "0.1"): ``0.000412`` → ``"0.4"``. A table below 100 ms;
    formatting a float is a fifth of an access line's cost."""
    tenths = int(elapsed * 10000 + 0.5)
    return _TENTHS[tenths] if 0 <= tenths < 1000 else f"{elapsed * 1000:.1f}"


class AccessLog:
    """``authproxy.access``: the stdlib logger, or — in a serving process, once ``start_writer`` ran —
    an ``AccessWriter`` that formats lines itself and writes them in batches.

    Logging one line through the stdlib costs a LogRecord, a handler lock, a formatter pass and a
    flushed write per request: measured at about a fifth of a tiny proxied GET's throughput. ``request``
    takes a request's line as its parts, so the writer builds the text line without the fields' dict (which
    only the JSON format shows) and the stdlib path gets the same message and ``fields`` as before. In-process
    tests, with no writer, log through the stdlib.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("authproxy.access")
        self.writer: AccessWriter | None = None

    def isEnabledFor(self, level: int) -> bool:          # logging.Logger's name and meaning
        return self.writer is not None or self.logger.isEnabledFor(level)

    def info(self, msg: str, *args: object, extra: dict[str, Any] | None = None) -> None:
        writer = self.writer
        if writer is None:
            self.logger.info(msg, *args, extra=extra)
        else:
            writer.write(msg % args if args else msg, (extra or {}).get("fields"))

    def request(self, method: str, path: str, status: int, elapsed: float, user: str, rid: str,
                client: str | None, upstream: str, suffix: str = "", fields: dict[str, object] | None = None,
                trace: str | None = None) -> None:
        """A request's line: ``GET /path 200 0.4ms user=sub rid=id`` + ``suffix`` (+ `` trace=id``), and in
        JSON the fields event, request_id, client, user, method, path, status, upstream, duration_ms, then
        ``fields`` and trace_id. The caller checks ``isEnabledFor(INFO)`` first."""
        writer = self.writer
        if writer is not None:
            writer.request(method, path, status, elapsed, user, rid, client, upstream, suffix, fields, trace)
            return
        if trace is not None:
            suffix, fields = f"{suffix} trace={trace}", {**(fields or {}), "trace_id": trace}
        self.logger.info(_ACCESS_MESSAGE, method, path, status, duration_text(elapsed), user, rid, suffix,
                         extra={"fields": {"event": "request", "request_id": rid, "client": client, "user": user,
                                           "method": method, "path": path, "status": status, "upstream": upstream,
                                           "duration_ms": round(elapsed * 1000, 2), **(fields or {})}})

    def start_writer(self, config: LoggingConfig) -> None:
        """Write access lines with an AccessWriter to stderr (when ``config``'s level logs them at all)."""
        self.stop_writer()
        if self.logger.isEnabledFor(logging.INFO):
            self.writer = AccessWriter(config.format, sys.stderr.fileno())

    def stop_writer(self) -> None:
        """Write what is waiting and stop the writer (shutdown, reload); lines go to the stdlib again."""
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()


class AccessWriter:
    """Access lines formatted without the logging machinery, written by a thread of their own in batches.

    The event loop only appends a line (a request's as its parts); every FLUSH_INTERVAL (or once FLUSH_BYTES
    wait) the batch is made into text and goes to a thread that writes it to ``fd`` — so a slow or stalled
    stderr (a full pipe to a log collector) blocks that thread, never the loop. Beyond BUFFER_LIMIT bytes
    waiting, batches are dropped, their lines counted, and the count is logged as a warning once lines can be
    written again. ``close`` (shutdown, and the reload that replaces the writer) writes every line still
    waiting before it returns.
    """

    def __init__(self, fmt: str, fd: int) -> None:
        self._json = fmt == "json"
        self._fd = fd
        # Lines, or a request's line as its parts (``request``): made into text, in order, by ``flush``.
        self._lines: list[str | tuple[Any, ...]] = []
        self._size = 0
        self._handed = self._written = 0          # bytes given to the thread / written by it (one writer each)
        self.dropped = 0
        self.unmade = 0                           # request lines whose parts could not be made into text
        self._unmade_error = ""
        self._flush: asyncio.TimerHandle | None = None
        self._second = self._ms = -1
        self._stamp = self._prefix = ""
        # The path and user of the last text line found clean (``_request_line``): equal ones need no check.
        self._clean_path: str | None = None
        self._clean_user: str | None = None
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="authproxy-access-log", daemon=True)
        self._thread.start()

    def write(self, message: str, fields: dict[str, Any] | None) -> None:
        """A line from ``message`` (escaped here) and, in JSON, ``fields`` (their strings escaped here)."""
        if not self._json:
            self._append(f"{self._time(',')} INFO authproxy.access: {escape_controls(message)}")
            return
        entry: dict[str, Any] = {"time": self._time("."), "level": "info", "logger": "authproxy.access",
                                 "message": escape_controls(message)}
        if fields:
            entry.update({name: escape_controls(value) if isinstance(value, str) else value
                          for name, value in fields.items()})
        self._append(_JSON.encode(entry))

    def request(self, method: str, path: str, status: int, elapsed: float, user: str, rid: str,
                client: str | None, upstream: str, suffix: str, fields: dict[str, object] | None,
                trace: str | None) -> None:
        """``AccessLog.request``'s line, kept as its parts: the text is made when the batch is written.

        Measured (issue 15): a line made per request cost two to three times in the server what it costs made
        in a loop over the batch, where the formatting code and its data stay in the CPU's caches — the per
        request part is now a tuple and an append. The parts are the caller's values, kept until the next flush
        (a ``fields`` dict must not change after the call; none of the callers keeps one)."""
        self._lines.append((_wall(), method, path, status, elapsed, user, rid, client, upstream, suffix, fields,
                            trace))
        self._size += len(path) + len(user) + len(rid) + len(suffix) + _LINE_SIZE
        if self._size >= FLUSH_BYTES or self._flush is None:
            self._schedule()

    def _request_line(self, now: float, method: str, path: str, status: int, elapsed: float, user: str,
                      rid: str, client: str | None, upstream: str, suffix: str, fields: dict[str, object] | None,
                      trace: str | None) -> str:
        """A request's line from its parts (``flush``): one f-string in the text format, the time's prefix made
        once a millisecond, the duration from a table.

        Escaping, text format: the message is checked (``escape_controls``) unless its path and user equal those
        last found clean — clients send the same paths again and a session keeps its identity, so the check
        runs when either changes, not per line (``!=`` is a pointer compare for the same object, a memcmp for
        an equal one: each connection's kept parse has a path of its own). The rest of the message is
        the method (a name from _METHODS, else checked), the status, the duration, the request id (ours or a
        client's that matched ``boundary._REQUEST_ID_OK``: letters, digits, ``._:-``) and a suffix (checked
        when there is one)."""
        if trace is not None:
            suffix = f"{suffix} trace={trace}"
        if self._json:
            return self._json_line(now, method, path, status, elapsed, user, rid, client, upstream, suffix,
                                   fields, trace)
        ms = int(now * 1000)
        if ms != self._ms:
            self._new_millisecond(ms)
        line = f"{self._prefix}{method} {path} {status} {duration_text(elapsed)}ms user={user} rid={rid}{suffix}"
        if path != self._clean_path or user != self._clean_user or method not in _METHODS or suffix:
            prefix = self._prefix
            message = line[len(prefix):]
            escaped = escape_controls(message)
            if escaped is message:                  # clean as it was: so are its path and user
                self._clean_path, self._clean_user = path, user
            else:
                line = prefix + escaped
        return line

    def _json_line(self, now: float, method: str, path: str, status: int, elapsed: float, user: str, rid: str,
                   client: str | None, upstream: str, suffix: str, fields: dict[str, object] | None,
                   trace: str | None) -> str:
        esc = escape_controls
        entry: dict[str, Any] = {
            "time": self._time(".", now), "level": "info", "logger": "authproxy.access",
            "message": esc(f"{method} {path} {status} {duration_text(elapsed)}ms user={user} rid={rid}{suffix}"),
            "event": "request", "request_id": esc(rid), "client": esc(client) if client is not None else None,
            "user": esc(user), "method": esc(method), "path": esc(path), "status": status, "upstream": esc(upstream),
            "duration_ms": round(elapsed * 1000, 2)}
        if fields:
            entry.update({name: esc(value) if isinstance(value, str) else value for name, value in fields.items()})
        if trace is not None:
            entry["trace_id"] = esc(trace)
        return _JSON.encode(entry)

    def _time(self, point: str, now: float | None = None) -> str:
        """``now`` (else now) as the formatters write it: local ``2026-12-05 10:00:00,123`` (text), UTC
        ``…T10:00:00.123Z`` (JSON)."""
        ms = int((_wall() if now is None else now) * 1000)
        if ms // 1000 != self._second:
            self._new_second(ms // 1000)
        return f"{self._stamp}{point}{ms % 1000:03d}Z" if self._json else f"{self._stamp}{point}{ms % 1000:03d}"

    def _new_millisecond(self, ms: int) -> None:
        """The text line's start up to its message, made once a millisecond (a busy worker writes several lines
        in one)."""
        self._ms = ms
        if ms // 1000 != self._second:
            self._new_second(ms // 1000)
        self._prefix = f"{self._stamp},{ms % 1000:03d} INFO authproxy.access: "

    def _new_second(self, second: int) -> None:
        """The time up to the second, made once a second (``strftime`` is most of a timestamp's cost)."""
        self._second = second
        self._stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) if self._json else
                       time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))

    def _append(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1              # and its end
        if self._size >= FLUSH_BYTES or self._flush is None:
            self._schedule()

    def _schedule(self) -> None:
        """A full batch goes to the thread now; else the timer will send it, FLUSH_INTERVAL from now."""
        if self._size >= FLUSH_BYTES:
            self.flush()
            return
        try:
            self._flush = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)
        except RuntimeError:                    # no loop (a line logged at shutdown): write it now
            self.flush()

    def flush(self) -> None:
        """Hand what is waiting to the writing thread (the timer calls this; so do ``close`` and a full batch)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.dropped and self._handed == self._written:
            logging.getLogger("authproxy").warning("%d access-log lines dropped: stderr did not keep up",
                                                   self.dropped)
            self.dropped = 0
        if not self._lines:
            return
        entries, self._lines, self._size = self._lines, [], 0
        if self._handed - self._written > BUFFER_LIMIT:    # the thread is that far behind: drop the batch
            self.dropped += len(entries)
            return
        lines: list[str] = []
        made = self._request_line
        for entry in entries:
            if isinstance(entry, str):
                lines.append(entry)
                continue
            try:
                lines.append(made(*entry))
            except Exception as exc:              # a caller's bug (a value of the wrong type): that line only
                self.unmade += 1
                self._unmade_error = type(exc).__name__
        if self.unmade:
            logging.getLogger("authproxy").error("%d access-log lines could not be written (%s)", self.unmade,
                                                 self._unmade_error)
            self.unmade = 0
        lines.append("")                         # lines are kept without their ends: one join puts them in
        data = "\n".join(lines).encode("utf-8", "backslashreplace")
        self._handed += len(data)
        self._queue.put(data)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is waiting (for up to ``timeout`` seconds) and stop the thread."""
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:
                pass                              # stderr gone: nothing else to tell
            self._written += len(data)


ACCESS_LOG = AccessLog()
