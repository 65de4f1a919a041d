"""Background work owned by an exit stack: started now, cancelled and awaited when the stack
closes, so no task outlives the server (or supervisor) that started it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


def run_in_background(stack: contextlib.AsyncExitStack,
                      work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(work)
    stack.push_async_callback(_cancel, task)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
