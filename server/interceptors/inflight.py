"""Counts the RPCs being handled right now: the in-flight figure for operations, and something
shutdown and tests can wait on instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server.interceptors.wrapping import Handler, responses, wrap_handler


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
        return None if handler is None else wrap_handler(handler, self._unary, self._streaming)

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
                async for response in responses(behavior, request, context):
                    yield response
            finally:
                await self._add(-1)

        return counted
