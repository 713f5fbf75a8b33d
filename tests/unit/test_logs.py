"""The log formats: JSON (one object per line, with the structured fields of access lines and auth events) and
text; in both, nothing a client sends can forge a line."""

import asyncio
import json
import logging
import os
import re
import sys
import time

import pytest

from proxy import logs
from proxy.config import LoggingConfig
from proxy.logs import (AccessLog, AccessWriter, JsonFormatter, TextFormatter, configure_logging, duration_text,
                        escape_controls)


def record(message: str, **fields) -> logging.LogRecord:
    rec = logging.LogRecord("authproxy.access", logging.INFO, __file__, 1, message, None, None)
    if fields:
        rec.fields = fields
    return rec


def failed_record(error: Exception) -> logging.LogRecord:
    """A "failed" record carrying ``error`` with its traceback, as ``log.exception`` makes one."""
    try:
        raise error
    except type(error):
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    return rec


def test_json_line_has_time_level_logger_message_and_fields():
    line = JsonFormatter().format(record("GET /x 200", event="request", request_id="r1", status=200, user="alice"))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["message"] == "GET /x 200" and entry["level"] == "info" and entry["logger"] == "authproxy.access"
    assert entry["event"] == "request" and entry["request_id"] == "r1" and entry["status"] == 200
    assert entry["time"].endswith("Z")


def test_exceptions_stay_on_one_json_line():
    rec = failed_record(ValueError("boom\nsecond line"))
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


# What a client can put in a path, a method, a header or a claim: "%0a", "%0d", "%00" decoded, ANSI escapes,
# C1 NEL, Unicode line separators, a right-to-left override.
HOSTILE = "/a\n2026-01-01 00:00:00 INFO authproxy.access: GET /admin 200\r\x00\x1b[31m\x85\u2028\u202e\\x0a"
ESCAPED = ("/a\\x0a2026-01-01 00:00:00 INFO authproxy.access: GET /admin 200\\x0d\\x00\\x1b[31m\\x85\\u2028"
           "\\u202e\\\\x0a")


def test_escape_controls():
    assert escape_controls(HOSTILE) == ESCAPED
    assert escape_controls("/caf\u00e9 ok") == "/caf\u00e9 ok"          # printable non-ASCII stays readable


def hostile_record() -> logging.LogRecord:
    rec = logging.LogRecord("authproxy.access", logging.INFO, __file__, 1, "%s %s %d user=%s", ("GET", HOSTILE, 400,
                            "mallory\nforged"), None)
    rec.fields = {"path": HOSTILE, "user": "mallory\nforged", "status": 400}
    return rec


def test_text_lines_cannot_be_forged():
    line = TextFormatter().format(hostile_record())
    assert line.count("\n") == 0 and "\r" not in line and "\x00" not in line and "\x1b" not in line
    assert line.endswith(f"authproxy.access: GET {ESCAPED} 400 user=mallory\\x0aforged")


def test_json_fields_are_escaped_too():
    line = JsonFormatter().format(hostile_record())
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["path"] == ESCAPED and entry["user"] == "mallory\\x0aforged" and entry["status"] == 400
    assert entry["message"] == f"GET {ESCAPED} 400 user=mallory\\x0aforged"


def test_text_tracebacks_are_set_off_and_escaped():
    rec = failed_record(ValueError("boom\n2026-01-01 00:00:00 INFO authproxy.access: forged\rline"))
    text = TextFormatter().format(rec)
    first, *rest = text.split("\n")
    assert first.endswith("authproxy.access: failed") and rest
    assert all(line.startswith("  | ") for line in rest) and "\r" not in text


@pytest.mark.parametrize("level,shown", [("info", True), ("warning", False)])
def test_a_malformed_request_is_one_line_without_a_traceback_or_its_bytes(level, shown):
    """The soak's hostile burst: each oversized header left aiohttp's 15-line traceback at ERROR, with the
    client's bytes in it. Now one INFO line naming the error (none at all above info)."""
    from aiohttp.http_exceptions import LineTooLong

    root, server = logging.getLogger(), logging.getLogger("aiohttp.server")
    saved = root.handlers[:], root.level
    seen: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = seen.append                                    # type: ignore[method-assign]
    server.addHandler(catcher)
    try:
        configure_logging(LoggingConfig(level=level))
        try:
            raise LineTooLong("h" * 200, "65536")
        except LineTooLong:
            server.exception("Error handling request from %s", "192.0.2.7")
        server.error("something else", exc_info=ValueError("kept"))
    finally:
        server.removeHandler(catcher)
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    malformed = [r for r in seen if "192.0.2.7" in r.getMessage()]
    assert len(malformed) == int(shown)
    if shown:
        (record,) = malformed
        assert record.levelno == logging.INFO and record.exc_info is None
        assert "LineTooLong" in record.getMessage() and "hhhh" not in record.getMessage()
    assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in seen)     # others keep theirs
