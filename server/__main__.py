"""`python -m server`: run the service until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from server import request_ids
from server.app import create_server
from server.settings import Settings, load_settings


async def serve(settings: Settings) -> None:
    running = await create_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger(__name__).info("draining for %.1fs, then shutting down (grace %.1fs)",
                                     settings.drain_delay_s, settings.grace_period_s)
    await running.stop(settings.grace_period_s, settings.drain_delay_s)


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(request_ids.LogFilter())
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
