"""The access writer: its lines are exactly what the logging formatters make of an access record,
and it writes them in batches without losing any."""

from __future__ import annotations

import asyncio
import io
import logging
import os

import pytest

from server.access_log import (
    ACCESS_LOGGER,
    FIELDS_ATTR,
    FLUSH_AFTER_S,
    FLUSH_LINES,
    AccessWriter,
    JsonFormatter,
    TextFormatter,
)

FIELDS = {"request_id": "rid-1", "tenant": "acme", "service": "vision.v1.DetectionService",
          "method": "DetectObjects", "code": "OK", "duration_ms": 1.5, "request_bytes": 45012,
          "inference_ms": 0.75}
NOW = 1_764_412_213.0421


def formatted(formatter: logging.Formatter) -> str:
    """What the logging path writes for FIELDS at NOW."""
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1,
                               "rpc vision.v1.DetectionService/DetectObjects OK", None, None)
    record.created, record.msecs = NOW, (NOW - int(NOW)) * 1000
    record.request_id = FIELDS["request_id"]
    setattr(record, FIELDS_ATTR, dict(FIELDS))
    return formatter.format(record)


@pytest.mark.parametrize("process", [None, "worker-1"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_lines_match_the_formatters(log_format: str, process: str | None) -> None:
    formatter = JsonFormatter(process) if log_format == "json" else TextFormatter(process)
    writer = AccessWriter(io.StringIO(), log_format, process)
    line = writer.line(FIELDS, NOW)
    assert line == formatted(formatter)
    assert ("DetectObjects" in line and "rid-1" in line
            and (process is None or f"{process}" in line and str(os.getpid()) in line))


def test_outside_an_event_loop_lines_are_written_at_once() -> None:
    stream = io.StringIO()
    writer = AccessWriter(stream, "text")
    writer.write(FIELDS)  # no running loop: nothing could flush later, so it is written now
    assert stream.getvalue().count("\n") == 1


async def test_lines_are_written_in_batches_and_after_a_short_delay() -> None:
    stream = io.StringIO()
    writer = AccessWriter(stream, "json")
    for _ in range(FLUSH_LINES - 1):
        writer.write(FIELDS)
    assert stream.getvalue() == ""
    writer.write(FIELDS)  # the batch is full
    assert stream.getvalue().count("\n") == FLUSH_LINES
    writer.write(FIELDS)
    assert stream.getvalue().count("\n") == FLUSH_LINES
    await asyncio.sleep(FLUSH_AFTER_S * 1.5)
    assert stream.getvalue().count("\n") == FLUSH_LINES + 1
    writer.write(FIELDS)
    writer.flush()  # as the server does when it stops
    assert stream.getvalue().count("\n") == FLUSH_LINES + 2