# -- the access log's own writer -----------------------------------------------------------------------

ACCESS_FIELDS = {"event": "request", "request_id": "r1", "client": "127.0.0.1", "user": "alice", "method": "GET",
                 "path": HOSTILE, "status": 200, "upstream": "/", "duration_ms": 1.25}
TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@pytest.fixture
def pipe():
    """The read end of a pipe, and its write end as the writer's fd; both closed afterwards."""
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        try:
            os.close(fd)
        except OSError:
            pass


def read_lines(fd: int) -> list[str]:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20).decode().splitlines()
    except BlockingIOError:
        return []


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_the_writer_writes_the_formatters_line(pipe, fmt):
    """Byte for byte the line the stdlib formatter makes of the same record, timestamp aside."""
    message = f"GET {HOSTILE} 200 1.2ms user=alice rid=r1"
    writer = AccessWriter(fmt, pipe[1])
    writer.write(message, ACCESS_FIELDS)
    writer.close()
    [line] = read_lines(pipe[0])
    expected = (JsonFormatter() if fmt == "json" else TextFormatter()).format(record(message, **ACCESS_FIELDS))
    if fmt == "json":
        written, wanted = json.loads(line), json.loads(expected)
        assert written.pop("time")[:16] == wanted.pop("time")[:16] and written == wanted
    else:
        assert TIME.match(line) and TIME.sub("", line) == TIME.sub("", expected)
        assert "\\x0a" in line and "\n" not in line


REQUEST_LINES = [  # AccessLog.request's arguments after the request: client, upstream, suffix, fields, trace
    ("127.0.0.1", "/", "", {}, None),
    (None, "/api", " ws_close=1000 by=client", {"ws_close": 1000, "ws_closed_by": "client"},
     "0af7651916cd43dd8448eb211c80319c"),
]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("client, upstream, suffix, fields, trace", REQUEST_LINES)
async def test_a_request_line_from_its_parts_is_the_stdlib_line(pipe, caplog, fmt, client, upstream, suffix, fields,
                                                                trace):
    """``AccessLog.request`` builds the line itself on the writer's path: the same bytes (time aside) as the
    message and ``fields`` it gives the stdlib logger, through the formatter — hostile path and user escaped."""
    access = AccessLog()
    caplog.set_level(logging.INFO, logger="authproxy.access")
    parts = ("GET", HOSTILE, 200, 0.00125, "bob\x1b]0;", "r1", client, upstream, suffix, fields, trace)
    access.request(*parts)
    [rec] = [r for r in caplog.records if r.name == "authproxy.access"]
    access.writer = AccessWriter(fmt, pipe[1])
    access.request(*parts)
    access.stop_writer()
    [line] = read_lines(pipe[0])
    expected = (JsonFormatter() if fmt == "json" else TextFormatter()).format(rec)
    if fmt == "json":
        written, wanted = json.loads(line), json.loads(expected)
        assert written.pop("time")[:16] == wanted.pop("time")[:16] and written == wanted
        assert list(written) == list(wanted) and wanted["path"] == ESCAPED
        assert wanted.get("trace_id") == trace and line.endswith("}")
    else:
        assert TIME.match(line) and TIME.sub("", line) == TIME.sub("", expected)
        assert ESCAPED in line and "user=bob\\x1b]0;" in line
        assert line.endswith(suffix + (f" trace={trace}" if trace else ""))


@pytest.mark.parametrize("seconds, text", [
    (0.000412, "0.4"), (0.00005, "0.1"), (0.0000499, "0.0"), (0.00125, "1.3"), (0.0999, "99.9"),
    (0.09996, "100.0"), (0.12345, "123.5"), (3600.0, "3600000.0"), (0.0, "0.0"), (-0.01, "-10.0"),
    (-0.2, "-200.0")])
def test_a_duration_is_milliseconds_with_one_decimal_rounded_half_up(seconds, text):
    """From a table below 100 ms, computed above: the same rule either way, for both log paths."""
    assert duration_text(seconds) == text


