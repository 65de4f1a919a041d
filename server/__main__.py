"""`python -m server`: run the service until SIGTERM or SIGINT, then shut down gracefully. With
`--workers N` (N > 1) this process becomes the supervisor of N server processes on one port
(server/supervisor.py); each of them is `python -m server` again, told so by its environment."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from server import access_log, supervisor
from server.app import create_server
from server.operations import PortTakenError
from server.settings import Settings, load_settings


async def serve(settings: Settings, supervised: bool = False) -> None:
    running = await create_server(settings, shared_port=supervised)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if supervised:
        supervisor.report_ready(stop)
    await stop.wait()
    logging.getLogger(__name__).info("draining for %.1fs, then shutting down (grace %.1fs)",
                                     settings.drain_delay_s, settings.grace_period_s)
    await running.stop(settings.grace_period_s, settings.drain_delay_s)
    access_log.flush()


def main() -> None:
    try:
        run()
    except PortTakenError as exc:
        sys.exit(f"vision-grpc: {exc}")


def run() -> None:
    index = supervisor.worker_index()
    if index is not None:
        settings = supervisor.read_worker_settings()
        access_log.configure(settings.log_level, settings.log_format, f"worker-{index}")
        asyncio.run(serve(settings, supervised=True))
        return
    settings = load_settings()
    if settings.workers > 1:
        access_log.configure(settings.log_level, settings.log_format, "supervisor")
        sys.exit(asyncio.run(supervisor.supervise(settings)))
    access_log.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
