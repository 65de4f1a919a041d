"""Observes every call: the Prometheus series (requests by code, latency, in flight, bytes), the
access-log line, and the `x-server-timing` trailer (total and Triton inference time, ms) the
caller receives on success. Runs inside the request-id interceptor (its log line carries the id)
and outside auth (refusals are counted and logged too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from server import access_log, call_records, metrics, request_ids
from server.call_records import CallRecord
from server.interceptors.wrapping import Handler, responses, wrap_handler

TIMING_KEY = "x-server-timing"


class MetricsInterceptor:
    def wrap(self, method: str, handler: Handler) -> Handler:
        series = _Series(*method.lstrip("/").partition("/")[::2])
        return wrap_handler(handler, lambda b: _unary(b, series), lambda b: _streaming(b, series))


class _Series:
    """One method's metric series, looked up once rather than by labels on every call."""

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.in_flight = metrics.IN_FLIGHT.labels(service, method)
        self.latency = metrics.LATENCY.labels(service, method)
        self.received = metrics.RECEIVED_BYTES.labels(service, method)
        self._requests: dict[str, Any] = {}

    def requests(self, code: str) -> Any:
        counter = self._requests.get(code)
        if counter is None:
            counter = self._requests[code] = metrics.REQUESTS.labels(
                self.service, self.method, code)
        return counter


class _Call:
    """One observed call, from its start to its log line."""

    def __init__(self, series: _Series) -> None:
        self.series = series
        self.record, self._token = call_records.open_record()
        self._start = time.perf_counter()
        series.in_flight.inc()

    def count(self, request: Any) -> Any:
        """The request as the behaviour should get it, its bytes counted (a stream of requests
        is counted message by message as the handler reads it)."""
        if isinstance(request, Message):
            self.record.request_bytes += request.ByteSize()
            return request
        return _Counted(request, self.record)

    def timing(self) -> tuple[tuple[str, str]]:
        total_ms = (time.perf_counter() - self._start) * 1000
        value = f"total;dur={total_ms:.1f}"
        if self.record.inference_calls:
            value += f", inference;dur={self.record.inference_s * 1000:.1f}"
        return ((TIMING_KEY, value),)

    def finish(self, context: Any, error: BaseException | None) -> None:
        duration_s = time.perf_counter() - self._start
        code = _code(context, error)
        series = self.series
        series.in_flight.dec()
        series.requests(code).inc()
        series.latency.observe(duration_s)
        series.received.inc(self.record.request_bytes)
        access_log.log_call({
            "request_id": request_ids.current(), "tenant": self.record.tenant,
            "service": series.service, "method": series.method, "code": code,
            "duration_ms": round(duration_s * 1000, 2),
            "request_bytes": self.record.request_bytes,
            "inference_ms": round(self.record.inference_s * 1000, 2),
        })
        call_records.close_record(self._token)


class _Counted:
    """A streaming request's messages, each one's bytes counted as it is read (a plain async
    iterator, which a reader may leave unfinished at no cost: wrapping.ContextMessages)."""

    __slots__ = ("_requests", "_record")

    def __init__(self, requests: AsyncIterator[Any], record: CallRecord) -> None:
        self._requests = requests
        self._record = record

    def __aiter__(self) -> _Counted:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        self._record.request_bytes += request.ByteSize()
        return request


def _code(context: Any, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode.OK.name


def _unary(behavior: Callable[..., Any], series: _Series) -> Callable[..., Any]:
    async def observed(request: Any, context: Any) -> Any:
        call = _Call(series)
        error: BaseException | None = None
        try:
            response = await behavior(call.count(request), context)
            context.set_trailing_metadata(call.timing())
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.finish(context, error)

    return observed


def _streaming(behavior: Callable[..., Any], series: _Series) -> Callable[..., Any]:
    async def observed(request: Any, context: Any) -> AsyncIterator[Any]:
        call = _Call(series)
        error: BaseException | None = None
        try:
            async for response in responses(behavior, call.count(request), context):
                yield response
            context.set_trailing_metadata(call.timing())
        except BaseException as exc:
            error = exc
            raise
        finally:
            call.finish(context, error)

    return observed
