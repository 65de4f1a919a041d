"""How the interceptors here run: each wraps a method's handler ONCE, when the services register
with the server, instead of once per call as grpc.aio's ServerInterceptor does.

A grpc.aio interceptor is awaited on every call and rebuilds the method handler and its closures
each time; five of them cost ~0.2 ms of CPU per call, as much as the whole health check
(bench/REPORT.md, the trivial-model section). What the interceptors here decide from the method
alone (its service, whether it is exempt, whether it streams) is decided at registration; what
depends on the call (metadata, peer, deadline) is read from the context inside the wrapped
behaviour. `InterceptedServer` stands in for the grpc.aio.Server while services register."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeAlias

import grpc

# The generic form exists only in the type stubs; at run time the alias must stay a string.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


class HandlerRegistry(Protocol):
    """Where services register their method handlers: a grpc.aio.Server or InterceptedServer."""

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, Handler]) -> None: ...


class Interceptor(Protocol):
    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler of `method` ("/package.Service/Method") with this layer around it."""
        ...


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


def read_after(handler: Handler, unary: Wrap, streaming: Wrap) -> Handler:
    """A unary-request handler served as a streaming-request one: gRPC hands the behaviour the
    call at once, before its message is read, and `unary` / `streaming` (by the response's
    arity) wrap a behaviour that gets the request iterator and reads the message when it
    chooses. Caller and wire cannot tell the difference."""
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.unary_unary), **codecs)
    if handler.unary_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streaming(handler.unary_stream), **codecs)
    return handler


class ContextMessages:
    """The request messages of a streaming-request call, read with `context.read()`: a plain
    async iterator rather than gRPC's request iterator, an async generator. A reader that stops
    after one message (every unary-request call served as a stream, see read_after) leaves an
    async generator unfinished, and the event loop finalises each such generator with a task of
    its own scheduled through its self-pipe: a wake-up and a task per layer per call."""

    __slots__ = ("_context",)

    def __init__(self, context: Any) -> None:
        self._context = context

    def __aiter__(self) -> ContextMessages:
        return self

    async def __anext__(self) -> Any:
        message = await self._context.read()
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message


def _read_by_context(handler: Handler) -> Handler:
    """A streaming-request handler whose behaviour gets ContextMessages in place of gRPC's
    request iterator (which it then never starts)."""
    if not handler.request_streaming:
        return handler

    def unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def served(requests: Any, context: Any) -> Any:
            return await behavior(ContextMessages(context), context)

        return served

    def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def served(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for response in responses(behavior, ContextMessages(context), context):
                yield response

        return served

    return wrap_handler(handler, unary, streaming)


def intercepted(method: str, handler: Handler, interceptors: Sequence[Interceptor]) -> Handler:
    """handler inside every interceptor, the first of the sequence outermost; its request
    messages, when it streams them, read as ContextMessages."""
    for interceptor in reversed(interceptors):
        handler = interceptor.wrap(method, handler)
    return _read_by_context(handler)


class _InterceptedHandlers(grpc.GenericRpcHandler):
    """A generic handler's methods, each wrapped the first time it is looked up. The generic
    handlers registered here (generated services, health, reflection) choose by method name
    alone, so the wrapped handler is kept per name."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptors: Sequence[Interceptor]) -> None:
        self._inner = inner
        self._interceptors = interceptors
        self._wrapped: dict[str, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        method: str = handler_call_details.method
        handler = self._wrapped.get(method)
        if handler is None:
            found = self._inner.service(handler_call_details)
            if found is None:
                return None
            handler = self._wrapped[method] = intercepted(method, found, self._interceptors)
        return handler


class InterceptedServer:
    """What services register with (in place of the grpc.aio.Server): their method handlers
    reach the real server already wrapped by the interceptors."""

    def __init__(self, server: grpc.aio.Server, interceptors: Sequence[Interceptor]) -> None:
        self._server = server
        self._interceptors = tuple(interceptors)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_InterceptedHandlers(handler, self._interceptors) for handler in handlers))

    def add_registered_method_handlers(self, service: str,
                                       handlers: Mapping[str, Handler]) -> None:
        self._server.add_registered_method_handlers(service, {
            name: intercepted(f"/{service}/{name}", handler, self._interceptors)
            for name, handler in handlers.items()})


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