async def test_a_line_is_checked_unless_its_path_and_user_equal_the_last_clean_ones(pipe):
    """The writer skips the escaping check only for a path and user equal to those it last found clean (the
    same objects or, from another connection, equal ones): anything else is checked, whichever part changed."""
    writer = AccessWriter("text", pipe[1])
    path, user = "/same", "alice"
    parts = [("GET", path, user, ""), ("GET", "".join(["/sa", "me"]), user, ""), ("GET", path, "eve\x1b[2J", ""),
             ("GET", path, user, ""), ("GET", HOSTILE, user, ""), ("GET", HOSTILE, user, ""),
             ("G\x1bT", path, user, ""), ("GET", path, user, " by=\u202eclient"), ("GET", "/back\\slash", user, "")]
    for method, p, u, suffix in parts:
        writer.request(method, p, 200, 0.001, u, "r1", None, "/", suffix, None, None)
    writer.close()
    lines = [line.split(": ", 1)[1] for line in read_lines(pipe[0])]
    assert lines == [
        "GET /same 200 1.0ms user=alice rid=r1", "GET /same 200 1.0ms user=alice rid=r1",
        "GET /same 200 1.0ms user=eve\\x1b[2J rid=r1", "GET /same 200 1.0ms user=alice rid=r1",
        f"GET {ESCAPED} 200 1.0ms user=alice rid=r1", f"GET {ESCAPED} 200 1.0ms user=alice rid=r1",
        "G\\x1bT /same 200 1.0ms user=alice rid=r1", "GET /same 200 1.0ms user=alice rid=r1 by=\\u202eclient",
        "GET /back\\\\slash 200 1.0ms user=alice rid=r1"]


async def test_the_time_is_made_once_a_millisecond_and_its_second_once_a_second(pipe, monkeypatch):
    """A busy worker writes several lines in a millisecond: they share one prefix; the next millisecond, and
    the next second, each get their own."""
    writer = AccessWriter("text", pipe[1])
    base = 1_800_000_000
    for now in (base + 0.0004, base + 0.0009, base + 0.0012, base + 0.9995, base + 1.0001):
        monkeypatch.setattr(logs, "_wall", lambda now=now: now)
        writer.request("GET", "/", 200, 0.001, "-", "r1", None, "/", "", None, None)
    writer.close()
    first, second = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(base + n)) for n in (0, 1))
    assert [line.split(" INFO ", 1)[0] for line in read_lines(pipe[0])] == [
        f"{first},000", f"{first},000", f"{first},001", f"{first},999", f"{second},000"]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_request_lines_made_at_the_flush_keep_their_order_and_their_own_time(pipe, monkeypatch, fmt):
    """A request's line is kept as its parts until the batch is written: it comes out where it was logged,
    between the lines written whole, with the time it was logged at, not the flush's."""
    writer = AccessWriter(fmt, pipe[1])
    monkeypatch.setattr(logs, "_wall", lambda: 1_800_000_000.25)
    writer.write("first", None)
    writer.request("GET", "/second", 200, 0.001, "-", "r2", None, "/", "", None, None)
    writer.write("third", None)
    monkeypatch.setattr(logs, "_wall", lambda: 1_800_000_007.5)
    writer.close()
    lines = read_lines(pipe[0])
    if fmt == "json":
        entries = [json.loads(line) for line in lines]
        assert [e["message"] for e in entries] == ["first", "GET /second 200 1.0ms user=- rid=r2", "third"]
        assert {e["time"] for e in entries} == {"2027-01-15T08:00:00.250Z"}
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_800_000_000)) + ",250 INFO authproxy.access: "
        assert lines == [stamp + "first", stamp + "GET /second 200 1.0ms user=- rid=r2", stamp + "third"]


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_a_line_that_cannot_be_made_costs_only_itself(pipe, caplog, fmt):
    """Lines are made at the flush: one whose parts a caller got wrong (here no number for
    a duration) is counted and reported, and every other line — that batch's and the next ones' — is written."""
    writer = AccessWriter(fmt, pipe[1])
    good = ("GET", "/ok", 200, 0.001, "alice", "r1", "127.0.0.1", "/", "", None, None)
    writer.request(*good)
    writer.request("GET", "/bad", 200, None, "alice", "r2", None, "/", "", None, None)
    writer.request(*good)
    writer.flush()
    writer.request(*good)
    writer.close()
    lines = read_lines(pipe[0])
    assert len(lines) == 3 and all("/ok" in line for line in lines) and not writer._thread.is_alive()
    assert "1 access-log lines could not be written (TypeError)" in caplog.text and writer.unmade == 0


