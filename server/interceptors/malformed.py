"""Requests whose bytes do not parse (invalid UTF-8 in a string field, a broken varint) end with
INVALID_ARGUMENT (reason MALFORMED_REQUEST) and a generic message, instead of gRPC's UNKNOWN
carrying a Python class name and a logged traceback.

The deserializer is wrapped so that a parse failure yields a marker instead of raising inside
gRPC; the behaviour, or the request iterator of a streaming call, aborts when it meets one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from server.domain import Input, InvalidArgumentError
from server.errors import RequestPaths, abort, to_status
from server.interceptors.wrapping import Handler, responses, wrap_handler

_PATHS = RequestPaths(image="", options="")
_MALFORMED_ERROR = InvalidArgumentError.one(
    "MALFORMED_REQUEST", Input.REQUEST, "", "the request message could not be parsed")


class _Malformed:
    """Stands in for a request that did not parse."""


_MALFORMED = _Malformed()


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 (any parse failure is the caller's malformed bytes)
            return _MALFORMED

    return parse


async def _abort(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await abort(context, to_status(_MALFORMED_ERROR, _PATHS))


class _CheckedMessages:
    """A streaming request's messages, aborting the call at a malformed one (a plain async
    iterator, which a reader may leave unfinished at no cost: wrapping.ContextMessages)."""

    __slots__ = ("_messages", "_context")

    def __init__(self, messages: AsyncIterator[Any], context: Any) -> None:
        self._messages = messages
        self._context = context

    def __aiter__(self) -> _CheckedMessages:
        return self

    async def __anext__(self) -> Any:
        message = await self._messages.__anext__()
        if message is _MALFORMED:
            await _abort(self._context)
        return message


def _checked(request: Any, context: Any) -> Any:
    """The request, or for a streaming request an iterator that aborts at a malformed message."""
    if hasattr(request, "__aiter__"):
        return _CheckedMessages(request, context)
    return request


class MalformedRequestInterceptor:
    def wrap(self, method: str, handler: Handler) -> Handler:
        return wrap_handler(handler, _unary, _streaming,
                            _tolerant(handler.request_deserializer))


def _unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def parsed(request: Any, context: Any) -> Any:
        if request is _MALFORMED:
            await _abort(context)
        return await behavior(_checked(request, context), context)

    return parsed


def _streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def parsed(request: Any, context: Any) -> AsyncIterator[Any]:
        if request is _MALFORMED:
            await _abort(context)
        async for response in responses(behavior, _checked(request, context), context):
            yield response

    return parsed
