"""Logging set-up and the access log: one record per RPC on the `vision.access` logger, whose
fields (request id, tenant, service, method, code, duration, bytes) are also attributes of the
record, so the JSON formatter writes them as keys and the text formatter as `key=value`."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from server import request_ids

ACCESS_LOGGER = "vision.access"
FIELDS_ATTR = "fields"  # the LogRecord attribute holding an access record's fields

access_log = logging.getLogger(ACCESS_LOGGER)


def log_call(fields: Mapping[str, Any]) -> None:
    access_log.info("rpc %s/%s %s", fields["service"], fields["method"], fields["code"],
                    extra={FIELDS_ATTR: dict(fields)})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the record's
    fields (access records) or its exception (errors); with `process` (one of several server
    processes) also that name and the pid."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self._process: dict[str, Any] = (
            {} if process is None else {"process": process, "pid": os.getpid()})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            **self._process,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", request_ids.current()),
        }
        line.update(getattr(record, FIELDS_ATTR, {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class TextFormatter(logging.Formatter):
    """The human format; access records get their fields appended as key=value. With
    `process` (one of several server processes) each line names it and its pid."""

    def __init__(self, process: str | None = None) -> None:
        who = "" if process is None else f"{process}/%(process)d "
        super().__init__(f"%(asctime)s %(levelname)s {who}%(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, FIELDS_ATTR, None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items()
                                   if k not in ("service", "method", "code", "request_id"))
        return text


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
