"""Several server processes on one port (`python -m server --workers N`): the supervisor that
owns them, and the worker's side of the link to it.

The supervisor is the process the user started. It reserves the gRPC port (port 0 becomes one
free port, handed to every worker), serves /metrics for all workers (prometheus_client's
multiprocess mode, server/metrics.py) with Triton's statistics, which it polls itself, and
starts N workers. Each worker is `python -m server` as a subprocess rather than a
multiprocessing child: a fresh interpreter whose environment (PROMETHEUS_MULTIPROC_DIR has to be
set before prometheus_client is imported) and inputs the supervisor sets explicitly, which
asyncio waits on natively. Every worker binds the same port (SO_REUSEPORT, server_options) and
is a whole server: its own event loop, Triton client, admission limits and health; the kernel
gives each new connection to one of them, and the connection stays there.

The link is the worker's stdin and stdout: the supervisor writes the resolved settings (one
JSON line) to stdin and keeps it open; the worker writes `ready` to stdout once it serves.
End of file on stdin means the supervisor is gone, and the worker shuts down as on SIGTERM.

SIGTERM or SIGINT to the supervisor is passed on to every worker, which drains as a single
server does (health NOT_SERVING for drain_delay_s, then grace_period_s for calls in flight) and
exits; then the supervisor exits 0. A worker that dies is restarted after a back-off that
doubles while it keeps dying early. Workers that keep exiting before they are ready (the port
is taken, a model breaks its contract) are a fault no restart cures: after MAX_START_FAILURES
of them in a row the supervisor stops the others and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from server import metrics
from server.background import run_in_background
from server.settings import Settings
from server.triton.breaker import CircuitBreaker
from server.triton.calls import TritonCalls, create_client

log = logging.getLogger(__name__)

WORKER_ENV = "VISION_WORKER_INDEX"  # set by the supervisor on each worker it starts
READY_LINE = b"ready\n"
MAX_START_FAILURES = 3  # workers in a row that exit before they are ready
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 30.0  # a worker up this long is restarted with the first back-off again
STOP_MARGIN_S = 10.0  # beyond drain and grace, before a worker that has not exited is killed
STATS_TIMEOUT_S = 5.0


# The worker's side.

def worker_index() -> int | None:
    """This process's index when a supervisor started it, else None."""
    value = os.environ.get(WORKER_ENV)
    return None if value is None else int(value)


def read_worker_settings() -> Settings:
    """The settings the supervisor resolved (port, metrics port), exactly as it sent them: a
    worker reads neither its flags nor the VISION_ environment (VISION_WORKERS among them)."""
    return Settings.model_validate_json(sys.stdin.buffer.readline())


def report_ready(stop: asyncio.Event) -> None:
    """Tells the supervisor this worker serves, and sets `stop` when the supervisor is gone."""
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.buffer.flush()
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()

    def readable() -> None:
        if not os.read(stdin, 4096):
            loop.remove_reader(stdin)
            log.warning("supervisor gone (stdin closed); shutting down")
            stop.set()

    loop.add_reader(stdin, readable)


# The supervisor's side.

@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Binds host:port with SO_REUSEPORT, without listening, for as long as the supervisor runs:
    port 0 becomes one free port for every worker, a port another program holds fails here at
    once, and the port stays ours while workers restart. A socket that does not listen takes
    no connections; the workers' listening sockets (SO_REUSEPORT too) bind beside it. No
    SO_REUSEADDR here: with it Linux refuses the workers' binds next to a non-listening socket."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address[0], port, *address[2:]))
            port = sock.getsockname()[1]
        yield port
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    early_deaths: int = 0  # in a row, of workers that were up less than STABLE_AFTER_S


