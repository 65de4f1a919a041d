"""Reads, checks and binds each call's request id (server.request_ids) and returns it in the
trailing metadata (errors too: server.errors.abort adds it), where it travels with the response
instead of costing a send of its own; a streamed response also gets it in the initial metadata,
before its first result. A malformed id fails the call with INVALID_ARGUMENT before any work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from server import request_ids
from server.domain import FieldViolation, Input, InvalidArgumentError
from server.errors import RequestPaths, abort, to_status
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
        await abort(context, to_status(_BAD_ID, _PATHS))
    return given or request_ids.new()


def _trail(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Adds the call's id to the trailing metadata set so far (the timing trailer, say)."""
    context.set_trailing_metadata((*(context.trailing_metadata() or ()),
                                   *request_ids.trailer()))


class RequestIdInterceptor:
    def wrap(self, method: str, handler: Handler) -> Handler:
        return wrap_handler(handler, _unary, _streaming)


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def bound(request: Any, context: Any) -> Any:
        token = request_ids.bind(await _begin(context))
        try:
            response = await behavior(request, context)
            _trail(context)
            return response
        finally:
            request_ids.unbind(token)

    return bound


def _streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def bound(request: Any, context: Any) -> AsyncIterator[Any]:
        request_id = await _begin(context)
        await context.send_initial_metadata(((request_ids.METADATA_KEY, request_id),))
        token = request_ids.bind(request_id)
        try:
            async for response in responses(behavior, request, context):
                yield response
            _trail(context)
        finally:
            request_ids.unbind(token)

    return bound
