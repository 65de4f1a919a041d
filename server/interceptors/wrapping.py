"""Rebuilds a gRPC method handler around a wrapped behaviour, for every interceptor here: a
unary-response wrapper and a streaming-response wrapper cover the four RPC kinds."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

# The generic form exists only in the type stubs; at run time the alias must stay a string.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def wrap_handler(handler: Handler, unary: Wrap, streaming: Wrap,
                 deserializer: Callable[[Any], Any] | None = None) -> Handler:
    """The same handler with its behaviour wrapped by `unary` (unary responses) or
    `streaming` (streamed responses), and its request deserializer replaced when given."""
    codecs = {
        "request_deserializer": deserializer or handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **codecs)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **codecs)
    return handler


async def responses(behavior: Callable[..., Any], request: Any, context: Any
                    ) -> AsyncIterator[Any]:
    """The responses of a streaming behaviour, which is either an async generator or a coroutine
    that writes with context.write (as grpc's own Health.Watch does) and yields nothing here."""
    produced = behavior(request, context)
    if inspect.isawaitable(produced):
        await produced
        return
    async for response in produced:
        yield response
