"""Counts the RPCs being handled right now: the in-flight figure for operations, and something
shutdown and tests can wait on instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from server.interceptors.wrapping import Handler, responses, wrap_handler


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        self.entered = 0  # calls that have entered since start: waiters can tell "all arrived"
        # Counting is plain arithmetic on the event loop; only waiters (shutdown, tests) pay for
        # being told, so a call costs no lock or notification when nobody waits.
        self._waiters: list[tuple[Callable[[int], bool], asyncio.Future[None]]] = []

    async def wait_for(self, predicate: Callable[[int], bool]) -> None:
        """Returns once predicate(count) holds; it is re-checked only when the count changes."""
        if predicate(self.count):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (predicate, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _enter(self) -> None:
        self.entered += 1
        self._add(1)

    def _add(self, delta: int) -> None:
        self.count += delta
        if self._waiters:
            for predicate, waiter in list(self._waiters):
                if not waiter.done() and predicate(self.count):
                    waiter.set_result(None)

    def wrap(self, method: str, handler: Handler) -> Handler:
        return wrap_handler(handler, self._unary, self._streaming)

    def _unary(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(request: Any, context: Any) -> Any:
            self._enter()
            try:
                return await behavior(request, context)
            finally:
                self._add(-1)

        return counted

    def _streaming(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(request: Any, context: Any) -> AsyncIterator[Any]:
            self._enter()
            try:
                async for response in responses(behavior, request, context):
                    yield response
            finally:
                self._add(-1)

        return counted
