"""Logging set-up and the access log: one line per RPC from the `vision.access` logger with its
fields (request id, tenant, service, method, code, duration, bytes): keys of the JSON object, or
`key=value` after the text line.

In the server's own process (`configure`), access lines skip the logging module: `AccessWriter`
formats them exactly as the formatters below would and writes them in batches, at most
FLUSH_AFTER_S after the call or every FLUSH_LINES lines, and at exit. A LogRecord, its filter,
formatter and a write syscall per call cost ~20-45 µs, a tenth of the gateway's CPU per call on a
cheap model (bench/REPORT.md, the trivial-model section); the price is that a process killed
with SIGKILL loses its last FLUSH_AFTER_S of access lines. Elsewhere (tests, embedding) access
lines are ordinary records of the `vision.access` logger, the fields in their `fields` attribute."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from server import request_ids

ACCESS_LOGGER = "vision.access"
FIELDS_ATTR = "fields"  # the LogRecord attribute holding an access record's fields

FLUSH_AFTER_S = 0.2
FLUSH_LINES = 256
_TEXT_OMITTED = ("service", "method", "code", "request_id")  # already in the line's message

access_log = logging.getLogger(ACCESS_LOGGER)


def _message(fields: Mapping[str, Any]) -> str:
    return f"rpc {fields['service']}/{fields['method']} {fields['code']}"


# What the JSON and the text format each write of a line, shared by the formatters below and
# AccessWriter, so that their lines cannot drift apart.
def _process_keys(process: str | None) -> dict[str, Any]:
    return {} if process is None else {"process": process, "pid": os.getpid()}


def _utc_timestamp(seconds: float, millis: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _json_text(line: Mapping[str, Any]) -> str:
    return json.dumps(line, separators=(",", ":"), default=str)


def _fields_text(fields: Mapping[str, Any]) -> str:
    """An access line's fields after its text message: " key=value ..." ("" without any)."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if k not in _TEXT_OMITTED)
    return " " + extra if extra else ""


def log_call(fields: Mapping[str, Any]) -> None:
    if _writer is not None:
        _writer.write(fields)
    else:
        access_log.info(_message(fields), extra={FIELDS_ATTR: dict(fields)})


def flush() -> None:
    """Writes the access lines not yet written (the server calls it when it stops)."""
    if _writer is not None:
        _writer.flush()


class AccessWriter:
    """Access lines formatted as JsonFormatter / TextFormatter format an access record, written
    to `stream` in batches. Used on the event loop's thread only."""

    def __init__(self, stream: TextIO, log_format: str, process: str | None = None) -> None:
        self._stream = stream
        self._json = log_format == "json"
        self._process = _process_keys(process)
        self._who = "" if process is None else f"{process}/{os.getpid()} "
        self._pending: list[str] = []
        self._flush_scheduled = False
        self._second = -1
        self._second_text = ""

    def line(self, fields: Mapping[str, Any], now: float) -> str:
        """One access line (without its newline) for a call that ended at `now`."""
        millis = int((now - int(now)) * 1000)
        if self._json:
            return _json_text({
                "ts": _utc_timestamp(now, millis), "level": "INFO", "logger": ACCESS_LOGGER,
                **self._process, "message": _message(fields), **fields,
            })
        if int(now) != self._second:  # logging's asctime: local time, milliseconds after ","
            self._second = int(now)
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        return (f"{self._second_text},{millis:03d} INFO {self._who}{ACCESS_LOGGER} "
                f"[{fields['request_id']}] {_message(fields)}{_fields_text(fields)}")

    def write(self, fields: Mapping[str, Any]) -> None:
        self._pending.append(self.line(fields, time.time()))
        if len(self._pending) >= FLUSH_LINES:
            self.flush()
        elif not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._flush_scheduled = True
            loop.call_later(FLUSH_AFTER_S, self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            lines, self._pending = self._pending, []
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()


_writer: AccessWriter | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the record's
    fields (access records) or its exception (errors); with `process` (one of several server
    processes) also that name and the pid."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self._process = _process_keys(process)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _utc_timestamp(record.created, int(record.msecs)),
            "level": record.levelname,
            "logger": record.name,
            **self._process,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_ids.current()),
        }
        line.update(getattr(record, FIELDS_ATTR, {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _json_text(line)


class TextFormatter(logging.Formatter):
    """The human format; access records get their fields appended as key=value. With
    `process` (one of several server processes) each line names it and its pid."""

    def __init__(self, process: str | None = None) -> None:
        who = "" if process is None else f"{process}/%(process)d "
        super().__init__(f"%(asctime)s %(levelname)s {who}%(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record) + _fields_text(getattr(record, FIELDS_ATTR, {}))


def configure(level: str, log_format: str, process: str | None = None) -> None:
    """Root logging for `python -m server`: one stderr handler with the chosen format; `process`
    names this process when it is one of several (the supervisor, worker-0, ...)."""
    # Every call writes an access line; what no format here prints is not gathered per record
    # (the caller's file and line walk the stack, the thread's name), which halves the cost of
    # a line (logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.addFilter(request_ids.LogFilter())
    handler.setFormatter(JsonFormatter(process) if log_format == "json"
                         else TextFormatter(process))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    global _writer
    flush()
    _writer = (AccessWriter(sys.stderr, log_format, process)
               if access_log.isEnabledFor(logging.INFO) else None)
    atexit.register(flush)
