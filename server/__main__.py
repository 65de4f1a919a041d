"""`python -m server`: run the service until SIGTERM or SIGINT, then shut down gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from server import access_log
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
    access_log.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
