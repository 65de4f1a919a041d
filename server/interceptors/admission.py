"""Admission control: at most `max_in_flight` calls are served at once per process, a few more
wait briefly for a slot, and the rest are refused at once with RESOURCE_EXHAUSTED + RetryInfo
(reason OVERLOADED), before any work. A call whose deadline leaves less than `min_deadline_s` is
refused with DEADLINE_EXCEEDED (reason DEADLINE_TOO_SHORT): it could not finish anyway.

A call waits only if a slot is likely to come its way within its wait: while calls queue or are
refused, the time between freed slots is tracked (smoothed), and a call with more calls ahead of
it than slots free up in `max_wait_s` is refused at once rather than after waiting in vain. Under
a sustained overload that is most of the excess (it used to cost every refusal the whole
`max_wait_s`); until the rate is known, a call waits as long as `max_wait_s` allows.

Callers that ignore RetryInfo and call again at once would otherwise be refused as fast as the
CPU allows (each refusal is a gRPC call's set-up): beyond `pace_after` refusals of one peer
within retry_after_s, the peer's further refusals are held until that window ends.

Fairness: one peer may hold at most `peer_share` of the slots, and a freed slot goes to the
waiter whose peer holds fewest, so callers with hundreds of calls in flight cannot starve a
caller with one. A call whose peer holds and waits for fewer slots than its fair share (the
slots split evenly between the peers that hold or want one) waits up to `max_fair_wait_s` for
such a slot rather than being refused: a light caller beside a storm is served, not refused.
The peer is the connection (grpc's peer string) until tenants come with authentication. Health
and reflection are never shed: they are how operators see overload.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from server import metrics
from server.domain import (
    DeadlineExceededError,
    Input,
    InvalidArgumentError,
    ResourceExhaustedError,
    VisionError,
)
from server.errors import RequestPaths, abort, to_status
from server.interceptors.wrapping import Handler, read_after, responses, wrap_handler

_PATHS = RequestPaths(image="", options="")
_NO_MESSAGE = InvalidArgumentError.one(
    "MALFORMED_REQUEST", Input.REQUEST, "", "the call carried no request message")
# Weight of the newest gap between freed slots in their smoothed mean: about the last ten count.
GAP_SMOOTHING = 0.2
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Peers whose refusal windows are remembered before the expired ones are dropped.
MAX_PACED_PEERS = 1024


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_in_flight: int
    max_waiting: int
    max_wait_s: float
    peer_share: float
    min_deadline_s: float
    retry_after_s: float
    max_fair_wait_s: float = 1.0
    pace_after: int = 16  # refusals of one peer per retry_after_s before the rest are held; 0: off

    @property
    def per_peer(self) -> int:
        return max(1, math.ceil(self.max_in_flight * self.peer_share))


@dataclass(slots=True)
class _Waiter:
    peer: str
    granted: asyncio.Future[None]


class Admission:
    """The slots and the wait queue; transport-free so tests drive it directly."""

    def __init__(self, limits: AdmissionLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.in_flight = 0
        self.refused = 0  # for metrics: calls shed since start
        self._by_peer: Counter[str] = Counter()
        self._waiting: deque[_Waiter] = deque()
        self._clock = clock
        # Smoothed seconds between freed slots while calls wanted more than there were; None
        # until two releases in a row happened under such pressure.
        self.release_gap_s: float | None = None
        self._pressed = False  # a call found no slot since the last release
        self._pressed_release: float | None = None  # when the last release under pressure was
        # Per peer: when its current window of refusals began, and how many it has had in it.
        self._refusal_windows: dict[str, list[float]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _free_for(self, peer: str) -> bool:
        return (self.in_flight < self.limits.max_in_flight
                and self._by_peer[peer] < self.limits.per_peer)

    def _take(self, peer: str) -> None:
        self.in_flight += 1
        self._by_peer[peer] += 1

    async def acquire(self, peer: str, time_left_s: float | None) -> None:
        """Takes a slot for peer or raises the domain error the caller gets instead."""
        limits = self.limits
        if time_left_s is not None and time_left_s < limits.min_deadline_s:
            self.refused += 1
            raise DeadlineExceededError(
                "the deadline leaves too little time to serve the call", "DEADLINE_TOO_SHORT")
        # A waiting call is granted a slot as soon as its peer may take one, so the queue holds
        # only calls that cannot run now: a call that can need not wait behind them.
        if self._free_for(peer):
            self._take(peer)
            return
        self._pressed = True
        if self._wanted(peer) < self._fair_share(peer):
            # Under its fair share: it gets the next slot its peer may take, ahead of callers
            # over theirs, so it may wait longer than they may.
            wait_s = limits.max_fair_wait_s
            if time_left_s is not None:
                wait_s = min(wait_s, time_left_s - limits.min_deadline_s)
            if wait_s <= 0:
                raise self._overloaded()
        else:
            wait_s = limits.max_wait_s
            if time_left_s is not None:
                wait_s = min(wait_s, time_left_s - limits.min_deadline_s)
            if (len(self._waiting) >= limits.max_waiting or wait_s <= 0
                    or self._expected_wait_s(peer) > wait_s):
                await self._pace(peer, time_left_s)
                raise self._overloaded()
        waiter = _Waiter(peer, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), wait_s)
        except TimeoutError:
            if waiter.granted.done():  # granted just as the wait ran out: keep the slot
                return
            self._waiting.remove(waiter)
            raise self._overloaded() from None
        except asyncio.CancelledError:
            if waiter.granted.done():
                self.release(peer)
            else:
                self._waiting.remove(waiter)
            raise

    async def _pace(self, peer: str, time_left_s: float | None) -> None:
        """Holds a refusal of a peer that comes back before the RetryInfo delay it was sent:
        beyond pace_after refusals of one peer within retry_after_s, its further refusals
        of that window go out when the window ends (never past the call's deadline). Callers
        that ignore RetryInfo are paced at about one refusal per caller per retry_after_s
        instead of as fast as the CPU allows; callers that honour it wait here only when many
        of them share one connection."""
        now = self._clock()
        window = self._refusal_windows.get(peer)
        if window is None or now - window[0] >= self.limits.retry_after_s:
            if len(self._refusal_windows) >= MAX_PACED_PEERS:
                self._refusal_windows = {
                    other: seen for other, seen in self._refusal_windows.items()
                    if now - seen[0] < self.limits.retry_after_s}
            self._refusal_windows[peer] = [now, 1]
            return
        window[1] += 1
        if not self.limits.pace_after or window[1] <= self.limits.pace_after:
            return
        hold_s = window[0] + self.limits.retry_after_s - now
        if time_left_s is not None:
            hold_s = min(hold_s, time_left_s - self.limits.min_deadline_s)
        if hold_s > 0:
            await asyncio.sleep(hold_s)

    def _wanted(self, peer: str) -> int:
        """Slots peer holds and waits for."""
        return self._by_peer[peer] + sum(1 for waiter in self._waiting if waiter.peer == peer)

    def _fair_share(self, peer: str) -> int:
        """Slots each peer may count on while every peer that holds or wants one gets its
        part: max_in_flight split evenly between them (peer included), at most its share."""
        peers = set(self._by_peer)
        peers.update(waiter.peer for waiter in self._waiting)
        peers.add(peer)
        return max(1, min(self.limits.per_peer, self.limits.max_in_flight // len(peers)))

    def _expected_wait_s(self, peer: str) -> float:
        """How long a call of peer that queues now would likely wait for its slot: one gap
        between freed slots per call ahead of it and its own. A peer at its share is served only
        by its own calls' slots, which free up at its part of the rate. 0 while the rate is
        unknown."""
        gap = self.release_gap_s
        if gap is None:
            return 0.0
        held = self._by_peer[peer]
        if held >= self.limits.per_peer:
            ahead = sum(1 for waiter in self._waiting if waiter.peer == peer)
            return (ahead + 1) * gap * self.in_flight / held
        return (len(self._waiting) + 1) * gap

    def _overloaded(self) -> ResourceExhaustedError:
        self.refused += 1
        return ResourceExhaustedError("OVERLOADED", self.limits.retry_after_s)

    def release(self, peer: str) -> None:
        if self._pressed:
            now = self._clock()
            if self._pressed_release is not None:
                gap = now - self._pressed_release
                previous = self.release_gap_s
                self.release_gap_s = gap if previous is None else (
                    previous + GAP_SMOOTHING * (gap - previous))
            self._pressed_release = now
        else:
            self._pressed_release = None
        self.in_flight -= 1
        self._by_peer[peer] -= 1
        if not self._by_peer[peer]:
            del self._by_peer[peer]
        while self._waiting and self.in_flight < self.limits.max_in_flight:
            # The freed slot goes to the waiter whose peer holds fewest (the first among equals).
            candidates = [waiter for waiter in self._waiting if self._free_for(waiter.peer)]
            if not candidates:
                break
            chosen = min(candidates, key=lambda waiter: self._by_peer[waiter.peer])
            self._waiting.remove(chosen)
            self._take(chosen.peer)
            chosen.granted.set_result(None)
        self._pressed = bool(self._waiting)


class AdmissionInterceptor:
    """`calls` admits unary-request calls; `streams`, when given, admits streaming-request calls
    (uploads), which live long and are bounded by the upload budget rather than by CPU.

    A unary-request call is decided on its metadata alone, before its message is read: its
    handler is served as a streaming-request one (the wire is the same), whose one message is
    read and parsed only once a slot is taken. A refused call's image is never read into the
    process nor parsed, and HTTP/2 flow control leaves all but its first 64 KiB with the caller.
    """

    def __init__(self, calls: Admission, streams: Admission | None = None) -> None:
        self.calls = calls
        self.streams = streams or calls

    def wrap(self, method: str, handler: Handler) -> Handler:
        if method.startswith(EXEMPT_PREFIXES):
            return handler
        if handler.request_streaming:
            return wrap_handler(handler, functools.partial(_unary, self.streams),
                                functools.partial(_streaming, self.streams))
        return read_after(handler, functools.partial(_unary_read, self.calls),
                          functools.partial(_streaming_read, self.calls))


async def _admit(admission: Admission, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    peer = context.peer() or ""
    try:
        await admission.acquire(peer, context.time_remaining())
    except VisionError as exc:
        metrics.record_rejection(f"admission_{exc.reason.lower()}")
        await abort(context, to_status(exc, _PATHS))
    return peer


async def _one(requests: AsyncIterator[Any], context: Any) -> Any:
    """The one message of a unary-request call read as a stream."""
    async for message in requests:
        return message
    await abort(context, to_status(_NO_MESSAGE, _PATHS))


def _unary(admission: Admission, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def admitted(request: Any, context: Any) -> Any:
        peer = await _admit(admission, context)
        try:
            return await behavior(request, context)
        finally:
            admission.release(peer)

    return admitted


def _unary_read(admission: Admission, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def admitted(requests: AsyncIterator[Any], context: Any) -> Any:
        peer = await _admit(admission, context)
        try:
            return await behavior(await _one(requests, context), context)
        finally:
            admission.release(peer)

    return admitted


def _streaming(admission: Admission, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def admitted(request: Any, context: Any) -> AsyncIterator[Any]:
        peer = await _admit(admission, context)
        try:
            async for response in responses(behavior, request, context):
                yield response
        finally:
            admission.release(peer)

    return admitted


def _streaming_read(admission: Admission, behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def admitted(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        peer = await _admit(admission, context)
        try:
            request = await _one(requests, context)
            async for response in responses(behavior, request, context):
                yield response
        finally:
            admission.release(peer)

    return admitted