async def test_a_full_batch_goes_to_the_writer_without_waiting_for_the_timer(pipe, monkeypatch):
    monkeypatch.setattr(logs, "FLUSH_INTERVAL", 60.0)
    monkeypatch.setattr(logs, "FLUSH_BYTES", 4096)
    writer = AccessWriter("text", pipe[1])
    for n in range(100):                               # ~60 bytes a line: a batch every ~68 lines
        writer.request("GET", f"/{n}", 200, 0.001, "-", f"r{n}", None, "/", "", None, None)
    for _ in range(100):
        if writer._written == writer._handed:
            break
        await asyncio.sleep(0.01)
    lines = read_lines(pipe[0])
    assert 0 < len(lines) < 100 and lines == [line for line in lines if " GET /" in line]
    assert writer._size < 4096
    writer.close()
    assert len(lines) + len(read_lines(pipe[0])) == 100


async def test_a_reload_writes_the_old_writers_lines_at_once(pipe, monkeypatch):
    """SIGHUP replaces the writer (server._reloaded → start_writer): what the old one held is written then."""
    monkeypatch.setattr(logs, "FLUSH_INTERVAL", 60.0)
    monkeypatch.setattr(logs.sys, "stderr", os.fdopen(os.dup(pipe[1]), "w"))
    access = AccessLog()
    monkeypatch.setattr(access.logger, "isEnabledFor", lambda level: True)
    access.start_writer(LoggingConfig(level="info"))
    access.request("GET", "/before", 200, 0.001, "-", "r1", None, "/", "", None, None)
    assert read_lines(pipe[0]) == []
    access.start_writer(LoggingConfig(level="info"))
    assert [line.split(": ", 1)[1] for line in read_lines(pipe[0])] == ["GET /before 200 1.0ms user=- rid=r1"]
    access.stop_writer()
    logs.sys.stderr.close()


async def test_lines_are_written_in_a_batch_after_the_interval_not_one_write_each(pipe, monkeypatch):
    monkeypatch.setattr(logs, "FLUSH_INTERVAL", 0.05)
    writer = AccessWriter("text", pipe[1])
    for n in range(100):
        writer.write(f"GET /{n} 200", None)
    assert read_lines(pipe[0]) == []                   # nothing yet: waiting for the timer
    await asyncio.sleep(0.3)
    lines = read_lines(pipe[0])
    assert [line.rsplit(": ", 1)[1] for line in lines] == [f"GET /{n} 200" for n in range(100)]
    writer.close()


async def test_a_stalled_stderr_blocks_neither_the_loop_nor_memory_lines_are_dropped_and_counted(pipe, monkeypatch,
                                                                                                caplog):
    """Nobody reads the pipe: the writing thread blocks, the loop does not, and what is beyond the limit is
    dropped, counted, and reported once the lines can be written again."""
    monkeypatch.setattr(logs, "BUFFER_LIMIT", 256 << 10)
    writer = AccessWriter("text", pipe[1])
    line = "GET /" + "x" * 1000 + " 200"
    started = asyncio.get_running_loop().time()
    for _ in range(2000):                              # 2 MB against a 64 KiB pipe and a 256 KiB limit
        writer.write(line, None)
        if writer._lines and len(writer._lines) % 50 == 0:
            writer.flush()
    writer.flush()
    assert asyncio.get_running_loop().time() - started < 1.0
    assert writer.dropped > 1000
    dropped = writer.dropped
    got = 0
    os.set_blocking(pipe[0], False)
    for _ in range(200):                               # drain the pipe until the thread has written all
        try:
            got += len(os.read(pipe[0], 1 << 20))
        except BlockingIOError:
            if writer._handed == writer._written:
                break
            await asyncio.sleep(0.01)
    assert got == writer._handed and got < 400 << 10
    writer.flush()
    assert f"{dropped} access-log lines dropped" in caplog.text and writer.dropped == 0
    writer.close()


async def test_without_a_writer_lines_go_through_the_stdlib_logger(caplog):
    access = AccessLog()
    caplog.set_level(logging.INFO, logger="authproxy.access")
    assert access.isEnabledFor(logging.INFO)
    access.info("%s %d", "GET /x", 200, extra={"fields": {"status": 200}})
    [rec] = [r for r in caplog.records if r.name == "authproxy.access"]
    assert rec.getMessage() == "GET /x 200" and rec.fields == {"status": 200}


async def test_the_writer_is_used_only_when_the_level_logs_access_lines(monkeypatch):
    access = AccessLog()
    monkeypatch.setattr(access.logger, "isEnabledFor", lambda level: False)
    access.start_writer(LoggingConfig(level="warning"))
    assert access.writer is None and not access.isEnabledFor(logging.INFO)
    monkeypatch.setattr(access.logger, "isEnabledFor", lambda level: True)
    access.start_writer(LoggingConfig(level="info"))
    assert access.writer is not None
    access.stop_writer()
    assert access.writer is None