@dataclass
class Supervisor:
    """Keeps `count` workers running with `settings` until `stop` is set."""

    settings: Settings  # what each worker gets: port and metrics port already bound
    count: int
    metrics_dir: str
    stop: asyncio.Event
    failed: bool = field(default=False, init=False)  # workers kept failing at start
    _start_failures: int = field(default=0, init=False)  # in a row, over all slots
    _slots: list[_Slot] = field(default_factory=list, init=False)

    async def run(self) -> int:
        """Returns the exit status: 0 after a requested stop, 1 when workers kept failing."""
        self._slots = [_Slot(i) for i in range(self.count)]
        keepers = [asyncio.create_task(self._keep_or_stop(slot)) for slot in self._slots]
        await self.stop.wait()
        for slot in self._slots:
            _terminate(slot.process)
        limit = self.settings.drain_delay_s + self.settings.grace_period_s + STOP_MARGIN_S
        _, late = await asyncio.wait(keepers, timeout=limit)
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                log.error("worker %d (pid %d) still running %.0fs after SIGTERM; killing it",
                          slot.index, slot.process.pid, limit)
                slot.process.kill()
        await asyncio.gather(*late)
        log.info("all workers stopped")
        return 1 if self.failed else 0

    async def _keep_or_stop(self, slot: _Slot) -> None:
        try:
            await self._keep(slot)
        except Exception:
            log.exception("supervising worker %d failed; stopping", slot.index)
            self.failed = True
            self.stop.set()

    async def _keep(self, slot: _Slot) -> None:
        """Starts the slot's worker and restarts it whenever it dies, until the stop."""
        while not self.stop.is_set():
            began = time.monotonic()
            process = await self._spawn(slot)
            ready = await self._watch(slot, process)
            metrics.forget_worker(process.pid, self.metrics_dir)
            if self.stop.is_set():
                return
            uptime = time.monotonic() - began
            if not ready:
                self._start_failures += 1
                log.error("worker %d (pid %d) %s before it was ready (%d in a row)", slot.index,
                          process.pid, _exit_text(process.returncode), self._start_failures)
                if self._start_failures >= MAX_START_FAILURES:
                    log.error("workers keep failing at start; stopping the others and exiting")
                    self.failed = True
                    self.stop.set()
                    return
            else:
                log.error("worker %d (pid %d) %s unexpectedly after %.1fs", slot.index,
                          process.pid, _exit_text(process.returncode), uptime)
            slot.early_deaths = 0 if uptime >= STABLE_AFTER_S else slot.early_deaths + 1
            delay = min(BACKOFF_FIRST_S * 2 ** max(slot.early_deaths - 1, 0), BACKOFF_MAX_S)
            log.warning("restarting worker %d in %.1fs", slot.index, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)

    async def _spawn(self, slot: _Slot) -> asyncio.subprocess.Process:
        env = {**os.environ, WORKER_ENV: str(slot.index),
               metrics.MULTIPROCESS_DIR_ENV: self.metrics_dir}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=env)
        slot.process = process
        assert process.stdin is not None
        process.stdin.write(self.settings.model_dump_json().encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await process.stdin.drain()
        if self.stop.is_set():  # the stop came while it was being started
            _terminate(process)
        log.info("worker %d started (pid %d)", slot.index, process.pid)
        return process

    async def _watch(self, slot: _Slot, process: asyncio.subprocess.Process) -> bool:
        """Until the worker exits; whether it had said it was ready. Anything else it prints
        goes on to the supervisor's stdout."""
        assert process.stdout is not None
        ready = False
        async for line in process.stdout:
            if line == READY_LINE and not ready:
                ready = True
                self._start_failures = 0
                log.info("worker %d ready (pid %d)", slot.index, process.pid)
            else:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
        await process.wait()
        return ready


def _terminate(process: asyncio.subprocess.Process | None) -> None:
    if process is not None and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


async def supervise(settings: Settings) -> int:
    """Runs `settings.workers` workers until SIGTERM or SIGINT; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics_dir = tempfile.mkdtemp(prefix="vision-metrics-")
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                port = stack.enter_context(reserve_port(settings.host, settings.port))
                metrics_port, httpd = metrics.serve_workers(
                    settings.metrics_host or settings.host, settings.metrics_port, metrics_dir)
            except OSError as exc:
                log.error("cannot bind %s:%d or metrics port %d: %s", settings.host,
                          settings.port, settings.metrics_port, exc)
                return 1
            stack.callback(metrics.stop_serving, httpd)
            triton = TritonCalls(
                create_client(settings.triton.url), settings.triton.timeout_s,
                CircuitBreaker(settings.breaker.failure_threshold,
                               settings.breaker.reset_after_s))
            stack.push_async_callback(triton.close)
            poller = metrics.TritonStatsPoller(
                lambda: triton.inference_statistics(STATS_TIMEOUT_S),
                settings.triton_stats_interval_s)
            run_in_background(stack, poller.run())
            log.info("supervisor: %d workers on %s:%d, metrics :%d", settings.workers,
                     settings.host, port, metrics_port)
            workers = settings.model_copy(
                update={"port": port, "metrics_port": metrics_port, "workers": 1})
            return await Supervisor(workers, settings.workers, metrics_dir, stop).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
