"""Reads, checks and binds each call's request id (server.request_ids) and sends it back in the
initial metadata; a malformed id fails the call with INVALID_ARGUMENT before any work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from server import request_ids
from server.domain import FieldViolation, Input, InvalidArgumentError
from server.errors import RequestPaths, to_status
from server.interceptors.wrapping import Handler, responses, wrap_handler

_PATHS = RequestPaths(image="", options="")
_BAD_ID = InvalidArgumentError("INVALID_REQUEST_ID", (FieldViolation(
    Input.REQUEST, f"metadata.{request_ids.METADATA_KEY}",
    f"must be 1 to {request_ids.MAX_LENGTH} printable ASCII characters without spaces"),))


def _given(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == request_ids.METADATA_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


async def _begin(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    given = _given(context)
    if given is not None and not request_ids.is_valid(given):
        await context.abort_with_status(rpc_status.to_status(to_status(_BAD_ID, _PATHS)))
    request_id = given or request_ids.new()
    await context.send_initial_metadata(((request_ids.METADATA_KEY, request_id),))
    return request_id


class RequestIdInterceptor:
    def wrap(self, method: str, handler: Handler) -> Handler:
        return wrap_handler(handler, _unary, _streaming)


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def bound(request: Any, context: Any) -> Any:
        token = request_ids.bind(await _begin(context))
        try:
            return await behavior(request, context)
        finally:
            request_ids.unbind(token)

    return bound


def _streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def bound(request: Any, context: Any) -> AsyncIterator[Any]:
        token = request_ids.bind(await _begin(context))
        try:
            async for response in responses(behavior, request, context):
                yield response
        finally:
            request_ids.unbind(token)

    return bound
