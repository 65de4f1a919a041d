"""Counts the RPCs being handled right now: the in-flight figure for operations, and something
shutdown and tests can wait on instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

# The generic form exists only in the type stubs; at run time the alias must stay a string.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class InFlight(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def wait_for(self, predicate: Callable[[int], bool]) -> None:
        """Returns once predicate(count) holds."""
        async with self._changed:
            await self._changed.wait_for(lambda: predicate(self.count))

    async def _add(self, delta: int) -> None:
        async with self._changed:
            self.count += delta
            self._changed.notify_all()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(request: Any, context: Any) -> Any:
            await self._add(1)
            try:
                return await behavior(request, context)
            finally:
                await self._add(-1)

        return counted

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(request: Any, context: Any) -> AsyncIterator[Any]:
            await self._add(1)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                await self._add(-1)

        return counted
